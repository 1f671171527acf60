"""Benchmark: curvature along a gradient-descent trajectory, warm-started against cold-started.

An erf teacher ``N_i = --ni``, ``M = --nh`` and a random student of the same width train by
gradient descent on the exact population loss (``nearopt.landscape.critical.loss_and_gradient``,
step ``--lr``) for ``--steps`` steps; the student is recorded every ``--every`` steps. In one run,
:func:`nearopt.curvature.tracking.track_curvature` tracks the ``--k`` largest and smallest eigenpairs
at the recorded points on the ``lanczos`` route three times:

* **warm**: each point's LOBPCG starts from the previous point's Ritz vectors;
* **cold**: each starts from random vectors (seeded);
* **dense** (when ``P <= --dense-max``): one ``eigh`` per point, the reference values.

Printed: matrix-vector products and seconds per route (the first point, cold in both, excluded
from the ratios), the ratio cold / warm, and the largest eigenvalue difference to the cold and
dense results relative to ``max |lambda|``.

    PYTHONPATH=src python benchmarks/bench_tracking.py [--ni 100] [--nh 6] [--steps 200] [--every 20] [--k 4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from nearopt.curvature.tracking import TrackSpec, track_curvature
from nearopt.landscape.critical import at_parameters, loss_and_gradient, trained_parameters
from nearopt.model.network import TwoLayerNet, sample_teacher
from nearopt.model.problem import Problem


def trajectory(ni: int, nh: int, steps: int, every: int, lr: float, seed: int) -> tuple[Problem, list[TwoLayerNet], list[int]]:
    """Students along GD on the exact population loss, recorded every ``every`` steps (the start included)."""
    teacher = sample_teacher(ni, nh, "erf", seed=seed)
    rng = np.random.default_rng(seed + 1)
    pr = Problem(teacher, student=TwoLayerNet(rng.standard_normal((nh, ni)) / np.sqrt(ni), rng.standard_normal(nh), "erf"))
    theta = trained_parameters(pr)
    points, at = [pr.point], [0]
    for t in range(1, steps + 1):
        _, g = loss_and_gradient(pr)
        theta = theta - lr * g
        pr = at_parameters(pr, theta)
        if t % every == 0:
            points.append(pr.point)
            at.append(t)
    return Problem(teacher), points, at


def timed(problem: Problem, points: list[TwoLayerNet], at: list[int], spec: TrackSpec):
    t0 = time.perf_counter()
    tr = track_curvature(problem, points, steps=at, spec=spec)
    return tr, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ni", type=int, default=100)
    ap.add_argument("--nh", type=int, default=6)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense-max", type=int, default=2000)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    problem, points, at = trajectory(a.ni, a.nh, a.steps, a.every, a.lr, a.seed)
    P = points[0].n_params
    print(f"erf N_i={a.ni} N_h={a.nh} P={P}: {len(points)} points over {a.steps} GD steps ({time.perf_counter() - t0:.1f} s), k={a.k}")
    warm, t_warm = timed(problem, points, at, TrackSpec(k=a.k, method="lanczos", warm=True, seed=a.seed))
    cold, t_cold = timed(problem, points, at, TrackSpec(k=a.k, method="lanczos", warm=False, seed=a.seed))
    scale = float(np.abs(np.concatenate([cold.largest.ravel(), cold.smallest.ravel()])).max())
    rows = {"warm": (warm, t_warm), "cold": (cold, t_cold)}
    if P <= a.dense_max:
        rows["dense"] = timed(problem, points, at, TrackSpec(k=a.k, method="dense"))
    print(f"{'route':>6} {'products (after the first point)':>32} {'seconds':>9} {'max |dlambda| / max|lambda| vs cold':>36}")
    out = {"ni": a.ni, "nh": a.nh, "P": P, "k": a.k, "points": len(points), "machine": platform.machine(), "torch": torch.__version__}
    for name, (tr, sec) in rows.items():
        dev = max(np.nanmax(np.abs(tr.largest - cold.largest)), np.nanmax(np.abs(tr.smallest - cold.smallest))) / scale
        prod = int(tr.products[1:].sum())
        print(f"{name:>6} {prod:>32d} {sec:>9.2f} {dev:>36.2e}")
        out[name] = {"products_after_first": prod, "products": tr.products.tolist(), "seconds": sec, "max_rel_deviation_vs_cold": dev,
                     "inertia_last": tr.inertia[-1].tolist()}
    ratio = cold.products[1:].sum() / max(warm.products[1:].sum(), 1)
    print(f"warm start: {ratio:.2f}x fewer products than cold (seconds {t_cold / t_warm:.2f}x), same eigenvalues and inertia: "
          f"{bool(np.array_equal(warm.inertia, cold.inertia))}")
    out["product_ratio_cold_over_warm"], out["time_ratio_cold_over_warm"] = float(ratio), t_cold / t_warm
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
