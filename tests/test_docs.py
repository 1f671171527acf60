"""The documentation holds: every ``tests/FILE.py::test_name`` and every module the theory cites
exists, the guides import only what exists and tell no history, and the built site's maths
check (``docs/tools/mathcheck.py``) tells a bundled MathJax from a missing or remote one."""

from __future__ import annotations

import ast
import importlib
import re
import sys
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


# -- guides: code that names the package, history, maths ------------------------

GUIDES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
_IMPORTS = re.compile(r"^\s*(?:from\s+(nearopt(?:\.\w+)*)\s+import\s+([\w, ]+?)(?:\s+as\s+\w+)?\s*$|import\s+(nearopt(?:\.\w+)*))", re.M)


def _code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```(?:python|py)?\n(.*?)```", text, re.S))


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for each ``from nearopt… import name`` / ``import nearopt…`` in the file's code blocks."""
    out: list[tuple[str, str | None]] = []
    for m in _IMPORTS.finditer(_code_blocks(path.read_text())):
        if m.group(3):
            out.append((m.group(3), None))
        else:
            out += [(m.group(1), n.strip()) for n in m.group(2).split(",") if n.strip()]
    return out


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_imports_exist(path):
    """Every module and name a guide's code imports from nearopt exists (no removed modules)."""
    missing = []
    for module, name in _imports(path):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(module)
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports what does not exist: {missing}"


def test_the_import_check_sees_a_removed_module(tmp_path):
    page = tmp_path / "guide.md"
    page.write_text("```python\nfrom nearopt import quadrature as G\nimport nearopt.quadrature.rules\n```\n")
    assert _imports(page) == [("nearopt", "quadrature"), ("nearopt.quadrature.rules", None)]
    assert not hasattr(importlib.import_module("nearopt"), "quadrature")


#: phrases of a lab notebook: the documentation describes the product as it is
HISTORY = re.compile(
    r"\bissue \d+|\bsessions? ago|previous session|this session|earlier (?:run|session|version)s?\b|\(was \d|"
    r"before (?:that|this) change|\b(?:two|three|\d+) \w+ ago\b",
    re.I,
)


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_documentation_tells_no_history(path):
    found = [m.group(0) for m in HISTORY.finditer(path.read_text())]
    assert not found, f"{path.name} describes how things used to be: {found}"


def test_documentation_points_inside_the_repository():
    """A guide that names a file by a path above the repository (``../``) or on one machine sends readers nowhere."""
    outside = re.compile(r"(?<![\w.])\.\./[\w./-]+|/(?:work|home|tmp|root)/[\w./-]+")
    for path in GUIDES:
        found = outside.findall(path.read_text())
        assert not found, f"{path.name} points outside the repository: {found}"


# -- the built site's maths (docs/tools/mathcheck.py, run by docs/conf.py and scripts/docs) --

sys.path.insert(0, str(ROOT / "docs" / "tools"))
import mathcheck  # noqa: E402 - docs/tools is not a package


def _page(folder: Path, name: str, script: str, math: bool = True) -> None:
    body = '<span class="math notranslate nohighlight">\\(x^2\\)</span>' if math else "<p>no maths</p>"
    (folder / name).write_text(f'<html><head><script defer="defer" src="{script}"></script></head><body>{body}</body></html>')


def test_math_check_accepts_a_bundled_mathjax(tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("// MathJax")
    _page(tmp_path, "theory.html", "_static/mathjax/tex-chtml.js")
    _page(tmp_path, "plain.html", "_static/other.js", math=False)
    assert mathcheck.static_problems(tmp_path) == []
    assert mathcheck.pages_with_math(tmp_path) == [tmp_path / "theory.html"]


def test_math_check_flags_network_and_missing_mathjax(tmp_path):
    _page(tmp_path, "cdn.html", "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js")
    _page(tmp_path, "missing.html", "_static/mathjax/tex-chtml.js")
    _page(tmp_path, "none.html", "_static/doctools.js")
    problems = mathcheck.static_problems(tmp_path)
    assert any(p.startswith("cdn.html: loads MathJax from the network") for p in problems)
    assert any(p.startswith("missing.html: MathJax script") for p in problems)
    assert any(p.startswith("none.html: has maths but loads no local MathJax") for p in problems)
