"""The package layout: one package per pipeline stage, imports only downward, a short public namespace."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import nearopt

SRC = Path(nearopt.__file__).parent

#: the pipeline, top (imported by everything) to bottom; a module may import its own stage and the ones above
STAGES = (
    ("errors", "tolerances", "resources", "threads", "policy"),
    ("model",),
    ("gaussian",),
    ("spectra",),
    ("theory",),
    ("curvature",),
    ("dynamics",),
    ("landscape",),
    ("figures",),
    ("experiments",),
    ("pipeline",),
    ("cli", "__main__"),
)
RANK = {name: i for i, names in enumerate(STAGES) for name in names}
MODULES = sorted(p for p in SRC.rglob("*.py") if (p.name != "__init__.py" or p.parent != SRC) and p.name != "__main__.py")


def _stage(module: str) -> int:
    """The stage of ``nearopt.a.b`` (its first component)."""
    return RANK[module.split(".")[1]]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of the nearopt modules ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nearopt"):
                out.extend(f"{target}.{a.name}" if target == "nearopt" or not node.module else target for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names if a.name.startswith("nearopt"))
    return [m for m in out if m != "nearopt.__version__" and m.count(".") >= 1]


def test_every_module_belongs_to_a_stage():
    top = {_module_name(p).split(".")[1] for p in MODULES}
    assert top <= set(RANK), f"modules outside the stages of the pipeline: {sorted(top - set(RANK))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_run_downward(path):
    here = _stage(_module_name(path))
    upward = [m for m in _imports(path) if _stage(m) > here]
    assert not upward, f"{_module_name(path)} (stage {here}) imports later stages: {upward}"


def test_root_holds_only_the_foundation():
    loose = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert loose == sorted(STAGES[0])


def test_public_namespace_is_short_and_resolves():
    assert len(nearopt.__all__) <= 40
    assert len(set(nearopt.__all__)) == len(nearopt.__all__)
    for name in nearopt.__all__:
        assert getattr(nearopt, name) is not None
    # the stage packages are reachable as attributes, loaded on first use
    assert nearopt.curvature.structured_spectrum.__module__ == "nearopt.curvature.structured"
    with pytest.raises(AttributeError):
        _ = nearopt.no_such_name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_declares_its_public_names(path):
    module = importlib.import_module(_module_name(path))
    assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names what it does not define: {missing}"
