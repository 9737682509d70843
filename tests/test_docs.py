"""The README and docs/ stay true to the code: every setting documented, every relative link
resolving, and the README's test command the one CI runs. No broker needed."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import KAFKA_CONFIG_FILE_VAR, Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, title: str) -> str:
    """The text of the Markdown section headed ``title``, up to the next heading of its level
    or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"no section {title!r}"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end():], re.M)
    return text[match.end():match.end() + end.start() if end else len(text)]


def test_the_configuration_table_lists_every_setting():
    table = section(README.read_text(), "Configuration")
    variables = {*Settings.variables(), KAFKA_CONFIG_FILE_VAR}
    missing = sorted(v for v in variables if f"`{v}`" not in table)
    assert not missing, f"not in the README's Configuration table: {missing}"


def test_the_readme_shows_the_command_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    tests = section(README.read_text(), "Tests")
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", tests, re.S))
    commands = [line.split("#")[0].strip() for line in blocks.splitlines()]
    assert ci == [c for c in commands if c in ci] == ["deploy/prometheus/ensure-prometheus.sh",
                                                      "make test"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
