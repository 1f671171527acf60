"""Benchmark: exact population spectrum (structured route) against what a user writes today.

1. Target size: exact erf population spectrum for ``N_i = 100000, N_h = 50``
   (``P = 5 000 050``), run in a child process so that its peak memory is its own.
   Targets: under 30 s, peak RSS under 2 GB.
2. Baseline: ``torch.func.hessian`` of a batch loss (``N`` samples) + ``torch.linalg.eigvalsh``,
   on a ladder of sizes until one takes longer than ``--budget`` seconds or runs
   out of memory; at the largest size it finished, the structured route is
   timed too and the ratio printed (target >= 100x). Both timings come from this run.

    PYTHONPATH=src python benchmarks/bench_population.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import nearopt as no
from nearopt.curvature import population_spectrum
from nearopt.model.network import forward_torch, io


def target_case(ni: int, nh: int) -> dict:
    net = no.sample_teacher(ni, nh, "erf", seed=0)
    t0 = time.perf_counter()
    spec = population_spectrum(net, method="structured")
    seconds = time.perf_counter() - t0
    return {"N_i": ni, "N_h": nh, "P": net.n_params, "seconds": seconds, "rank": spec.rank.rank, "largest": spec.largest, "smallest": float(spec.eigenvalues[0])}


def baseline(net, n_samples: int) -> float:
    """What a user writes today: autodiff Hessian of a batch loss, then eigvalsh (float64)."""
    X = torch.as_tensor(no.sample_inputs(n_samples, net.n_inputs, seed=1))
    theta = torch.as_tensor(net.parameters())
    y = forward_torch(theta, X, net.activation, net.n_hidden)

    def loss(th):
        return 0.5 * ((forward_torch(th, X, net.activation, net.n_hidden) - y) ** 2).mean()

    t0 = time.perf_counter()
    H = torch.func.hessian(loss)(theta)
    torch.linalg.eigvalsh(H)
    return time.perf_counter() - t0


def structured_time(net, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        population_spectrum(net, method="structured")
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, targets not meaningful)")
    p.add_argument("--budget", type=float, default=60.0, help="stop the baseline ladder after a size taking longer than this (s)")
    p.add_argument("--samples", type=int, default=2000, help="batch size N of the baseline")
    p.add_argument("--out", help="write the numbers as JSON here")
    p.add_argument("--target-only", nargs=2, type=int, metavar=("NI", "NH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.target_only:  # child process
        print(json.dumps(target_case(*args.target_only)))
        return

    ni, nh = (10_000, 20) if args.quick else (100_000, 50)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, __file__, "--target-only", str(ni), str(nh)], capture_output=True, text=True, check=True, env=env)
    target = json.loads(child.stdout.strip().splitlines()[-1])
    target["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # Linux: KiB
    print(f"[target] erf N_i={ni} N_h={nh} P={target['P']}: structured exact spectrum {target['seconds']:.2f} s "
          f"(target < 30 s), peak RSS {target['peak_rss_gb']:.2f} GB (target < 2 GB), rank {target['rank']}")

    ladder = [(10, 5), (20, 10), (30, 15)] if args.quick else [(20, 10), (40, 20), (60, 30), (80, 40), (100, 50), (140, 70)]
    rows = []
    for n_i, n_h in ladder:
        net = no.sample_teacher(n_i, n_h, "erf", seed=0)
        try:
            tb = baseline(net, args.samples)
        except (MemoryError, RuntimeError) as exc:  # torch reports allocation failures as RuntimeError
            print(f"[baseline] N_i={n_i} N_h={n_h} P={net.n_params}: did not finish ({type(exc).__name__})")
            break
        ts = structured_time(net)
        rows.append({"N_i": n_i, "N_h": n_h, "P": net.n_params, "baseline_s": tb, "structured_s": ts, "speedup": tb / ts})
        print(f"[baseline] N_i={n_i:4d} N_h={n_h:3d} P={net.n_params:6d}: torch.func.hessian+eigvalsh (N={args.samples}) "
              f"{tb:8.2f} s   structured {ts:8.4f} s   speedup {tb / ts:9.1f}x")
        if tb > args.budget:
            break
    last = rows[-1]
    print(f"[ratio] at the largest size the baseline finished (P={last['P']}): structured exact route is {last['speedup']:.0f}x faster (target >= 100x)")
    res = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, numpy {np.__version__}", "target": target, "ladder": rows, "baseline_samples": args.samples}
    if args.out:
        io.write_json(args.out, res)


if __name__ == "__main__":
    main()
