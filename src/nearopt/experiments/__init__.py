"""Registered experiments of the study (see :mod:`nearopt.experiments.base`).

Every module of this package except ``base`` is imported by :func:`load_all`
and registers its experiments with :func:`nearopt.experiments.base.register`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Check, Experiment, ExperimentResult, all_experiments, get_experiment, register, run_serial

__all__ = ["Check", "Experiment", "ExperimentResult", "all_experiments", "get_experiment", "register", "run_serial", "load_all"]

_loaded = False


def load_all() -> None:
    """Import every experiment module once (each registers itself)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
