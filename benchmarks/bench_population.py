"""Benchmark: exact population spectrum (structured route) against what a user writes today.

1. Target size: exact erf population spectrum for ``N_i = 100000, N_h = 50``
   (``P = 5 000 050``), run in a child process so that its peak memory is its own.
   Targets: under 30 s, peak RSS under 2 GB.
2. Baseline: ``torch.func.hessian`` of a batch loss (``N`` samples) + ``torch.linalg.eigvalsh``,
   on a ladder of sizes until one takes longer than ``--budget`` seconds or runs
   out of memory; at the largest size it finished, the structured route is
   timed too and the ratio printed (target >= 100x). Both timings come from this run.

3. ``--network``: the general engine (biases ``b1``, ``b2`` and 3 outputs: kernels with means,
   Price's theorem, ``torch.func``) on the structured route at ``N_i = 250 000``, ``N_h = 20``
   (``P = 5 000 083``), against the paper's network of the same size in the same run.

    PYTHONPATH=src python benchmarks/bench_population.py [--quick] [--network] [--out FILE.json]

Records (2-core x86_64 CPU VM, idle: load average 0.5):

| date | what | value | target |
|---|---|---|---|
| 2026-12-07 | erf, N_i = 100 000, N_h = 50 (P = 5 000 050), structured | 2.97 s, peak RSS 0.55 GB | < 30 s, < 2 GB: met |
| 2026-12-07 | --network: erf with b1, b2 and 3 outputs, N_i = 250 000, N_h = 20 (P = 5 000 083) against the paper's network (P = 5 000 020), same run | 4.34 s / 1.43 s = 3.0x | < 30 s: met |
| 2026-12-07 | the same general network at N_h = 50 (P = 5 000 203; reduced problem of 2 753 parameters, whose torch.func Hessian dominates), a separate script | 28.3 s | < 30 s: met |
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


def target_case(ni: int, nh: int, outputs: int = 0) -> dict:
    """The structured spectrum of an erf teacher; ``outputs > 0``: with biases ``b1``, ``b2`` and that many outputs (the general engine)."""
    net = no.sample_teacher(ni, nh, "erf", seed=0)
    if outputs:
        rng = np.random.default_rng(1)
        net = no.TwoLayerNet(net.W1, rng.standard_normal((outputs, nh)) / np.sqrt(nh), net.activation, 0.3 * rng.standard_normal(nh),
                             0.1 * rng.standard_normal(outputs))
    t0 = time.perf_counter()
    spec = population_spectrum(net, method="structured")
    seconds = time.perf_counter() - t0
    return {"N_i": ni, "N_h": nh, "M": max(outputs, 1), "biases": bool(outputs), "P": net.n_params, "seconds": seconds, "rank": spec.rank.rank,
            "largest": spec.largest, "smallest": float(spec.eigenvalues[0])}


def run_child(ni: int, nh: int, outputs: int = 0) -> dict:
    """:func:`target_case` in a child process (its peak memory is its own)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, __file__, "--target-only", str(ni), str(nh), str(outputs)], capture_output=True, text=True, check=True, env=env)
    return json.loads(child.stdout.strip().splitlines()[-1])


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
    p.add_argument("--network", action="store_true",
                   help="also: the general engine (b1, b2, 3 outputs) at N_i = 250000, N_h = 20 against the paper's network of the same size")
    p.add_argument("--target-only", nargs=3, type=int, metavar=("NI", "NH", "M"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.target_only:  # child process
        print(json.dumps(target_case(*args.target_only)))
        return

    ni, nh = (10_000, 20) if args.quick else (100_000, 50)
    target = run_child(ni, nh)
    target["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # Linux: KiB
    print(f"[target] erf N_i={ni} N_h={nh} P={target['P']}: structured exact spectrum {target['seconds']:.2f} s "
          f"(target < 30 s), peak RSS {target['peak_rss_gb']:.2f} GB (target < 2 GB), rank {target['rank']}")
    if args.network:
        gni = 25_000 if args.quick else 250_000
        plain, general = run_child(gni, 20), run_child(gni, 20, 3)
        print(f"[network] erf N_i={gni} N_h=20: paper's network P={plain['P']} {plain['seconds']:.2f} s; with b1, b2 and 3 outputs "
              f"P={general['P']} {general['seconds']:.2f} s (ratio {general['seconds'] / plain['seconds']:.1f}x; target < 30 s)")
        target["network"] = {"plain": plain, "general": general}

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
