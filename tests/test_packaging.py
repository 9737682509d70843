"""A regular (non-editable) install has what the code reads at run time: the contract's topic
specs and the local broker's pom are package data, found beside their modules, not in the
checkout. The wheel is built the way the image builds it (``pip install .`` in Dockerfile),
from the files the image's build context holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.contract.specs import TOPICS_DIR
from app.dev.local_kafka import POM, kafka_version

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # about 10 s: pip builds the wheel in an isolated environment


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: building in the checkout would leave build/ in it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "app", source / "app",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=120, cwd=work,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and "satisfies the requirement setuptools" in output:
        pytest.skip("pip could not fetch the build backend (setuptools) for an isolated build")
    assert done.returncode == 0, output
    (built,) = (work / "dist").glob("recoloop-*.whl")
    return built


def test_the_wheel_carries_the_contract_and_the_pom_where_the_code_looks(wheel: Path) -> None:
    app = ROOT / "app"
    wanted = [*sorted(TOPICS_DIR.glob("*.json")), TOPICS_DIR / "README.md", POM]
    assert len(wanted) > 3
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in wanted:
            inside = path.relative_to(app.parent).as_posix()
            assert inside.startswith("app/"), path  # package data, not beside the package
            assert archive.read(inside) == path.read_bytes(), inside
    # Only the package and its metadata: no tests, no top-level data directories.
    tops = {name.split("/")[0] for name in names}
    assert "app" in tops and all(top == "app" or top.endswith(".dist-info") for top in tops)


def test_an_installed_copy_loads_the_contract_and_reads_the_pom(wheel: Path,
                                                                 tmp_path: Path) -> None:
    site = tmp_path.resolve() / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing found through the cwd
    elsewhere.mkdir()
    probe = (
        "import json\n"
        "from app.contract import specs\n"
        "from app.dev import local_kafka\n"
        "loaded = specs.load_specs()\n"
        "example = dict(loaded['reco.served'].example)\n"
        "print(json.dumps({'module': specs.__file__, 'topics_dir': str(specs.TOPICS_DIR),\n"
        "                  'topics': sorted(loaded), 'pom': str(local_kafka.POM),\n"
        "                  'kafka': local_kafka.kafka_version(),\n"
        "                  'valid': specs.validation_error('reco.served', example),\n"
        "                  'invalid': specs.validation_error('reco.served', {})}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert Path(seen["module"]).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(seen["topics_dir"]) == site / "app" / "contract" / "topic_specs"
    assert seen["topics"] == sorted(p.stem for p in TOPICS_DIR.glob("*.json"))
    assert seen["valid"] is None and "required" in seen["invalid"]
    assert Path(seen["pom"]) == site / "app" / "dev" / "kafka" / "pom.xml"
    assert seen["kafka"] and seen["kafka"] == kafka_version()
