"""Packaging: the built wheel installs and runs outside the source tree; the declared
lower bounds are the tested minimum versions (ci/min-versions.txt).

* :func:`test_wheel_installs_into_a_fresh_venv` builds the wheel (no network: the
  current environment's setuptools) and installs it, not editable, into a new venv
  whose only link to the current environment is a ``.pth`` line appending its
  site-packages (so torch & co. are reused rather than downloaded); nearopt itself
  must then come from the wheel.
* :func:`test_feature_dependencies_are_extras_that_setup_installs` and
  :func:`test_what_the_tests_import_is_declared`: a dependency of one feature is an extra that
  ``scripts/setup_env.sh`` installs, and every third-party import of the tests is declared.
* :func:`test_suite_passes_at_min_versions` (marker ``minversions``, network) installs
  exactly ``ci/min-versions.txt`` plus the local CPU torch wheel into a clean venv and
  runs the test suite there against the installed wheel.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MIN_VERSIONS = ROOT / "ci" / "min-versions.txt"
#: the CPU build this project installs instead of a multi-GB CUDA torch (scripts/setup_env.sh)
TORCH_PIN = "torch==2.13.0"


def _run(cmd, *, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would point Python back at the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``nearopt-*.whl`` built from a copy of the sources (the working tree is not written to)."""
    src = tmp_path_factory.mktemp("sdist-tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheelhouse")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out, src], env=_clean_env())
    wheels = list(out.glob("nearopt-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for group in project["optional-dependencies"].values() for r in group]
    return {canonicalize_name(r.name): r for r in reqs}


def _pins() -> dict[str, Requirement]:
    lines = [ln.split("#")[0].strip() for ln in MIN_VERSIONS.read_text().splitlines()]
    return {canonicalize_name(r.name): r for r in (Requirement(ln) for ln in lines if ln)}


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def test_wheel_contents_and_metadata(wheel):
    """License expression and file, version from ``__version__``, py.typed, console script."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
        entry = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        init = zf.read("nearopt/__init__.py").decode()
    assert "nearopt/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: MIT" in meta.splitlines()
    version = next(ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Version:"))
    assert f'__version__ = "{version}"' in init  # one source for the version
    assert "nearopt = nearopt.cli:main" in entry
    # Dask is optional: not a plain requirement, only under the `dask` extra
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    assert not any(ln.split()[1].startswith(("dask", "distributed")) and "extra ==" not in ln for ln in requires), requires
    assert any("dask" in ln and 'extra == "dask"' in ln for ln in requires), requires


def test_wheel_installs_into_a_fresh_venv(wheel, tmp_path):
    """Not editable, outside the tree: ``nearopt --help`` and one small spectrum work."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # reuse this environment's dependencies (torch is ~1 GB): appended after the venv's own site-packages
    reuse = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_nearopt_test_reuse.pth").write_text("\n".join(sorted(reuse)) + "\n")
    py = _venv_python(venv)
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel], env=_clean_env())
    env = _clean_env()
    where = _run([py, "-c", "import nearopt, importlib.metadata as m; print(nearopt.__file__); print(nearopt.__version__, m.version('nearopt'))"], cwd=tmp_path, env=env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), f"nearopt imported from {where[0]}, not the wheel"
    assert where[1] == where[2]
    help_text = _run([venv / "bin" / "nearopt", "--help"], cwd=tmp_path, env=env).stdout
    for command in ("spectrum", "rank", "dynamics", "reproduce"):
        assert command in help_text
    out = _run([venv / "bin" / "nearopt", "spectrum", "-a", "erf", "--ni", "3", "--nh", "4", "--samples", "300", "--json"], cwd=tmp_path, env=env).stdout
    result = json.loads(out)
    assert result["P"] == 16 and len(result["eigenvalues"]) == 16 and result["rank"] == 16


def test_min_versions_match_declared_bounds():
    """Every pin in ci/min-versions.txt is exactly the declared lower bound, and every
    declared runtime dependency except torch (see the file) is pinned."""
    declared, pins = _declared(), _pins()
    runtime = {canonicalize_name(Requirement(r).name) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert runtime - set(pins) == {"torch"}, f"unpinned runtime dependencies: {runtime - set(pins) - {'torch'}}"
    for name, pin in pins.items():
        assert name in declared, f"{name} is pinned but not declared"
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin}: pins must be exact"
        assert _lower_bound(declared[name]) == Version(spec.version), f"declared {declared[name]} but tested minimum is {spec.version}"


