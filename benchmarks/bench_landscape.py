"""Benchmark: the vectorised many-start survey against a plain loop of ``critical``-style descents.

1. Same starts, same run: ``--loop`` starts of the ReLU committee ``k = n`` through
   (a) a Python loop of :func:`nearopt.critical.find_critical_point` (gradient descent with
   step 0.1 to ``||grad L|| <= handover`` on the library's exact loss, then Newton, then the
   classification), and (b) :func:`nearopt.landscape_survey.survey` (batched descent to the
   per-unit gradient ``handover``, then the same Newton and classification). Prints both
   times and the ratio, and checks that both end in the same classes and losses.
2. The paper's full table (``n = k`` and ``n = k + 1``, ``k = 6 ... 20``, 1000 starts each),
   estimated from measured parts: for each size a survey of ``--starts`` starts gives the
   number of runs still descending at each step; one step's time is measured at two batch
   sizes (a linear model ``a + b R``), and the descent of 1000 starts is charged
   ``sum_t (a + b (1000 / starts) active_t)``; polish and classification are charged per point
   as measured. Labelled as an estimate, with the measured parts printed.

    PYTHONPATH=src python benchmarks/bench_landscape.py [--quick] [--out FILE.json]

Records (2-core x86_64 CPU VM shared with other jobs; load average in the table):

| date | case | loop of single starts | vectorised survey | ratio |
|---|---|---|---|---|
| 2026-12-01 | k = n = 8, 24 starts, handover 1e-5 (load average 9.4) | 42.0 s | 4.4 s | 9.5x |

| date | estimate (labelled: from 40 measured starts at k = 6, 12, 20 per n) | value | target |
|---|---|---|---|
| 2026-12-01 | full table, n = k and n = k + 1, k = 6..20, 1000 starts, one core (load average 9.4) | ~208 min | 15 min on 2 cores: not met |

The per-size parts are tabled in ``docs/landscape.md`` (section "Cost").
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from nearopt import io
from nearopt.critical import committee_teacher, find_critical_point
from nearopt.landscape_survey import CPU_CHUNK, SAFRAN_SHAMIR, chunked_call, loss_gradient_function, starts, survey
from nearopt.model import TwoLayerNet
from nearopt.problem import Problem


def loop_of_single_starts(k: int, n: int, R: int, seed: int, handover: float) -> tuple[float, list]:
    """Each start on its own: ``find_critical_point`` with the protocol's step (what ``nearopt critical`` runs per call)."""
    T = committee_teacher(k)
    W0, _ = starts(T, n, R, "first", SAFRAN_SHAMIR, seed)
    t0 = time.perf_counter()
    out = []
    for r in range(R):
        pr = Problem(T, student=TwoLayerNet(W0[r], np.ones((1, n)), T.activation), trained="first")
        out.append(find_critical_point(pr, descent="gd", lr=SAFRAN_SHAMIR.lr, max_steps=SAFRAN_SHAMIR.max_steps, descent_gtol=handover))
    return time.perf_counter() - t0, out


def step_time(k: int, n: int, R: int, repeats: int = 20) -> float:
    """Seconds of one batched loss-and-gradient evaluation of ``R`` students, chunked and single-threaded as the descent runs it."""
    T = committee_teacher(k)
    fn = loss_gradient_function(T)
    W = torch.as_tensor(np.random.default_rng(0).normal(scale=k**-0.5, size=(R, n, k)))
    v = torch.ones(R, n, dtype=torch.float64)
    runs = torch.arange(R)
    with torch.inference_mode():
        chunked_call(fn, W, v, runs, CPU_CHUNK)
        t0 = time.perf_counter()
        for _ in range(repeats):
            chunked_call(fn, W, v, runs, CPU_CHUNK)
    return (time.perf_counter() - t0) / repeats


