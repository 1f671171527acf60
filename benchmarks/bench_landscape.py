"""Benchmark: the many-start survey against a plain loop of ``critical``-style descents, its two descent engines, and the paper's full table.

1. Same starts, same run (``--loop`` starts of the ReLU committee ``k = n = --k``): (a) a Python
   loop of :func:`nearopt.landscape.critical.find_critical_point` (gradient descent with step 0.1 to
   ``||grad L|| <= handover`` on the library's exact loss, then Newton, then the classification:
   what ``nearopt critical`` runs per call) against (b) :func:`nearopt.landscape.survey.survey`
   (descent to the per-unit gradient ``handover``, batched Newton, classification per invariant
   group). Prints both times, the ratio, and how many starts end in the same class and loss.
2. Step costs at every size of ``--ks`` (``n = k`` and ``n = k + 1``), one thread: the torch
   engine's step of 10 and of 1000 students (the batch of one descent step), and the compiled
   engine's step of one run (its whole descent one compiled call); each the difference of two
   descent lengths, so set-up and the end points' loss drop out, best of 3. Prints the ratios of
   the torch engine's cost per student (at 1000 and at 10 students) to the compiled engine's
   cost per run-step.
3. ``--cells K,N ...``: sizes of the table run directly (1000 starts each, seed ``k``,
   ``1000 + k`` for ``n = k + 1``).
4. ``--full-table``: the paper's full table (``n = k`` and ``n = k + 1``, ``k = 6 ... 20``, 1000
   starts each) on 2 worker processes (one torch thread each, cells longest first); prints the
   total wall time, each size's spurious fraction, time, families, polish routes, and the
   number of diverged and unconverged runs.

The protocol is the experiment's full configuration: step 0.1, handover ``1e-5``, ``gtol``
``1e-9 / (2 pi)``, at most ``10^6`` steps.

    PYTHONPATH=src python benchmarks/bench_landscape.py [--quick] [--out FILE.json]
    PYTHONPATH=src python benchmarks/bench_landscape.py --skip-loop --ks 6,12,20
    PYTHONPATH=src python benchmarks/bench_landscape.py --cells 17,18 20,20
    PYTHONPATH=src python benchmarks/bench_landscape.py --full-table [--workers 2] [--out FILE.json]

Records (2-core x86_64 CPU VM; per-size tables in ``docs/landscape.md``, section "Cost"):

| date | what | value | target |
|---|---|---|---|
| 2026-12-01 | same run, k = n = 8, 24 starts: loop of find_critical_point / survey, batched torch descent (load average 1.3) | 31.1 s / 1.8 s = 17.4x | |
| 2026-12-01 | full table run directly, batched torch descent (--full-table, 2 workers, idle machine: load average 0.5 at the start) | 1135 s = 18.9 min wall, 0 diverged, 6 unconverged | 15 min on 2 cores: not met, by 26 % |
| 2026-12-02 | same run, k = n = 8, 24 starts: loop of find_critical_point / survey, compiled engine (idle, load average 1.0) | 10.9 s / 0.3 s = 32.5x | |
| 2026-12-02 | step cost, compiled per run-step against torch per student at 1000 / at 10 students: k, n = 20, 20 / 20, 21 | 1.6x / 3.6x; 2.2x / 4.2x | |
| 2026-12-02 | full table run directly, compiled engine (--full-table, 2 workers, idle: load average 0.9 at the start) | 489 s = 8.1 min wall, 0 diverged, 6 unconverged | 15 min on 2 cores: met |
| 2026-12-07 | cells 6,7 8,8 10,10 12,13 (--cells), the formulas of nearopt.gaussian.kernels against the code before them, alternating processes (load average 6-7) | 74.7 s / 65.6 s = 1.14x and 77.5 s / 64.1 s = 1.21x; same steps, spurious counts and families | >= 1.0: met |
| 2026-12-07 | cells 6,7 8,8 10,10 (--cells), the ReLU and erf pair terms written once with the activations (nearopt.model.pair_terms) against commit 8788161, alternating processes (2-core x86_64 CPU VM, load average 4.9-5.0) | 18.3 s / 18.6 s = 0.98x and 20.2 s / 19.3 s = 1.05x (process CPU time 1.00x, 1.05x); same steps, spurious counts and families | >= 1.0: met on average (1.01x), within the noise of a run |
| 2026-12-07 | torch step (--skip-loop --ks 6,12), same comparison and machine (load average 4.7-4.8): step of 10 students at k = n = 12 | 0.25 ms / 0.28 ms = 0.89x and 0.24 ms / 0.27 ms = 0.89x (at 1000 students the two runs' wall times scatter by 2x) | >= 1.0: not met |
| 2026-12-07 | full table run directly (--full-table, 2 workers), the code at the start of the day (8788161) against the unified pair terms, one after the other (load average 1.0-2.5) | 473 s / 470 s = 1.01x; spurious counts identical in all 30 cells (10 583 in total); families differ by one in 3 cells (9,10; 11,12; 16,17) | >= 1.0: met |
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time

import numpy as np
import torch

from nearopt.landscape.critical import committee_teacher, find_critical_point
from nearopt.landscape.descent import SAFRAN_SHAMIR, DescentProtocol, descend, loss_gradient_function, starts
from nearopt.landscape.survey import survey
from nearopt.model.network import TwoLayerNet, io
from nearopt.model.problem import Problem

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


def step_time(k: int, n: int, R: int, steps: int, engine: str) -> float:
    """Seconds per descent step of ``R`` students with ``engine`` (section 2 of the module docstring), best of 3."""
    fn = loss_gradient_function(committee_teacher(k))
    W0 = np.random.default_rng(0).normal(scale=k**-0.5, size=(R, n, k))

    def run(m: int) -> float:
        return descend(fn, W0, np.ones((R, n)), protocol=DescentProtocol(lr=0.1, gtol=1e-30, max_steps=m), engine=engine).seconds

    return float(min((run(3 * steps) - run(steps)) / (2 * steps) for _ in range(3)))


def step_costs(k: int, n: int) -> dict:
    """The two engines' step costs at one size (section 2): torch at 10 and 1000 students, compiled per run."""
    torch_10, torch_1000 = step_time(k, n, 10, 300, "torch"), step_time(k, n, TABLE_STARTS, 8, "torch")
    compiled = step_time(k, n, 4, 2000, "compiled") / 4
    return {"k": k, "n": n, "torch_step_10_s": torch_10, "torch_step_1000_s": torch_1000, "compiled_run_step_s": compiled,
            "ratio_1000": torch_1000 / TABLE_STARTS / compiled, "ratio_10": torch_10 / 10 / compiled}


