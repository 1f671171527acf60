"""Benchmark: the vectorised many-start survey against a plain loop of ``critical``-style descents, and the paper's full table.

1. Same starts, same run (``--loop`` starts of the ReLU committee ``k = n = --k``): (a) a Python
   loop of :func:`nearopt.critical.find_critical_point` (gradient descent with step 0.1 to
   ``||grad L|| <= handover`` on the library's exact loss, then Newton, then the classification:
   what ``nearopt critical`` runs per call) against (b) :func:`nearopt.landscape_survey.survey`
   (batched descent to the per-unit gradient ``handover``, batched Newton, classification per
   invariant group). Prints both times, the ratio, and how many starts end in the same class and loss.
2. Step costs: one descent step (gradient of every student, in the descent's chunks, one thread)
   at 10 and at 1000 students, for every measured size (the difference of two descent lengths, so
   set-up and the end points' loss drop out); the linear model ``a + b R``.
3. Measured surveys (``--starts`` starts, handover ``--handover``, seed ``k``) at ``k`` in
   ``--ks`` for ``n = k`` and ``n = k + 1``: descent and polish seconds, steps, the routes of the
   polish, spurious fraction, diverged and unconverged runs.
4. The full table (``n = k`` and ``n = k + 1``, ``k = 6 ... 20``, 1000 starts each), **estimated**:
   the descent of 1000 starts is charged ``sum_t (a + b (1000 / starts) active_t)`` (``active_t``,
   the measured survey's runs still going at step ``t``); the polish: the batched Newton timed on
   1000 end points (the measured ones, tiled) plus ``1000 / starts`` times the measured
   classification, one-point fallbacks and family grouping; sizes between measured ``k``
   interpolated linearly (per ``n - k``). The
   experiment runs each size as one cell, one cell per core: the 30 cell times are packed on 2
   workers (longest first, each to the less loaded), and the estimate is that makespan. The model
   is evaluated twice: from wall seconds, and from the CPU seconds the process got (on a machine
   shared with other jobs, what an idle core would take; cache contention is not removed). It
   ignores the longer tail of 1000 starts (the slowest of 1000 runs takes more steps than the
   slowest of ``starts``; those steps cost ``a`` each) and the cache effects of 2 busy cores.
5. ``--cells K,N ...``: sizes of the table run directly (1000 starts each, seed ``k``, ``1000 + k``
   for ``n = k + 1``), against their estimate (with ``--combine``'s files).
6. ``--full-table``: the full table itself, on 2 worker processes (one torch thread each, cells
   longest first); prints the total wall time, each size's spurious fraction, time, and the
   number of diverged and unconverged runs.

The protocol is the experiment's full configuration: step 0.1, handover ``1e-5``, ``gtol``
``1e-9 / (2 pi)``, at most ``10^6`` steps.

    PYTHONPATH=src python benchmarks/bench_landscape.py [--quick] [--out FILE.json]
    PYTHONPATH=src python benchmarks/bench_landscape.py --ks 6,12 --skip-loop --out a.json
    PYTHONPATH=src python benchmarks/bench_landscape.py --combine a.json b.json       # estimate from the pieces
    PYTHONPATH=src python benchmarks/bench_landscape.py --combine a.json b.json --cells 6,7 12,13   # sizes run directly
    PYTHONPATH=src python benchmarks/bench_landscape.py --full-table [--workers 2] [--out FILE.json]

Records (2-core x86_64 CPU VM shared with other jobs; per-size tables in ``docs/landscape.md``, section "Cost"):

| date | what | value | target |
|---|---|---|---|
| 2026-12-01 | same run, k = n = 8, 24 starts: loop of find_critical_point / survey (load average 1.3) | 31.1 s / 1.8 s = 17.4x | |
| 2026-12-01 | estimate of the full table from 40-start surveys at k = 6, 12, 20 (load average 1.3-1.6) | 22.5 min of one core, 11.3 min on 2 cores | 15 min on 2 cores |
| 2026-12-01 | sizes run directly (1000 starts, load average 1.8-2.2): k, n = 6, 6 / 6, 7 / 12, 13 / 20, 20 | 4.6 / 15.3 / 45.5 / 100.1 s = 0.91 / 1.34 / 1.39 / 1.51 x their estimate | |
| 2026-12-01 | full table, estimate scaled by 1.45 (the direct sizes from k = 12) | about 16 min on 2 cores | not met, by about 10 % |
| 2026-12-01 | full table run directly (--full-table, 2 workers, idle machine: load average 0.5 at the start) | 1135 s = 18.9 min wall, 0 diverged, 6 unconverged | 15 min on 2 cores: not met, by 26 % |
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time

import numpy as np
import torch

from nearopt import io
from nearopt.critical import committee_teacher, find_critical_point
from nearopt.landscape_survey import SAFRAN_SHAMIR, Protocol, batched_newton_polish, descend, loss_gradient_function, starts, survey
from nearopt.model import TwoLayerNet
from nearopt.problem import Problem

TABLE_KS = list(range(6, 21))
TABLE_STARTS = 1000


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


def step_time(k: int, n: int, R: int, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per descent step of ``R`` students (the descent loop itself: gradient in chunks, checks,
    update): the difference of descents of ``3 steps`` and ``steps`` steps over ``2 steps`` (so the set-up and the
    end points' loss drop out), best of 3. On a shared machine the CPU seconds are what an idle core would take."""
    fn = loss_gradient_function(committee_teacher(k))
    W0 = np.random.default_rng(0).normal(scale=k**-0.5, size=(R, n, k))

    def run(m: int) -> tuple[float, float]:
        c0 = time.process_time()
        d = descend(fn, W0, np.ones((R, n)), protocol=Protocol(lr=0.1, gtol=1e-30, max_steps=m))
        return d.seconds, time.process_time() - c0

    wall = cpu = np.inf
    for _ in range(3):
        (w1, c1), (w3, c3) = run(steps), run(3 * steps)
        wall, cpu = min(wall, (w3 - w1) / (2 * steps)), min(cpu, (c3 - c1) / (2 * steps))
    return float(wall), float(cpu)


