"""Sphinx configuration of the nearopt documentation (built by ``scripts/docs``).

The API reference is generated at build time from the package itself
(autosummary, recursive over ``nearopt``), so moving or renaming modules needs no
edit here; ``api/`` holds only generated pages. The guides and the theory are
Markdown (MyST). The gallery runs ``examples/plot_*.py`` and embeds their figures.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import types
from pathlib import Path

from sphinx.util import logging

import nearopt

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "tools"))
import mathcheck  # noqa: E402 - docs/tools is on the path only from here

# `python -m nearopt` support runs the CLI when nearopt.__main__ is imported; the
# recursive autosummary walk imports every submodule, so give it a placeholder that
# autosummary recognises as a mock (and skips) instead of running the CLI.
_main = types.ModuleType("nearopt.__main__")
_main.__sphinx_mock__ = True  # type: ignore[attr-defined]
sys.modules.setdefault("nearopt.__main__", _main)

project = "nearopt"
author = "nearopt developers"
copyright = "2026, nearopt developers"
release = nearopt.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "_output", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]

# -- API reference --------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False  # each object once, on the page of the module that defines it
# ignore-module-all: a package's __all__ re-exports names defined elsewhere; documenting
# them there too would make every short cross-reference ambiguous
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource", "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autoclass_content = "class"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# Not nitpicky: annotation and napoleon type strings ("np.ndarray", "optional", "shape (N,)")
# cannot all resolve without network access to other projects' inventories and stay plain
# text. References into the package itself are checked instead (_resolve_reference below):
# `nearopt.X` must resolve, so a renamed or moved module breaks the build.
nitpicky = False
# The Python domain splits type strings into words and looks each up by suffix, so a
# dimension in "shape (k,)" meets every attribute named k (SpectrumRequest.k, TrackSpec.k):
# such an ambiguity is a word in a type string, not a reference, and links nowhere useful.
suppress_warnings = ["ref.python"]



def _package_exports() -> dict[str, dict[str, list[str]]]:
    """For each subpackage of nearopt: the documented classes and functions its ``__all__``
    re-exports, by the name of the module that defines them, relative to the package
    (``{"nearopt.curvature": {"classes": ["population.PopulationHessian", ...], "functions": [...]}}``). The package pages list them (``_templates/autosummary/module.rst``),
    so a package page documents what it offers, not only its submodules."""
    out: dict[str, dict[str, list[str]]] = {}
    for info in pkgutil.walk_packages(nearopt.__path__, "nearopt."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        groups: dict[str, list[str]] = {"classes": [], "functions": []}
        for name in getattr(package, "__all__", []):
            obj = getattr(package, name, None)
            module, qualname = getattr(obj, "__module__", ""), getattr(obj, "__qualname__", "")
            if not (module.startswith("nearopt") and qualname == getattr(obj, "__name__", None)):
                continue  # constants and aliases: documented on their module's page
            if not inspect.getdoc(obj):
                continue  # autodoc documents only members with a docstring: no page to link to
            kind = "classes" if inspect.isclass(obj) else "functions" if callable(obj) else None
            if kind:  # relative to the package where it lies inside it (autosummary's rule)
                groups[kind].append(f"{module}.{qualname}".removeprefix(info.name + "."))
        out[info.name] = {k: sorted(v, key=lambda n: n.rsplit(".", 1)[-1].lower()) for k, v in groups.items()}
    return out


autosummary_context = {"package_exports": _package_exports()}


def _write_toplevel_table() -> None:
    """``_generated/toplevel.rst``: every name of ``nearopt.__all__``, linked to where it is defined."""
    lines = [".. autosummary::", ""]
    plain = []
    for name in sorted(nearopt.__all__, key=str.lower):
        obj = getattr(nearopt, name)
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module and qualname and module.startswith("nearopt") and qualname == getattr(obj, "__name__", None):
            lines.append(f"   ~{module}.{qualname}")
        else:  # an instance or alias: named, not linked
            plain.append(f"``nearopt.{name}``")
    text = "\n".join(lines) + "\n"
    if plain:
        text += "\nAlso: " + ", ".join(plain) + ".\n"
    out = DOCS / "_generated" / "toplevel.rst"
    out.parent.mkdir(exist_ok=True)
    if not out.exists() or out.read_text() != text:  # unchanged file: no needless rebuild
        out.write_text(text)


#: the guides' order in the sidebar; any other docs/*.md guide follows alphabetically
GUIDE_ORDER = ["population", "linear", "deep_linear", "architectures", "rank", "dynamics", "sgd", "students", "landscape", "reproduce", "reliability"]


def _write_guides_toctree() -> None:
    """``_generated/guides.md``: a toctree of every Markdown guide in docs/ (index and theory
    have places of their own), so a new guide is in the site without an edit here."""
    found = {p.stem for p in DOCS.glob("*.md")} - {"index", "theory"}
    ordered = [g for g in GUIDE_ORDER if g in found] + sorted(found - set(GUIDE_ORDER))
    text = "```{toctree}\n:maxdepth: 1\n:caption: Guides\n\n" + "\n".join(ordered) + "\n```\n"
    out = DOCS / "_generated" / "guides.md"
    out.parent.mkdir(exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


_write_toplevel_table()
_write_guides_toctree()

# -- Markdown (guides and theory) ------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# -- gallery --------------------------------------------------------------------
# scripts/docs points NEAROPT_EXAMPLES_OUT at the build tree, so building the docs
# writes nothing into examples/
os.environ.setdefault("NEAROPT_EXAMPLES_OUT", str(DOCS / "_build" / "examples-output"))
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "plot_gallery": "True",
    "within_subsection_order": "FileNameSortKey",
}

# -- HTML -----------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"nearopt {release}"
html_theme_options = {
    "description": "Hessian spectra and learning dynamics of teacher-student networks near the optimum",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
    # 88-character code lines (the gallery's limit, tests/test_examples.py) fit the page
    "code_font_size": "0.8em",
}
# MathJax from the site itself, not the network: scripts/docs fetches the npm package into
# NEAROPT_MATHJAX_DIR (a folder named mathjax); Sphinx copies it to _static/mathjax/
MATHJAX_DIR = Path(os.environ.get("NEAROPT_MATHJAX_DIR", DOCS / "_build" / "_vendor" / "static" / "mathjax"))
mathjax_path = mathcheck.MATHJAX_SCRIPT
html_static_path: list[str] = [str(MATHJAX_DIR.parent)] if (MATHJAX_DIR / "tex-chtml.js").is_file() and MATHJAX_DIR.name == "mathjax" else []


# -- references into the package ------------------------------------------------
_log = logging.getLogger("nearopt.docs")


def _canonical_name(target: str) -> str | None:
    """Where ``target`` (``nearopt.a.b.X``, possibly a re-export) is defined, or None if it does not exist."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        if isinstance(obj, types.ModuleType):
            return obj.__name__
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module and qualname and not isinstance(obj, (int, float, str, tuple, dict, list)):
            return f"{module}.{qualname}"
        return target  # a constant: documented (if at all) where it is looked up
    return None


