"""Where the linearised predictions apply, and when a curve reaches a target loss (docs/dynamics.md, docs/sgd.md).

**Regime.** The GD/flow mode decay and the SGD second-moment recursion take the loss as its
quadratic model ``Q(delta) = 1/2 delta^T H delta`` at ``theta*``. How far that holds at the start is
measured, not assumed: the **start error** is the mean over draws ``delta_0`` of
``|L(theta* + delta_0) - Q(delta_0)| / Q(delta_0)`` (the relative size of the cubic and higher
terms at the start displacement), with ``L`` the loss that is trained (population or batch).
Above :data:`GD_START_LIMIT` (GD and flow, run into the late-time regime, where the softest
modes carry the loss) or :data:`SGD_START_LIMIT` (SGD over its horizon) the measured curves left
the prediction in the calibration runs recorded in docs/dynamics.md and docs/sgd.md. The learning rate is held
against the critical one (GD: ``2 / lambda_max``; SGD: the recursion's, exact where it was built,
else the spectral one, which is exact only for linear networks).

**Time to a target.** :func:`first_step_below` finds the first step (or flow time) where a
predicted curve ``f(t)`` is ``<= eps``: on a coarse grid first, then exactly inside the bracket
that crosses (every integer when affordable, else bisection). :func:`measured_crossing` reads the
first recorded time of a measured curve at or below ``eps`` and states the resolution (the
previous recorded time: the true first crossing lies in ``(previous, first]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize

from ..errors import require_positive_finite

__all__ = [
    "describe_target", "first_step_below", "GD_START_LIMIT", "lr_verdict", "measured_crossing", "SCAN_BUDGET", "SGD_START_LIMIT", "SPECTRAL_RATIO_RANGE", "start_error",
    "START_FLOOR_MARGIN", "start_verdict", "target_block"
]

#: GD/flow into the late-time regime: above this start error the measured mean left the prediction by > 10 % (docs/dynamics.md)
GD_START_LIMIT = 3e-3
#: SGD: above this start error the simulated mean left the exact recursion by more than its sampling error (docs/sgd.md)
SGD_START_LIMIT = 3e-2
#: start draws whose quadratic model is within this factor of the loss's rounding floor are left out
START_FLOOR_MARGIN = 1e4
#: measured ``eta_c(exact) / eta_c(spectral)`` at ``B = 1`` (docs/sgd.md): the spectral rate's error by activation
SPECTRAL_RATIO_RANGE = {"relu": (0.51, 0.79), "quadratic": (0.26, 0.38), "erf": (0.80, 1.45)}
#: most curve evaluations (points x coordinates) an exact integer scan of one bracket may cost
SCAN_BUDGET = 5e7


def start_error(loss, quadratic, floor: float = 0.0) -> float:
    """Mean over draws of ``|L - Q| / Q`` for losses ``loss`` and quadratic models ``quadratic`` ``(K,)`` at the start.

    Draws with ``Q <= START_FLOOR_MARGIN * floor`` (``floor``: the loss's rounding level, where ``L - Q`` is
    rounding, not curvature; or ``Q = 0``) are left out; ``nan`` if none is left.
    """
    L = np.asarray(loss, dtype=np.float64).ravel()
    Q = np.asarray(quadratic, dtype=np.float64).ravel()
    ok = Q > max(START_FLOOR_MARGIN * floor, 0.0)
    if not ok.any():
        return float("nan")
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.abs(L[ok] - Q[ok]) / Q[ok]
    return float(np.mean(r)) if np.all(np.isfinite(r)) else math.inf


def start_verdict(error: float, sigma0: float, limit: float, option: str = "--sigma0") -> list[str]:
    """The warning (a list of at most one line) for a start error above ``limit``."""
    if not (error > limit):
        return []
    return [f"outside the quadratic regime: at sigma0 = {sigma0:g} the loss differs from its quadratic model by {error:.2g} "
            f"(relative, mean over start draws; the predictions were measured to hold below {limit:g}): the linearised "
            f"predictions do not apply; use a smaller {option}"]


def lr_verdict(lr: float, critical: float) -> dict[str, Any]:
    """``{"critical_lr", "lr_over_critical"}``: ``lr`` against ``critical`` (``0`` where there is none: ``inf``)."""
    ratio = lr / critical if critical > 0 and math.isfinite(critical) else 0.0
    return {"critical_lr": critical, "lr_over_critical": ratio}


def measured_crossing(times, curve, eps: float) -> dict[str, Any]:
    """First recorded time of ``curve`` ``(T,)`` at or below ``eps``, with the previous recorded time (the resolution)."""
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    hit = np.flatnonzero(np.isfinite(c) & (c <= eps))
    if hit.size == 0:
        return {"step": None, "previous_record": None, "reached": False}
    k = int(hit[0])
    return {"step": _num(t[k]), "previous_record": None if k == 0 else _num(t[k - 1]), "reached": True}


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def first_step_below(curve: Callable[[np.ndarray], np.ndarray], eps: float, horizon: float, *, integer: bool = True,
                     width: int = 1, limit: float = 1e9) -> dict[str, Any]:
    """First ``t`` with ``curve(t) <= eps`` (``curve`` maps times ``(n,)`` to values ``(n,)``).

    Searches ``[0, horizon]`` on a log grid, then beyond it by doubling up to ``limit``; inside the
    crossing bracket it scans every integer when ``points x width <= SCAN_BUDGET`` (``method
    "scan"``: the first crossing), else bisects (``"bisection"``: a crossing, the first one where the
    curve is monotone in the bracket), or for continuous time solves ``curve(t) = eps`` by Brent's method.
    Returns ``{"step", "method", "reached"}`` (``step`` ``None`` when not reached by ``limit``).
    """
    eps = require_positive_finite(eps, "target loss")
    grid = np.concatenate([[0.0], np.geomspace(1.0, max(horizon, 1.0), 200)])
    t = horizon
    while t < limit:
        t = min(2.0 * t, limit)
        grid = np.append(grid, t)
    if integer:
        grid = np.unique(np.round(grid))
    values = curve(grid)
    hit = np.flatnonzero(np.isfinite(values) & (values <= eps))
    if hit.size == 0:
        return {"step": None, "method": "grid", "reached": False}
    k = int(hit[0])
    if k == 0:
        return {"step": _num(grid[0]), "method": "grid", "reached": True}
    a, b = float(grid[k - 1]), float(grid[k])
    if not integer:
        f = lambda x: float(curve(np.array([x]))[0]) - eps
        return {"step": float(scipy.optimize.brentq(f, a, b, xtol=1e-12 * b, rtol=1e-12)), "method": "brent", "reached": True}
    if (b - a) * width <= SCAN_BUDGET:
        return {"step": _scan(curve, eps, int(a), int(b), width), "method": "scan", "reached": True}
    lo, hi = int(a), int(b)  # curve(lo) > eps >= curve(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if float(curve(np.array([mid], dtype=np.float64))[0]) <= eps:
            hi = mid
        else:
            lo = mid
    return {"step": hi, "method": "bisection", "reached": True}


def _scan(curve, eps: float, a: int, b: int, width: int) -> int:
    """First integer in ``(a, b]`` with ``curve <= eps`` (``curve(b) <= eps``), in chunks of about ``1e6 / width`` points."""
    chunk = max(1, int(1e6 // max(width, 1)))
    for start in range(a + 1, b + 1, chunk):
        ts = np.arange(start, min(b, start + chunk - 1) + 1, dtype=np.float64)
        hit = np.flatnonzero(curve(ts) <= eps)
        if hit.size:
            return int(ts[hit[0]])
    return b


def target_block(eps: float, predicted: dict[str, dict[str, Any]], measured: dict[str, Any], resolution: str) -> dict[str, Any]:
    """The ``target`` entry of a result: ``eps``, the predicted first steps by model, the measured one and its resolution."""
    eps = require_positive_finite(eps, "target loss")
    return {"eps": float(eps), "predicted": predicted, "measured": measured, "resolution": resolution}


def describe_target(block: dict[str, Any], unit: str) -> str:
    """One line for a :func:`target_block`: the predicted first ``unit`` (step or ``t``) by model and the measured one."""

    def at(x) -> str:
        return "not reached" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)

    pred = ", ".join(f"{name} {at(p['step'])}" for name, p in block["predicted"].items())
    m = block["measured"]
    meas = "not reached in the run" if not m["reached"] else f"{at(m['step'])} (recorded; after {at(m['previous_record'])})"
    return f"first {unit} with mean loss <= {block['eps']:.3g}: predicted {pred or '-'}; measured {meas}"
