"""DESIGN.md stays the map: its layout block names every module that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "inferd"


def _layout_block() -> str:
    design = (ROOT / "DESIGN.md").read_text()
    section = design.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_layout_names_every_module() -> None:
    block = _layout_block()
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py\b", block))
    modules = {path for path in PACKAGE.rglob("*.py") if "_proto" not in path.parts}
    missing = sorted(str(path.relative_to(PACKAGE)) for path in modules
                     if path.name not in named and path.name != "__init__.py")
    assert not missing, f"DESIGN.md's layout does not mention: {missing}"
    packages = {path.parent.name for path in modules if path.parent != PACKAGE}
    assert not [p for p in sorted(packages) if f"{p}/" not in block], "a package is missing from the layout"


def test_the_layout_names_no_module_that_is_gone() -> None:
    existing = {path.name for path in PACKAGE.rglob("*.py")}
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py\b", _layout_block()))
    assert not sorted(named - existing - {"model.py"}), f"DESIGN.md names modules that do not exist: {named - existing}"