def measure_size(k: int, n: int, R: int, handover: float, protocol: Protocol) -> dict:
    """Measured survey of ``R`` starts (seed ``k``) and the step model of its size."""
    (t_small, c_small), (t_big, c_big) = step_time(k, n, 10, 300), step_time(k, n, TABLE_STARTS, 8)
    b, cb = (t_big - t_small) / (TABLE_STARTS - 10), (c_big - c_small) / (TABLE_STARTS - 10)
    T = committee_teacher(k)
    t0, c0 = time.perf_counter(), time.process_time()
    s = survey(T, width=n, n_starts=R, handover=handover, seed=k, protocol=protocol)
    cpu_share = (time.process_time() - c0) / (time.perf_counter() - t0)  # the share of a core the survey got
    d = s.to_dict()
    reps = -(-TABLE_STARTS // R)  # the batched Newton of 1000 end points: the measured ones, tiled
    t0, c0 = time.perf_counter(), time.process_time()
    batched_newton_polish(T, np.tile(s.descent.W, (reps, 1, 1))[:TABLE_STARTS], np.tile(s.descent.v, (reps, 1))[:TABLE_STARTS])
    newton_1000, newton_1000_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"k": k, "n": n, "measured_starts": R, "descent_s": s.seconds["descent"], "polish_s": s.seconds["polish"], "families_s": s.seconds["families"],
            "newton_1000_s": newton_1000, "newton_1000_cpu_s": newton_1000_cpu, "cpu_share": cpu_share,
            "step_10_cpu_s": c_small, "step_1000_cpu_s": c_big, "step_model_cpu_a_s": c_small - 10 * cb, "step_model_cpu_b_s": cb,
            "steps": int(s.descent.active.size), "active": s.descent.active.tolist(), "step_10_s": t_small, "step_1000_s": t_big,
            "step_model_a_s": t_small - 10 * b, "step_model_b_s": b, "polish_routes": d["polish"], "spurious_fraction": d["spurious_fraction"],
            "diverged": d["diverged"], "unconverged": d["unconverged"], "resumed": d["resumed"]}


