"""Benchmark: how much a perfect preconditioner would save at the smallest end.

The locking LOBPCG's cost at the bottom of an erf population spectrum is set by how crowded
the bottom is, not by the preconditioner: this runs the same solver, same seed and block, with
nearopt's structured preconditioner (``PopulationHessian.preconditioner``) and with the exact
inverse ``H⁻¹`` (from a dense ``eigh``, the best any preconditioner can be), on erf teachers
``N_i = N_h = n``, and prints the products each needs, their ratio, the errors against the
dense spectrum and the spectral ratios that bound LOBPCG with an exact inverse: the rate of the
``k``-th pair is set by ``λ_k / λ_{m+1}``, ``m`` the active block.

    PYTHONPATH=src python benchmarks/bench_preconditioner_limit.py [--sizes 40 60 80] [--k 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import aslinearoperator

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.model.network import io
from nearopt.spectra.extremes import LOCKING_GUARD, smallest_eigenpairs


def case(n: int, k: int, tol: float) -> dict:
    op = PopulationHessian(no.sample_teacher(n, n, "erf", seed=0))
    t0 = time.perf_counter()
    lam, U = scipy.linalg.eigh(op.to_dense())
    dense_s = time.perf_counter() - t0
    if lam[0] <= 0:
        raise SystemExit(f"n = {n}: the dense spectrum has a zero mode ({lam[0]:.1e}); erf's should not")
    m = k + LOCKING_GUARD
    row = {"n": n, "P": op.n_params, "k": k, "block": m, "tol": tol, "dense_seconds": dense_s,
           "ratio_k_to_block_edge": float(lam[k - 1] / lam[m]), "relative_spread_of_k": float(lam[k - 1] / lam[0] - 1)}
    for name, M in (("structured", op.preconditioner()), ("exact_inverse", aslinearoperator((U / lam) @ U.T))):
        res = smallest_eigenpairs(op, k, null_dim=0, preconditioner=M, lambda_max=float(lam[-1]), tol=tol, seed=0)
        row[name] = {"iterations": res.iterations, "products": res.products, "seconds": res.seconds, "converged": res.converged,
                     "relerr": float(np.max(np.abs(res.values - lam[:k]) / lam[:k]))}
    row["products_ratio"] = row["structured"]["products"] / row["exact_inverse"]["products"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[40, 60, 80], help="erf N_i = N_h = n (P = n (n + 1), dense: keep P below ~10^4)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual each pair must reach")
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args()
    if args.k < 1 or any(n < 2 or n * (n + 1) <= args.k + LOCKING_GUARD for n in args.sizes) or not args.tol > 0:
        p.error("needs k >= 1, tol > 0 and sizes n >= 2 with n (n + 1) > k + 4")
    rows = []
    for n in args.sizes:
        r = case(n, args.k, args.tol)
        rows.append(r)
        s, e = r["structured"], r["exact_inverse"]
        print(f"n={n} P={r['P']} (block {r['block']}; λ_k/λ_(m+1) = {r['ratio_k_to_block_edge']:.4f}): structured preconditioner "
              f"{s['iterations']} iterations, {s['products']} products, relerr {s['relerr']:.1e} | exact H⁻¹ {e['iterations']} iterations, "
              f"{e['products']} products, relerr {e['relerr']:.1e} | structured / exact: {r['products_ratio']:.2f}x the products", flush=True)
    if args.out:
        io.write_json(args.out, {"float64": True, "rows": rows})


if __name__ == "__main__":
    main()