#: optional dependencies that serve one feature each, and the extra that installs them
FEATURE_EXTRAS = {"mpmath": "certify"}


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def test_feature_dependencies_are_extras_that_setup_installs():
    """A dependency serving one feature is no plain requirement but an extra of its own, which
    ``scripts/setup_env.sh`` (behind ``scripts/test`` and ``scripts/nearopt``) installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    installed = set().union(*(m.split(",") for m in re.findall(r"\$root\[([a-z,]+)\]", setup)))
    for name, extra in FEATURE_EXTRAS.items():
        assert name not in _names(project["dependencies"]), f"{name} serves one feature: declare it in the {extra!r} extra"
        assert name in _names(extras[extra]), (name, extras.get(extra))
        assert extra in installed, f"scripts/setup_env.sh does not install the {extra!r} extra (installs {sorted(installed)})"


def test_what_the_tests_import_is_declared():
    """Every third-party module a test file imports comes from a declared dependency or the
    ``dev`` extra (with the extras ``dev`` names, ``nearopt[...]``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = _names(project["dependencies"]) | _names(extras["dev"])
    for r in map(Requirement, extras["dev"]):
        if canonicalize_name(r.name) == "nearopt":
            declared |= set().union(*(_names(extras[x]) for x in r.extras))
    local = {p.stem for p in [*(ROOT / "tests").glob("*.py"), *(ROOT / "docs" / "tools").glob("*.py")]} | {"nearopt"}  # and docs/tools (test_docs)
    modules: dict[str, str] = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    modules.setdefault(top, path.name)
    assert {"numpy", "pytest", "hypothesis", "psutil"} <= set(modules)  # the scan sees the imports
    dists = importlib.metadata.packages_distributions()
    for module, where in modules.items():
        names = {canonicalize_name(d) for d in dists.get(module, [module])}
        assert names & declared, f"{where} imports {module} (distribution {sorted(names)}), declared neither as a dependency nor in the dev extra"


@pytest.mark.minversions
def test_suite_passes_at_min_versions(wheel, tmp_path):
    """The declared lower bounds are true: the suite passes with exactly those versions.

    Needs the package index (skipped when it cannot be reached outside CI; a failure in CI).
    Takes ~1 min to install and a few minutes to run on 2 cores, so it runs only when
    ``NEAROPT_MIN_VERSIONS=1`` (``.ci/run`` runs it as a step of its own).
    """
    if os.environ.get("NEAROPT_MIN_VERSIONS") != "1":
        pytest.skip("set NEAROPT_MIN_VERSIONS=1 to install ci/min-versions.txt and run the suite there")
    venv = tmp_path / "minvenv"
    _run([sys.executable, "-m", "venv", venv])
    py = _venv_python(venv)
    env = _clean_env()
    tools = ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "psutil", "packaging"]  # what the tests import (the `dev` extra)
    install = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--only-binary=:all:", "-r", MIN_VERSIONS, *tools],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    if install.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"installing ci/min-versions.txt failed:\n{install.stderr[-3000:]}")
        pytest.skip(f"cannot install ci/min-versions.txt here: {install.stderr.strip().splitlines()[-1:]}")
    _run([py, "-m", "pip", "install", "-q", TORCH_PIN], env=env, timeout=900)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", wheel], env=env)
    versions = json.loads(_run([py, "-c", "import json, importlib.metadata as m; print(json.dumps({d: m.version(d) for d in ('numpy', 'scipy', 'matplotlib', 'tqdm', 'mpmath', 'dask', 'torch')}))"], env=env).stdout)
    for name, pin in _pins().items():
        if name in versions:
            assert Version(versions[name]) == Version(next(iter(pin.specifier)).version), (name, versions[name])
    # the whole suite but the tests of this environment itself (browser, GPU, packaging, examples' figures)
    ignore = [f"--ignore=tests/{f}" for f in ("test_report_browser.py", "test_gpu.py", "test_packaging.py", "test_examples.py")]
    # a copy of the tests and their pytest settings; src/ comes along as files only (a test hashes
    # the sources) and is on no import path: `import nearopt` is the installed wheel, checked below
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    shutil.copytree(ROOT / "docs", tree / "docs", ignore=shutil.ignore_patterns("_build", "api", "_generated"))  # tests/test_docs.py reads it
    (tree / "benchmarks").mkdir()
    for guide in ("README.md", "benchmarks/README.md"):  # and these guides
        shutil.copy(ROOT / guide, tree / guide)
    where = _run([py, "-c", "import nearopt; print(nearopt.__file__)"], cwd=tree / "tests", env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    proc = subprocess.run(
        [py, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-m", "not minversions", *ignore, "tests"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