def estimate(rows: list[dict], workers: int = 2, clock: str = "wall") -> dict:
    """The full table's estimated cell times and their makespan on ``workers`` cores (module docstring, 4), from
    ``clock`` = ``"wall"`` seconds or ``"cpu"`` seconds (the CPU the process got: on a shared machine, an idle core's)."""
    cells = {}
    for r in rows:
        cpu = clock == "cpu"
        a, b = (r["step_model_cpu_a_s"], r["step_model_cpu_b_s"]) if cpu else (r["step_model_a_s"], r["step_model_b_s"])
        active = np.asarray(r["active"], dtype=np.float64) * (TABLE_STARTS / r["measured_starts"])
        r[f"estimated_descent_{clock}_s"] = float(np.sum(a + b * active))
        per_point = (r["polish_routes"]["classify_s"] + r["polish_routes"]["one_point_s"] + r["families_s"]) * (r["cpu_share"] if cpu else 1.0)
        r[f"estimated_polish_{clock}_s"] = (r["newton_1000_cpu_s"] if cpu else r["newton_1000_s"]) + per_point * TABLE_STARTS / r["measured_starts"]
    for extra in (0, 1):
        meas = sorted((r["k"], r[f"estimated_descent_{clock}_s"] + r[f"estimated_polish_{clock}_s"]) for r in rows if r["n"] == r["k"] + extra)
        if len(meas) < 2:
            continue
        for k in TABLE_KS:
            cells[(k, k + extra)] = float(np.interp(k, [m[0] for m in meas], [m[1] for m in meas]))
    load = [0.0] * workers
    for t in sorted(cells.values(), reverse=True):
        load[int(np.argmin(load))] += t
    return {"cells_s": {f"{k},{n}": t for (k, n), t in cells.items()}, "cpu_s": float(sum(cells.values())), "makespan_s": float(max(load)),
            "complete": len(cells) == 2 * len(TABLE_KS)}


def _cell(args: tuple[int, int, int, float, Protocol]) -> dict:
    k, n, seed, handover, protocol = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = survey(committee_teacher(k), width=n, n_starts=TABLE_STARTS, handover=handover, seed=seed, protocol=protocol)
    d = s.to_dict()
    return {"k": k, "n": n, "seconds": time.perf_counter() - t0, "spurious": d["spurious"], "spurious_fraction": d["spurious_fraction"],
            "diverged": d["diverged"], "unconverged": d["unconverged"], "not_converged_points": d["classes"].get("not converged", 0),
            "families": len(d["families"]), "polish": d["polish"], "max_steps": d["descent_steps"]["max"]}


