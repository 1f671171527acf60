"""GPU benchmark: batch Hessian at the optimum (P ≈ 20000, N = 100000, float64) and its spectrum.

Target: Hessian + spectrum within 2x of the time ``torch.linalg.eigvalsh``
alone takes on a matrix of that size on the same GPU. Both are measured in this
run; the script prints the ratio. Needs CUDA::

    PYTHONPATH=src python benchmarks/bench_gpu_batch.py [--ni 199 --nh 100 --samples 100000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import time

import torch

import nearopt as no
from nearopt import curvature as empirical
from nearopt.model.network import io


def _timed(fn, *args):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ni", type=int, default=199, help="input width N_i (P = N_h (N_i + 1))")
    p.add_argument("--nh", type=int, default=100, help="hidden width N_h")
    p.add_argument("--samples", type=int, default=100_000, help="batch size N")
    p.add_argument("--activation", default="erf", help="activation (default erf)")
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    dev = torch.device("cuda")
    net = no.sample_teacher(args.ni, args.nh, args.activation, seed=0)
    P = net.n_params
    X = no.sample_inputs(args.samples, args.ni, seed=0)
    # warm up CUDA, cuBLAS and cuSOLVER so that neither timing pays for initialisation
    w = torch.randn(512, 512, dtype=torch.float64, device=dev)
    torch.linalg.eigvalsh(w + w.T)
    empirical.gauss_newton_tensor(net, X[:64], device=dev)

    A = torch.randn(P, P, dtype=torch.float64, device=dev)
    A = A + A.T
    _, t_eig = _timed(torch.linalg.eigvalsh, A)
    del A
    torch.cuda.empty_cache()

    H, t_gn = _timed(lambda: empirical.gauss_newton_tensor(net, X, device=dev))
    del H
    torch.cuda.empty_cache()
    spec, t_total = _timed(lambda: no.batch_spectrum(net, X, method="gauss-newton", device=dev))
    ratio = t_total / t_eig
    res = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "activation": net.activation.name,
        "N_i": args.ni,
        "N_h": args.nh,
        "P": P,
        "N": args.samples,
        "dtype": "float64",
        "seconds_eigvalsh_alone": t_eig,
        "seconds_gauss_newton_only": t_gn,
        "seconds_hessian_plus_spectrum": t_total,
        "ratio_to_eigvalsh": ratio,
        "target_ratio": 2.0,
        "met": bool(ratio <= 2.0),
        "rank": spec.rank.rank,
        "largest": spec.largest,
    }
    print(f"device {res['device']}  P={P}  N={args.samples}  float64")
    print(f"eigvalsh alone ({P}x{P})          {t_eig:8.2f} s")
    print(f"batch Hessian J^T J / N (chunked) {t_gn:8.2f} s")
    print(f"Hessian + spectrum (batch_spectrum) {t_total:6.2f} s   ratio {ratio:.2f}x eigvalsh (target <= 2)")
    if args.out:
        io.write_json(args.out, res)
    print(io.to_json(res))


if __name__ == "__main__":
    main()
