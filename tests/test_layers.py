"""The layers' import rules, read from the source: the core stays pure, and imports point one way.

Each rule names the modules a layer may import (the standard library aside); lazy imports
inside functions count too. ``test_a_violation_is_reported`` shows the check can fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
STDLIB = frozenset(sys.stdlib_module_names)

# layer (a module prefix) -> what it may import besides the standard library. A prefix
# allows the module and everything under it.
ALLOWED: dict[str, tuple[str, ...]] = {
    "app.core": ("app.core", "river", "numpy"),
    "app.contract": ("app.core", "app.contract", "orjson", "fastjsonschema", "msgspec"),
    "app.observability": ("app.observability", "app.__init__", "prometheus_client",
                          "opentelemetry"),
    "app.dev": ("app.dev", "confluent_kafka"),
    # Kafka plumbing shared by the worker, the service, the CLI and the simulator.
    "app.kafka": ("app.kafka", "app.contract", "app.settings", "confluent_kafka"),
    "app.settings": ("app.contract.topics", "app.core.arms", "app.core.sites", "app.settings"),
    # What every world is made of, and what it measures.
    "app.sim.shoppers": ("app.core", "app.settings"),
    "app.sim.figures": ("app.sim.shoppers",),
    "app.sim.common": ("app.core", "app.contract", "app.settings", "app.sim.shoppers",
                       "app.sim.figures"),
    "app.sim.arm_table": ("app.core", "app.contract", "app.settings", "app.sim.common",
                          "app.sim.shoppers"),
    "app.sim.items": ("app.core", "app.contract", "app.settings", "app.sim.common",
                      "app.sim.shoppers"),
    # The item world's variants: pure like it, built on it.
    "app.sim.variant": ("app.sim.common", "app.sim.shoppers", "app.sim.items"),
    "app.sim.returns": ("app.sim.common", "app.sim.shoppers", "app.sim.items", "app.sim.variant"),
    "app.sim.longtail": ("app.sim.common", "app.sim.shoppers", "app.sim.items"),
    "app.sim.slots": ("app.sim.common", "app.sim.shoppers", "app.sim.items", "app.sim.variant"),
    "app.sim.shifting": ("app.sim.common", "app.sim.shoppers", "app.sim.items"),
    "app.sim.worlds": ("app.sim.common", "app.sim.items", "app.sim.arm_table", "app.sim.variant",
                       "app.sim.returns", "app.sim.longtail", "app.sim.slots",
                       "app.sim.shifting"),
    "app.serve": ("app.contract", "app.core.events", "app.core.experiment", "app.core.sites",
                  "app.observability", "app.kafka", "app.settings", "app.serve", "app.__init__",
                  "confluent_kafka", "orjson", "fastapi", "pydantic", "prometheus_client",
                  "starlette", "uvicorn", "opentelemetry"),
    "app.evaluation.ope": (),  # pure: the standard library only
    "app.evaluation.kpis": (),
    "app.evaluation": ("app.contract", "app.core", "app.evaluation", "app.kafka", "app.settings",
                       "confluent_kafka", "orjson", "matplotlib"),
    "app.stream": ("app.core", "app.contract", "app.kafka", "app.observability", "app.settings",
                   "app.stream", "confluent_kafka", "rocksdict", "orjson"),
    # The exactly-once runtime: generic, it knows no recommendation (see the test below).
    "app.stream.runtime": ("app.stream.runtime", "app.kafka", "app.observability", "app.settings",
                           "confluent_kafka", "rocksdict"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported_modules(source: str) -> set[str]:
    """Every module ``source`` imports; ``from app import x`` names ``app.x``.

    recoloop uses absolute imports only, so a relative one is reported as ``relative``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "relative" if node.level else node.module or ""
            if base == "app":
                found.update(f"app.{alias.name}" if alias.name != "__version__"
                             else "app.__init__" for alias in node.names)
            else:
                found.add(base)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    rules = [prefix for prefix in ALLOWED if _within(module, prefix)]
    if not rules:
        return []
    allowed = ALLOWED[max(rules, key=len)]
    return sorted(name for name in imports
                  if name.split(".")[0] not in STDLIB and name != "__future__"
                  and not any(_within(name, ok) for ok in allowed))


def app_modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


@pytest.mark.parametrize("path", app_modules(), ids=lambda p: module_name(p))
def test_module_imports_only_what_its_layer_allows(path: Path) -> None:
    module = module_name(path)
    assert violations(module, imported_modules(path.read_text())) == []


@pytest.mark.parametrize("layer", ["app.serve", "app.evaluation", "app.kafka"])
def test_the_service_the_evaluation_and_the_kafka_plumbing_never_import_the_stream(
        layer: str) -> None:
    """They get topic names from app.contract.topics and Kafka plumbing from app.kafka."""
    importers = {module_name(p): sorted(name for name in imported_modules(p.read_text())
                                        if _within(name, "app.stream"))
                 for p in app_modules() if _within(module_name(p), layer)}
    assert importers and {module: names for module, names in importers.items() if names} == {}


def test_the_runtime_imports_nothing_of_the_core_the_contract_or_the_application() -> None:
    """app.stream.runtime runs any processor: the recoloop one imports it, never the reverse."""
    importers = {module_name(p): sorted(name for name in imported_modules(p.read_text())
                                        if any(_within(name, layer) for layer in (
                                            "app.core", "app.contract", "app.stream"))
                                        and not _within(name, "app.stream.runtime"))
                 for p in app_modules() if _within(module_name(p), "app.stream.runtime")}
    assert importers and {module: names for module, names in importers.items() if names} == {}


def test_nothing_imports_the_cli() -> None:
    importers = [module_name(p) for p in app_modules() if module_name(p) != "app.cli"
                 and "app.cli" in imported_modules(p.read_text())]
    assert importers == []


def test_a_violation_is_reported() -> None:
    source = ("import confluent_kafka\nfrom app.stream import loop\n"
              "def lazy():\n    from app import settings\n    from . import join\n")
    assert violations("app.core.join", imported_modules(source)) == [
        "app.settings", "app.stream", "confluent_kafka", "relative"]


def test_every_layer_rule_names_existing_modules() -> None:
    names = {module_name(p) for p in app_modules()}
    for prefix in ALLOWED:
        assert any(_within(name, prefix) for name in names), prefix


# Modules a reader can hold in their head, functions that fit on a screen.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in app_modules():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module_name(path)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno \
                    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                too_long.append(f"{module_name(path)}.{node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