def full_table(workers: int, handover: float, protocol: Protocol) -> dict:
    """Run the full table (module docstring, 5): 30 cells of 1000 starts on ``workers`` processes, longest first (seed ``k``, ``1000 + k`` for ``n = k + 1``)."""
    jobs = [(k, k + extra, 1000 * extra + k, handover, protocol) for k in reversed(TABLE_KS) for extra in (1, 0)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        done = []
        for r in pool.imap_unordered(_cell, jobs):
            done.append(r)
            print(f"  k = {r['k']:2d}, n = {r['n']:2d}: {r['spurious_fraction'] * 100:5.1f} % spurious, {r['seconds']:6.1f} s, "
                  f"{r['diverged']} diverged, {r['unconverged']} unconverged, {r['families']} families, polish {r['polish']}", flush=True)
    wall = time.perf_counter() - t0
    done.sort(key=lambda r: (r["n"] - r["k"], r["k"]))
    print(f"full table: {len(done)} sizes x {TABLE_STARTS} starts in {wall:.0f} s wall ({wall / 60:.1f} min) on {workers} workers; "
          f"{sum(r['diverged'] for r in done)} diverged, {sum(r['unconverged'] for r in done)} unconverged, "
          f"{sum(r['not_converged_points'] for r in done)} points not converged")
    return {"wall_s": wall, "workers": workers, "cells": done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    ap.add_argument("--loop", type=int, default=24, help="starts of the same-run comparison (default 24)")
    ap.add_argument("--k", type=int, default=8, help="k = n of the same-run comparison (default 8)")
    ap.add_argument("--skip-loop", action="store_true", help="skip the same-run comparison")
    ap.add_argument("--starts", type=int, default=40, help="measured starts per size of the full-table estimate (default 40)")
    ap.add_argument("--ks", default="6,12,20", help="sizes measured for the estimate (comma-separated; others interpolated)")
    ap.add_argument("--handover", type=float, default=1e-5)
    ap.add_argument("--gtol", type=float, default=1e-9 / (2 * math.pi), help="per-unit gradient at which a run stops (default 1e-9/(2 pi), the experiment's)")
    ap.add_argument("--max-steps", type=int, default=1_000_000, help="descent step limit (default 10^6, the experiment's full configuration)")
    ap.add_argument("--combine", nargs="+", metavar="FILE.json", help="estimate the full table from earlier runs' measured sizes")
    ap.add_argument("--full-table", action="store_true", help="run the full table (30 sizes x 1000 starts) and time it")
    ap.add_argument("--cells", nargs="+", metavar="K,N", help="run these sizes of the table directly (1000 starts each, one after the other) "
                    "and compare with the estimate of --combine's files")
    ap.add_argument("--workers", type=int, default=2, help="processes of --full-table and cores of the estimate (default 2)")
    ap.add_argument("--out", metavar="FILE.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per cell, as the experiment's cells run
    load = os.getloadavg()[0]
    protocol = SAFRAN_SHAMIR.replace(gtol=args.gtol, max_steps=args.max_steps)
    out: dict = {"load_average_start": load, "date": time.strftime("%Y-%m-%d")}
    if args.full_table:
        out["full_table"] = full_table(args.workers, args.handover, protocol)
    elif args.combine or args.cells:
        rows = [r for f in args.combine or [] for r in json.loads(open(f).read())["sizes"]]
        out["sizes"], out["estimate"], out["estimate_cpu"] = rows, estimate(rows, args.workers), estimate(rows, args.workers, "cpu")
        for cell in args.cells or []:
            k, n = (int(x) for x in cell.split(","))
            r = _cell((k, n, 1000 * (n - k) + k, args.handover, protocol))
            est = out["estimate"]["cells_s"].get(f"{k},{n}")
            r["estimated_s"], r["ratio_to_estimate"] = est, (r["seconds"] / est if est else None)
            out.setdefault("cells", []).append(r)
            print(f"k = {k}, n = {n}, 1000 starts run directly: {r['seconds']:.1f} s"
                  + (f" (estimated {est:.1f} s: {r['seconds'] / est:.2f}x)" if est else "") + f"; longest run {r['max_steps']} steps, "
                  f"{r['diverged']} diverged, {r['unconverged']} unconverged", flush=True)
    else:
        if args.quick:
            args.loop, args.k, args.starts, args.ks = 6, 6, 12, "6,8"
        if not args.skip_loop:
            t_loop, loop_pts = loop_of_single_starts(args.k, args.k, args.loop, 0, args.handover)
            t0 = time.perf_counter()
            s = survey(committee_teacher(args.k), n_starts=args.loop, handover=args.handover, seed=0)
            t_vec = time.perf_counter() - t0
            same = sum(p is not None and a.classification == p.classification and abs(a.loss - p.loss) < 1e-9 for a, p in zip(loop_pts, s.points))
            print(f"same run, k = n = {args.k}, {args.loop} starts: loop {t_loop:.1f} s, vectorised {t_vec:.1f} s, "
                  f"ratio {t_loop / t_vec:.1f}x; same class and loss at {same}/{args.loop} starts")
            out["same_run"] = {"k": args.k, "starts": args.loop, "loop_s": t_loop, "vectorised_s": t_vec, "ratio": t_loop / t_vec, "same_end_points": same}
        rows = []
        for extra in (0, 1):
            for k in (int(x) for x in args.ks.split(",")):
                r = measure_size(k, k + extra, args.starts, args.handover, protocol)
                rows.append(r)
                print(f"k = {k}, n = {k + extra}: step {r['step_10_s'] * 1e3:.2f} ms at 10 students, {r['step_1000_s'] * 1e3:.1f} ms at 1000 "
                      f"({r['step_1000_s'] / 1000 * 1e6:.2f} us per student); {args.starts} starts: descent {r['descent_s']:.1f} s "
                      f"({r['steps']} steps), polish {r['polish_s']:.1f} s ({r['polish_s'] / args.starts * 1e3:.1f} ms per point, routes {r['polish_routes']}), "
                      f"families {r['families_s']:.2f} s; batched Newton of 1000 end points {r['newton_1000_s']:.1f} s", flush=True)
        out["sizes"], out["estimate"], out["estimate_cpu"] = rows, estimate(rows, args.workers), estimate(rows, args.workers, "cpu")
    if "estimate" in out:
        for r in out["sizes"]:
            print(f"k = {r['k']}, n = {r['n']}: estimated 1000 starts: {r['estimated_descent_wall_s']:.0f} s descent + {r['estimated_polish_wall_s']:.0f} s polish "
                  f"(wall); {r['estimated_descent_cpu_s']:.0f} + {r['estimated_polish_cpu_s']:.0f} s (CPU; the survey got {r['cpu_share']:.2f} of a core)")
        for key, clock in (("estimate", "wall"), ("estimate_cpu", "CPU")):
            e = out[key]
            if e["complete"]:
                print(f"estimated full table (n = k and n = k + 1, k = 6..20, 1000 starts each) from {clock} seconds: {e['cpu_s'] / 60:.1f} min "
                      f"of one core, {e['makespan_s'] / 60:.1f} min on {args.workers} cores (target 15 min on 2 cores)")
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average: {load:.1f} at the start, {out['load_average_end']:.1f} at the end")
    if args.out:
        io.write_json(args.out, out)


if __name__ == "__main__":
    main()
