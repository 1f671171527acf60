"""Registered experiments of the study (see :mod:`nearopt.experiments.base`).

Every module of this package except ``base`` is imported by :func:`load_all`
and registers its experiments with :func:`nearopt.experiments.base.register`.
"""

from __future__ import annotations

from .base import Check, Experiment, ExperimentResult, all_experiments, get_experiment, load_all, register, run_serial

__all__ = ["Check", "Experiment", "ExperimentResult", "all_experiments", "get_experiment", "register", "run_serial", "load_all"]
