"""Benchmark: both ends and the density of the population Hessian at random-matrix scale.

For erf teachers ``N_i = N_h = n`` (``P = n (n + 1)``), in one run:

1. **Moderate sizes** (``--sizes``, default 30 50): the exact spectrum (dense
   ``eigvalsh``) against

   * nearopt ``smallest`` (the locking LOBPCG of ``nearopt.spectra.lobpcg`` + the structured
     preconditioner) against SciPy's ``lobpcg`` with the same preconditioner (the reference
     solver), and ``largest`` (ARPACK LA);
   * the baselines a researcher would otherwise use for the bottom: ARPACK ``which="SA"``
     and plain LOBPCG (no preconditioner), each with the same time budget;
   * PyHessian-style power iteration (top eigenvalue; PyHessian's default 1e-3 relative
     change stopping rule) for the top;
   * SLQ density: KS distance of its CDF to the exact spectrum.

   Relative errors against the dense spectrum, products, seconds and ratios.
2. **Large case** (``--large``, default 1000: ``P ≈ 1e6``) in a child process (its
   peak RSS is its own): the task, ``k`` largest, ``k`` smallest nonzero and
   an SLQ density, timed together against ``--target`` seconds; with ``--baselines``
   the preconditioner-free baselines and SciPy's preconditioned LOBPCG then run under
   ``--budget`` seconds each and report the residual they reached.

    PYTHONPATH=src python benchmarks/bench_extremes.py [--sizes 30 50] [--large 1000] [--large-k 20] [--baselines] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh, lobpcg

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.model.network import io
from nearopt.spectra.density import slq
from nearopt.spectra.extremes import largest_eigenpairs, smallest_eigenpairs
from nearopt.spectra.torch_ops import SymmetricOperator


class OutOfTime(Exception):
    pass


class Budgeted(SymmetricOperator):
    """``op`` that counts products and raises :class:`OutOfTime` past ``budget`` seconds."""

    def __init__(self, op, budget: float):
        super().__init__(dtype=np.float64, shape=op.shape)
        self.op, self.budget, self.t0, self.products = op, budget, time.perf_counter(), 0

    def _matmat(self, X):
        if time.perf_counter() - self.t0 > self.budget:
            raise OutOfTime
        self.products += X.shape[1]
        return self.op.matmat(X)


def relerr(values, exact) -> float:
    return float(np.max(np.abs(np.asarray(values) - exact) / np.abs(exact)))


def rel_residual(op, X, theta) -> float:
    R = op.matmat(X) - X * theta
    return float(np.max(np.linalg.norm(R, axis=0) / np.abs(theta)))


def arpack_sa(op, k: int, budget: float, seed: int = 0) -> dict:
    b = Budgeted(op, budget)
    t0 = time.perf_counter()
    try:
        theta, X = eigsh(b, k=k, which="SA", tol=1e-12, v0=np.random.default_rng(seed).standard_normal(op.shape[0]))
        order = np.argsort(theta)
        return {"values": theta[order], "seconds": time.perf_counter() - t0, "products": b.products, "finished": True, "residual": rel_residual(op, X[:, order], theta[order])}
    except (OutOfTime, ArpackNoConvergence):  # out of time, or ARPACK's own iteration limit (10 P)
        return {"values": None, "seconds": time.perf_counter() - t0, "products": b.products, "finished": False, "residual": float("nan")}


def plain_lobpcg(op, k: int, budget: float, seed: int = 0, maxiter: int = 100000) -> dict:
    """Plain LOBPCG in rounds of 20 iterations until the relative residual is 1e-6 or the budget ends."""
    b = Budgeted(op, budget)
    X = np.random.default_rng(seed).standard_normal((op.shape[0], k + 4))
    t0 = time.perf_counter()
    theta, res, rounds = None, float("inf"), 0
    try:
        while res > 1e-6 and rounds * 20 < maxiter:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theta, X = lobpcg(b, X, tol=1e-14, maxiter=20, largest=False)
            order = np.argsort(theta)
            theta, X = theta[order], X[:, order]
            res = rel_residual(op, X[:, :k], theta[:k])
            rounds += 1
    except OutOfTime:
        pass
    return {"values": None if theta is None else theta[:k], "seconds": time.perf_counter() - t0, "products": b.products, "finished": bool(res <= 1e-6), "residual": res}


def power_iteration(op, budget: float, seed: int = 0, tol: float = 1e-3) -> dict:
    """PyHessian's top-eigenvalue loop: normalise, multiply, stop when the Rayleigh quotient changes < tol relative."""
    b = Budgeted(op, budget)
    v = np.random.default_rng(seed).standard_normal(op.shape[0])
    v /= np.linalg.norm(v)
    t0, lam = time.perf_counter(), None
    try:
        for _ in range(100):
            w = b.matvec(v)
            new = float(v @ w)
            v = w / np.linalg.norm(w)
            if lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol:
                lam = new
                break
            lam = new
    except OutOfTime:
        pass
    return {"value": lam, "seconds": time.perf_counter() - t0, "products": b.products}


