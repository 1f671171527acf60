"""Benchmark: the size-based torch thread count (:mod:`nearopt.threads`) against torch's default threads, on a loaded machine.

The script loads the machine itself: ``--load`` busy processes (default: one per core) spin for
the whole run, as other jobs would. Each case then runs twice in a fresh child process, with the
same inputs and seeds:

* **baseline**: ``NEAROPT_THREADS`` set to torch's default thread count (what torch does alone);
* **sized**: ``NEAROPT_THREADS`` unset (one thread below :data:`nearopt.threads.PARALLEL_FROM`).

Cases: the smallest end (``--k`` eigenvalues, matrix-free LOBPCG) of the erf population Hessian at
``N_i = N_h = --width`` (``P = N_h (N_i + 1)``), and the SGD simulator (``--runs`` runs, ``--steps``
steps) on the same teacher. A child that runs past ``--budget`` seconds is stopped and its time
reported as ``> budget`` (the ratio is then a lower bound). Prints one line per case with both
times and the ratio baseline / sized; ``--out`` writes them as JSON.

    PYTHONPATH=src python benchmarks/bench_threads.py [--quick] [--load N] [--budget 120] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import torch


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def child(case: str, width: int, k: int, runs: int, steps: int) -> None:
    """Time one case in this process; print ``{"seconds": ..., "threads": ...}`` as JSON."""
    import nearopt as no
    from nearopt.dynamics.sgd import simulate_sgd
    from nearopt.threads import thread_count

    teacher = no.sample_teacher(width, width, "erf", seed=0)
    t0 = time.perf_counter()
    if case == "smallest":
        spec = no.PopulationHessian(teacher).spectrum("lanczos", which="smallest", k=k)
        used = thread_count(float(spec.n_params) ** 2)
    else:
        simulate_sgd(teacher, lr=0.05, batch=1, steps=steps, runs=runs, seed=0)
        used = thread_count(float(runs) * 2 * width * width)
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": used}))


def timed(case: str, env_threads: str | None, args) -> dict:
    env = dict(os.environ)
    env.pop("NEAROPT_THREADS", None)
    if env_threads is not None:
        env["NEAROPT_THREADS"] = env_threads
    cmd = [sys.executable, __file__, "--child", case, "--width", str(args.width), "--k", str(args.k), "--runs", str(args.runs), "--steps", str(args.steps)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.budget, check=True)
    except subprocess.TimeoutExpired:
        return {"seconds": float(args.budget), "threads": env_threads, "timed_out": True}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "timed_out": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (N_i = N_h = 20, 50 runs x 200 steps)")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes started as background load (default: one per core)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds a child may run before it is stopped")
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--child", choices=("smallest", "sgd"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.width, args.k, args.runs, args.steps)
        return
    if args.quick:
        args.width, args.runs, args.steps = 20, 50, 200
    default = str(torch.get_num_threads())
    stop = mp.Event()
    load = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    rows = []
    try:
        for case in ("smallest", "sgd"):
            base = timed(case, default, args)
            sized = timed(case, None, args)
            ratio = base["seconds"] / sized["seconds"]
            bound = ">=" if base["timed_out"] else ""
            rows.append({"case": case, "baseline": base, "sized": sized, "ratio": ratio})
            print(f"{case:<9} N_i = N_h = {args.width}: default threads ({default}) {base['seconds']:8.2f} s{' (stopped)' if base['timed_out'] else ''}, "
                  f"sized ({sized['threads']} thread(s)) {sized['seconds']:8.2f} s, ratio {bound}{ratio:.1f}x", flush=True)
    finally:
        stop.set()
        for p in load:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    meta = {"load_processes": args.load, "cores": os.cpu_count(), "torch": torch.__version__, "default_threads": int(default)}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