def _cell(args: tuple[int, int, int, float, DescentProtocol]) -> dict:
    k, n, seed, handover, protocol = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = survey(committee_teacher(k), width=n, n_starts=TABLE_STARTS, handover=handover, seed=seed, protocol=protocol)
    d = s.to_dict()
    return {"k": k, "n": n, "seconds": time.perf_counter() - t0, "spurious": d["spurious"], "spurious_fraction": d["spurious_fraction"],
            "diverged": d["diverged"], "unconverged": d["unconverged"], "not_converged_points": d["classes"].get("not converged", 0),
            "families": len(d["families"]), "polish": d["polish"], "max_steps": d["descent_steps"]["max"]}


def full_table(workers: int, handover: float, protocol: DescentProtocol) -> dict:
    """Run the full table (module docstring, 4): 30 cells of 1000 starts on ``workers`` processes, longest first (seed ``k``, ``1000 + k`` for ``n = k + 1``)."""
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
    ap.add_argument("--ks", default="6,12,20", help="sizes of the step costs (comma-separated; n = k and n = k + 1)")
    ap.add_argument("--handover", type=float, default=1e-5)
    ap.add_argument("--gtol", type=float, default=1e-9 / (2 * math.pi), help="per-unit gradient at which a run stops (default 1e-9/(2 pi), the experiment's)")
    ap.add_argument("--max-steps", type=int, default=1_000_000, help="descent step limit (default 10^6, the experiment's full configuration)")
    ap.add_argument("--full-table", action="store_true", help="run the full table (30 sizes x 1000 starts) and time it")
    ap.add_argument("--cells", nargs="+", metavar="K,N", help="run these sizes of the table directly (1000 starts each, one after the other)")
    ap.add_argument("--workers", type=int, default=2, help="processes of --full-table (default 2)")
    ap.add_argument("--out", metavar="FILE.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per cell, as the experiment's cells run
    load = os.getloadavg()[0]
    protocol = SAFRAN_SHAMIR.replace(gtol=args.gtol, max_steps=args.max_steps)
    out: dict = {"load_average_start": load, "date": time.strftime("%Y-%m-%d")}
    if args.full_table:
        out["full_table"] = full_table(args.workers, args.handover, protocol)
    elif args.cells:
        for cell in args.cells:
            k, n = (int(x) for x in cell.split(","))
            r = _cell((k, n, 1000 * (n - k) + k, args.handover, protocol))
            out.setdefault("cells", []).append(r)
            print(f"k = {k}, n = {n}, 1000 starts run directly: {r['seconds']:.1f} s; longest run {r['max_steps']} steps, "
                  f"{r['diverged']} diverged, {r['unconverged']} unconverged, {r['spurious']} spurious, {r['families']} families", flush=True)
    else:
        if args.quick:
            args.loop, args.k, args.ks = 6, 6, "6,8"
        if not args.skip_loop:
            t_loop, loop_pts = loop_of_single_starts(args.k, args.k, args.loop, 0, args.handover)
            t0 = time.perf_counter()
            s = survey(committee_teacher(args.k), n_starts=args.loop, handover=args.handover, seed=0)
            t_vec = time.perf_counter() - t0
            same = sum(p is not None and a.classification == p.classification and abs(a.loss - p.loss) < 1e-9 for a, p in zip(loop_pts, s.points))
            print(f"same run, k = n = {args.k}, {args.loop} starts: loop {t_loop:.1f} s, survey {t_vec:.1f} s, "
                  f"ratio {t_loop / t_vec:.1f}x; same class and loss at {same}/{args.loop} starts")
            out["same_run"] = {"k": args.k, "starts": args.loop, "loop_s": t_loop, "vectorised_s": t_vec, "ratio": t_loop / t_vec, "same_end_points": same}
        rows = []
        for extra in (0, 1):
            for k in (int(x) for x in args.ks.split(",")):
                r = step_costs(k, k + extra)
                rows.append(r)
                print(f"k = {k}, n = {k + extra}: torch step {r['torch_step_10_s'] * 1e3:.2f} ms at 10 students, {r['torch_step_1000_s'] * 1e3:.1f} ms "
                      f"at 1000 ({r['torch_step_1000_s'] / TABLE_STARTS * 1e6:.2f} us per student); compiled {r['compiled_run_step_s'] * 1e6:.2f} us per "
                      f"run-step: {r['ratio_1000']:.1f}x faster than torch at 1000 students, {r['ratio_10']:.1f}x at 10", flush=True)
        out["step_costs"] = rows
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average: {load:.1f} at the start, {out['load_average_end']:.1f} at the end")
    if args.out:
        io.write_json(args.out, out)


if __name__ == "__main__":
    main()