def moderate(n: int, k: int, budget: float, device: str = "cpu") -> dict:
    net = no.sample_teacher(n, n, "erf", seed=0)
    op = PopulationHessian(net, device=device)
    _ = op.moments  # computed once, outside the timings
    t0 = time.perf_counter()
    exact = scipy.linalg.eigvalsh(op.to_dense())
    t_dense = time.perf_counter() - t0
    lo, hi = exact[:k], exact[-k:]
    small = smallest_eigenpairs(op, k, preconditioner=op.preconditioner(), null_dim=0)
    old = smallest_eigenpairs(op, k, preconditioner=op.preconditioner(), null_dim=0, solver="scipy")
    large = largest_eigenpairs(op, k)
    sa = arpack_sa(op, k, budget)
    pl = plain_lobpcg(op, k, budget)
    pw = power_iteration(op, budget)
    dens = slq(op, n_probes=10, steps=80, seed=0)
    row = {
        "n": n,
        "P": op.n_params,
        "condition": float(exact[-1] / exact[0]),
        "dense_seconds": t_dense,
        "smallest": {"seconds": small.seconds, "products": small.products, "relerr": relerr(small.values, lo), "residual": small.tolerance_reached, "block": small.extra["block"]},
        "scipy_lobpcg": {"seconds": old.seconds, "products": old.products, "relerr": relerr(old.values, lo), "residual": old.tolerance_reached},
        "largest": {"seconds": large.seconds, "products": large.products, "relerr": relerr(large.values, hi), "residual": large.tolerance_reached},
        "arpack_SA": {**{key: val for key, val in sa.items() if key != "values"}, "relerr": relerr(sa["values"], lo) if sa["values"] is not None else None},
        "plain_lobpcg": {**{key: val for key, val in pl.items() if key != "values"}, "relerr": relerr(pl["values"], lo) if pl["values"] is not None else None},
        "power_iteration": {**pw, "relerr": abs(pw["value"] - exact[-1]) / exact[-1] if pw["value"] is not None else None},
        "slq": {"seconds": dens.seconds, "products": dens.products, "ks": dens.ks_distance(exact), "probes": dens.n_probes, "steps": dens.steps},
    }
    return row


