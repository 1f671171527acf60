"""Documentation references resolve: every ``tests/FILE.py::test_name`` and every module the theory cites exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def _citations(text: str) -> list[tuple[str, str]]:
    """``(file, test)`` for each ``tests/F.py::t`` and each following ``::t`` (same file) in ``text``."""
    out, current = [], None
    for m in re.finditer(r"`(tests/[a-z_/]+\.py)?::(\w+)`", text):
        current = m.group(1) or current
        out.append((current, m.group(2)))
    return out


def test_every_test_cited_by_the_theory_exists():
    cited = _citations(THEORY.read_text())
    assert len(cited) > 50
    missing = [f"{f}::{t}" for f, t in cited if f is None or not (ROOT / f).exists() or t not in _test_names(ROOT / f)]
    assert not missing, f"docs/theory.md cites tests that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(set(re.findall(r"`(nearopt(?:\.\w+)+)`", THEORY.read_text()))))
def test_every_module_cited_by_the_theory_imports(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:  # an attribute such as nearopt.curvature.batch_spectrum
        parent, _, name = module.rpartition(".")
        assert hasattr(importlib.import_module(parent), name), f"docs/theory.md cites {module}, which does not exist"


def test_code_cites_theory_sections_that_exist():
    sections = set(re.findall(r"^#+ §([\d.]+)", THEORY.read_text(), re.M))
    cited = set()
    for path in (ROOT / "src" / "nearopt").rglob("*.py"):
        cited |= set(re.findall(r"theory\.md`?`? §([\d.]*\d)", path.read_text()))
    assert cited, "no citations found"
    assert not cited - sections, f"code cites sections missing from docs/theory.md: {sorted(cited - sections)}"