def _resolve_reference(app, env, node, contnode):
    """Resolve what the Python domain could not: ``nearopt.X`` through re-exports, and short
    names used outside their module when exactly one package object has that name; warn
    (an error under -W) when a reference spelled ``nearopt.…`` leads nowhere."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].removesuffix("()")
    domain = env.get_domain("py")
    if target.startswith("nearopt."):
        canonical = _canonical_name(target)
        candidates = [canonical] if canonical and canonical != target else []
    else:
        tail = "." + target
        found = [name for name in domain.objects if name.startswith("nearopt.") and name.endswith(tail)]
        candidates = found if len(found) == 1 else []
    for name in candidates:
        ref = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
        if ref is not None:
            return ref
    if target.startswith("nearopt."):
        _log.warning("reference to %s does not resolve (renamed or moved?)", target, location=node, type="ref", subtype="nearopt")
    return None


def _check_maths(app, exception) -> None:
    """After an HTML build: warn (an error under -W) for each page whose maths cannot render offline."""
    if exception is not None or app.builder.format != "html":
        return
    if not html_static_path:
        _log.warning("MathJax is not bundled (no %s/tex-chtml.js): build with scripts/docs, which fetches it", MATHJAX_DIR, type="nearopt", subtype="mathjax")
    for line in mathcheck.static_problems(Path(app.outdir)):
        _log.warning("maths will not render: %s", line, type="nearopt", subtype="mathjax")


def _class_signature(app, what, name, obj, options, signature, return_annotation):
    """Classes built on SciPy's ``LinearOperator`` inherit its ``__new__(*args, **kwargs)``,
    which autodoc would show as their signature: show their ``__init__``'s parameters instead."""
    if what != "class" or signature != "(*args, **kwargs)" or not inspect.isclass(obj):
        return None
    try:
        sig = inspect.signature(obj.__init__)
    except (TypeError, ValueError):
        return None
    params = [p.replace(annotation=inspect.Parameter.empty) for p in list(sig.parameters.values())[1:]]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty)), return_annotation


def setup(app):
    app.connect("missing-reference", _resolve_reference)
    app.connect("autodoc-process-signature", _class_signature)
    app.connect("build-finished", _check_maths)