def large_case(n: int, k: int, budget: float, probes: int, steps: int, baselines: bool, maxiter: int | None, device: str = "cpu") -> dict:
    t_task = time.perf_counter()
    net = no.sample_teacher(n, n, "erf", seed=0)
    op = PopulationHessian(net, device=device)
    t0 = time.perf_counter()
    _ = op.moments
    out = {"n": n, "P": op.n_params, "moments_seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    v = np.random.default_rng(0).standard_normal((op.n_params, 1))
    op.matmat(v)
    out["product_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    op.matmat(v)
    out["product_seconds_warm"] = time.perf_counter() - t0  # second call: no first-call set-up (caches, cuBLAS)
    large = largest_eigenpairs(op, k, progress=True)
    out["rss_gb_after"] = {"largest": _peak_rss_gb()}  # running peak after each phase: which one sets it
    out["largest"] = {"seconds": large.seconds, "products": large.products, "residual": large.tolerance_reached, "values": large.values.tolist(), "solver": large.method}
    small = smallest_eigenpairs(op, k, preconditioner=op.preconditioner(), null_dim=0, lambda_max=float(large.values[-1]), maxiter=maxiter, progress=True)
    out["smallest"] = {
        "seconds": small.seconds, "products": small.products, "iterations": small.iterations, "residual": small.tolerance_reached,
        "error_bound": float(small.error_bound.max()), "values": small.values.tolist(), "converged": small.converged, "block": small.extra["block"],
        "at_rounding_floor": small.extra["at_rounding_floor"], "restarts": small.extra["restarts"],
    }
    out["rss_gb_after"]["smallest"] = _peak_rss_gb()
    dens = slq(op, n_probes=probes, steps=steps, seed=0, reorth=False)
    out["rss_gb_after"]["slq"] = _peak_rss_gb()
    out["slq"] = {"seconds": dens.seconds, "products": dens.products, "probes": probes, "steps": steps, "moment1": dens.moments(1)[0][1].item(), "moment1_err": dens.moments(1)[1][1].item()}
    out["task_seconds"] = time.perf_counter() - t_task
    out["task_peak_rss_gb"] = _peak_rss_gb()
    if torch.device(device).type == "cuda":
        out["task_peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    # how wide a product call should be; after the task's peak memory is read (32 columns take GBs)
    out["seconds_per_column"] = {m: _per_column(op, m) for m in (1, 4, 32)}
    if baselines:
        old = _budgeted_scipy_lobpcg(op, k, budget)
        out["scipy_lobpcg_preconditioned"] = old
        pl = plain_lobpcg(op, k, budget)
        out["plain_lobpcg"] = {key: val for key, val in pl.items() if key != "values"}
        sa = arpack_sa(op, k, budget)
        out["arpack_SA"] = {key: val for key, val in sa.items() if key != "values"}
    out["peak_rss_gb"] = _peak_rss_gb()
    return out


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _per_column(op: PopulationHessian, m: int, repeats: int = 3) -> float:
    """Seconds per column of one ``torch_matmat`` call on ``m`` columns, on the operator's device (best of ``repeats``)."""
    V = torch.randn((op.n_params, m), dtype=torch.float64, device=op.device)
    best = float("inf")
    for _ in range(repeats):
        if V.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        op.torch_matmat(V)
        if V.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / m


def _budgeted_scipy_lobpcg(op, k: int, budget: float) -> dict:
    """SciPy's preconditioned LOBPCG (the reference solver) under ``budget`` seconds."""
    b = Budgeted(op, budget)
    t0 = time.perf_counter()
    try:
        res = smallest_eigenpairs(b, k, preconditioner=op.preconditioner(), null_dim=0, solver="scipy", lambda_max=1.0)
        return {"seconds": time.perf_counter() - t0, "products": b.products, "finished": bool(res.converged), "residual": res.tolerance_reached}
    except OutOfTime:
        return {"seconds": time.perf_counter() - t0, "products": b.products, "finished": False, "residual": float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[30, 50], help="moderate sizes n (N_i = N_h = n) checked against dense eigvalsh")
    p.add_argument("--large", type=int, default=1000, help="large case n (0: skip)")
    p.add_argument("--k", type=int, default=10, help="eigenvalues at each end")
    p.add_argument("--large-k", type=int, default=20, help="eigenvalues at each end in the large case")
    p.add_argument("--baselines", action="store_true", help="large case: also run the baselines (each under --budget seconds)")
    p.add_argument("--maxiter", type=int, default=None, help="large case: LOBPCG iterations at most")
    p.add_argument("--target", type=float, default=600.0, help="large case: seconds the task (both ends + SLQ) should take")
    p.add_argument("--budget", type=float, default=120.0, help="seconds each preconditioner-free baseline may run")
    p.add_argument("--probes", type=int, default=4, help="SLQ probes in the large case")
    p.add_argument("--steps", type=int, default=40, help="SLQ Lanczos steps in the large case")
    p.add_argument("--device", default="cpu", help="where the population products and the locking LOBPCG run (cpu, cuda); ARPACK and SLQ's recurrences stay on the host")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 is faster on a machine shared with other jobs)")
    p.add_argument("--out", help="write the numbers as JSON here")
    p.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.large_only:  # child process
        print(json.dumps(large_case(args.large, args.large_k, args.budget, args.probes, args.steps, args.baselines, args.maxiter, args.device)))
        return
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    gpu = f"{torch.cuda.get_device_name(args.device)} ({args.device}); " if torch.device(args.device).type == "cuda" else ""
    record = {"device": gpu + host, "moderate": [], "large": None}
    print(record["device"], flush=True)
    for n in args.sizes:
        row = moderate(n, args.k, args.budget, args.device)
        record["moderate"].append(row)
        s, sa, pl = row["smallest"], row["arpack_SA"], row["plain_lobpcg"]

        def status(b: dict) -> str:
            return f"{b['seconds']:.2f}s" if b["finished"] else f"unfinished in {b['seconds']:.0f}s"

        sa_err = f", relerr {sa['relerr']:.1e}" if sa["relerr"] is not None else ""
        pl_err = f", relerr {pl['relerr']:.1e}" if pl["relerr"] is not None else ""
        print(
            f"n={n} P={row['P']} cond={row['condition']:.2e}  dense {row['dense_seconds']:.2f}s | smallest {s['seconds']:.2f}s "
            f"({s['products']} products, relerr {s['relerr']:.1e}) | ARPACK SA {status(sa)} ({sa['products']} products{sa_err}) | "
            f"plain LOBPCG {status(pl)} ({pl['products']} products, residual {pl['residual']:.1e}{pl_err})",
            flush=True,
        )
        lg, pw, d = row["largest"], row["power_iteration"], row["slq"]
        print(
            f"      largest {lg['seconds']:.2f}s ({lg['products']} products, relerr {lg['relerr']:.1e}) | power iteration (top 1) {pw['seconds']:.2f}s "
            f"({pw['products']} products, relerr {pw['relerr']:.1e}) | SLQ {d['probes']}x{d['steps']} {d['seconds']:.2f}s, KS {d['ks']:.3f}",
            flush=True,
        )
        old = row["scipy_lobpcg"]
        print(f"      smallest: locking LOBPCG (block {s['block']}) {s['products']} products vs SciPy lobpcg {old['products']} ({old['seconds']:.2f}s, relerr {old['relerr']:.1e}): "
              f"{old['seconds'] / s['seconds']:.1f}x the time", flush=True)
        print(f"      ratios: dense/smallest {row['dense_seconds'] / s['seconds']:.1f}x, ARPACK-SA/smallest {sa['seconds'] / s['seconds']:.1f}x{'' if sa['finished'] else ' (lower bound)'}, "
              f"plain-LOBPCG/smallest {pl['seconds'] / s['seconds']:.1f}x{'' if pl['finished'] else ' (lower bound)'}", flush=True)
    if args.large:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, __file__, "--large-only", "--large", str(args.large), "--large-k", str(args.large_k), "--budget", str(args.budget), "--probes", str(args.probes), "--steps", str(args.steps), "--device", args.device]
        cmd += (["--threads", str(args.threads)] if args.threads else []) + (["--baselines"] if args.baselines else []) + (["--maxiter", str(args.maxiter)] if args.maxiter else [])
        child = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)  # progress lines pass through on stderr
        big = json.loads(child.stdout.strip().splitlines()[-1])
        record["large"] = big
        gpu_mem = f", peak GPU memory {big['task_peak_gpu_gb']:.2f} GB" if "task_peak_gpu_gb" in big else ""
        print(f"large n={big['n']} P={big['P']}: one product {big['product_seconds']:.3f}s (warm {big['product_seconds_warm']:.3f}s), moments {big['moments_seconds']:.2f}s, peak RSS {big['peak_rss_gb']:.2f} GB{gpu_mem}")
        print("  seconds per column of one product call: " + ", ".join(f"{m} columns {t * 1e3:.2f} ms" for m, t in big["seconds_per_column"].items()))
        print(f"  largest {args.large_k} ({big['largest']['solver']}): {big['largest']['seconds']:.1f}s, {big['largest']['products']} products, residual {big['largest']['residual']:.1e}")
        print(f"  smallest {args.large_k}: {big['smallest']['seconds']:.1f}s, {big['smallest']['products']} products, residual {big['smallest']['residual']:.1e}, values {big['smallest']['values']}")
        sm = big["smallest"]
        print(f"    ({sm['iterations']} iterations, block {sm['block']}, converged {sm['converged']}, {sm['at_rounding_floor']} at the rounding floor, {sm.get('restarts', 0)} restarts, error bound {sm['error_bound']:.1e})")
        print(f"  SLQ {big['slq']['probes']}x{big['slq']['steps']}: {big['slq']['seconds']:.1f}s")
        print("  peak RSS so far after " + ", ".join(f"{phase} {gb:.2f} GB" for phase, gb in big["rss_gb_after"].items()))
        on_gpu = "task_peak_gpu_gb" in big  # on a GPU the target is time alone; the 4 GB one is the CPU's
        within = big["task_seconds"] <= args.target and (on_gpu or big["task_peak_rss_gb"] <= 4.0)
        verdict = ("met" if within else "NOT met") if big["smallest"]["converged"] else "NOT met (the smallest end did not converge)"
        print(f"  task (both ends + SLQ): {big['task_seconds']:.1f}s, peak RSS {big['task_peak_rss_gb']:.2f} GB; target {args.target:.0f}s{'' if on_gpu else ' / 4 GB'}: {verdict} "
              f"({big['task_seconds'] / args.target:.2f}x the target time)")
        for name in ("scipy_lobpcg_preconditioned", "plain_lobpcg", "arpack_SA"):
            if name not in big:
                continue
            b = big[name]
            print(f"  {name}: {'finished' if b['finished'] else 'unfinished'} after {b['seconds']:.0f}s, {b['products']} products, residual {b['residual']:.1e}")
    if args.out:
        io.write_json(args.out, record)


if __name__ == "__main__":
    main()