def estimate_size(k: int, n: int, R: int, target: int, handover: float, seed: int) -> dict:
    """Measured survey of ``R`` starts and the estimated cost of ``target`` starts (module docstring, 2)."""
    s = survey(committee_teacher(k), width=n, n_starts=R, handover=handover, seed=seed)
    small, big = max(1, R // 4), target
    t_small, t_big = step_time(k, n, small), step_time(k, n, big, repeats=5)
    b = (t_big - t_small) / (big - small)
    a = t_small - b * small
    active = s.descent.active * (target / R)
    est_descent = float(np.sum(a + b * active))
    per_point = s.seconds["polish"] / R
    d = s.to_dict()
    return {"k": k, "n": n, "measured_starts": R, "measured_descent_s": s.seconds["descent"], "measured_polish_s": s.seconds["polish"],
            "steps": int(s.descent.active.size), "step_model_a_s": a, "step_model_b_s": b, "estimated_descent_s": est_descent,
            "estimated_polish_s": per_point * target, "estimated_total_s": est_descent + per_point * target,
            "spurious_fraction": d["spurious_fraction"], "diverged": d["diverged"], "unconverged": d["unconverged"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    ap.add_argument("--loop", type=int, default=24, help="starts of the same-run comparison (default 24)")
    ap.add_argument("--k", type=int, default=8, help="k = n of the same-run comparison (default 8)")
    ap.add_argument("--starts", type=int, default=40, help="measured starts per size of the full-table estimate (default 40)")
    ap.add_argument("--ks", default="6,12,20", help="sizes measured for the estimate (comma-separated; others interpolated)")
    ap.add_argument("--handover", type=float, default=1e-5)
    ap.add_argument("--out", metavar="FILE.json")
    args = ap.parse_args()
    if args.quick:
        args.loop, args.k, args.starts, args.ks = 6, 6, 12, "6,8"
    torch.set_num_threads(1)  # the descent runs batches below SERIAL_BELOW entries on one thread too
    load = os.getloadavg()[0]
    t_loop, loop_pts = loop_of_single_starts(args.k, args.k, args.loop, 0, args.handover)
    t0 = time.perf_counter()
    s = survey(committee_teacher(args.k), n_starts=args.loop, handover=args.handover, seed=0)
    t_vec = time.perf_counter() - t0
    same = sum(a.classification == b.classification and abs(a.loss - b.loss) < 1e-9 for a, b in zip(loop_pts, s.points))
    print(f"same run, k = n = {args.k}, {args.loop} starts (load average {load:.1f}): loop {t_loop:.1f} s, vectorised {t_vec:.1f} s, "
          f"ratio {t_loop / t_vec:.1f}x; same class and loss at {same}/{args.loop} starts")
    ks = [int(x) for x in args.ks.split(",")]
    rows = []
    for extra in (0, 1):
        for k in ks:
            r = estimate_size(k, k + extra, args.starts, 1000, args.handover, seed=k)
            rows.append(r)
            print(f"k = {k}, n = {k + extra}: measured {args.starts} starts in {r['measured_descent_s']:.1f} + {r['measured_polish_s']:.1f} s "
                  f"({r['steps']} steps); estimated 1000 starts: {r['estimated_descent_s']:.0f} s descent + {r['estimated_polish_s']:.0f} s polish")
    total = 0.0
    for extra in (0, 1):
        meas = sorted((r["k"], r["estimated_total_s"]) for r in rows if r["n"] == r["k"] + extra)
        total += float(sum(np.interp(k, [m[0] for m in meas], [m[1] for m in meas]) for k in range(6, 21)))
    print(f"estimated full table (n = k and n = k + 1, k = 6..20, 1000 starts each; interpolated between measured k): {total / 60:.0f} min")
    out = {"load_average": load, "same_run": {"k": args.k, "starts": args.loop, "loop_s": t_loop, "vectorised_s": t_vec, "ratio": t_loop / t_vec,
                                             "same_end_points": same}, "sizes": rows, "estimated_full_table_s": total}
    if args.out:
        io.write_json(args.out, out)
    print(json.dumps(out, indent=1, default=float)[:2000])


if __name__ == "__main__":
    main()
