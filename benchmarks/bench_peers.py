"""nearopt's exact population route against what a researcher would use today.

On the same erf teachers, in the same run, for the Hessian at the optimum:

* **nearopt, exact** (``N -> infinity``): all eigenvalues by the structured route, the top ``k``
  by Lanczos on the matrix-free population operator, the smallest nonzero ``k`` by the
  preconditioned LOBPCG route;
* **curvlinops** ``GGNLinearOperator`` on a Monte-Carlo batch of ``N`` Gaussian inputs, as a
  SciPy operator: top ``k`` by ``eigsh``, all eigenvalues by ``eigvalsh`` of the dense matrix
  (``to_scipy() @ I``);
* **torch.func** HVP (``jvp`` of ``grad`` of the batch loss) + ``eigsh`` for the top ``k``.

The batch routes carry a ``~1/sqrt(N)`` sampling error that the exact route does not: accuracy is
the relative error of the top ``k`` (and of the full spectrum) against the exact population values.
Times are wall-clock seconds on this machine (device: CPU, float64, 1 BLAS thread per process as
set by the caller); ratios are peer time / nearopt time, measured in the same run.

The peers are optional and not part of nearopt's dependencies: ``bash benchmarks/install_peers.sh``
installs them next to the CPU build of torch (``--no-deps``: a plain install of backpack pulls
torchvision and with it a multi-GB CUDA torch). Usage::

    python benchmarks/bench_peers.py [--sizes 20,40,60] [--oversample 10] [--k 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import func

import nearopt as no

try:
    from curvlinops import GGNLinearOperator
except ImportError:  # the peer is optional: say how to get it
    GGNLinearOperator = None


class TwoLayer(torch.nn.Module):
    """``f(x) = W2 erf(W1 x / sqrt 2)``: the teacher as a torch module (parameters in nearopt's order)."""

    def __init__(self, net: no.TwoLayerNet):
        super().__init__()
        self.W1 = torch.nn.Parameter(torch.as_tensor(net.W1.copy()))
        self.W2 = torch.nn.Parameter(torch.as_tensor(net.W2.copy()))
        self.act = net.activation

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.act(X @ self.W1.T) @ self.W2.T


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.sort(a) - np.sort(b)) / np.abs(np.sort(b))))


def curvlinops_operator(net: no.TwoLayerNet, X: np.ndarray, batch: int = 4096) -> LinearOperator:
    """The GGN of ``1/(2N) sum (f - y)^2`` on ``X``: curvlinops' MSE GGN (mean reduction) times 1/2."""
    model = TwoLayer(net)
    Xt = torch.as_tensor(X)
    with torch.no_grad():
        y = model(Xt)
    data = [(Xt[i : i + batch], y[i : i + batch]) for i in range(0, Xt.shape[0], batch)]
    ggn = GGNLinearOperator(model, torch.nn.MSELoss(reduction="mean"), list(model.parameters()), data, check_deterministic=False).to_scipy()
    return 0.5 * ggn


def torch_func_operator(net: no.TwoLayerNet, X: np.ndarray) -> LinearOperator:
    """``H v`` by forward-over-reverse autodiff of the batch loss (what a torch.func user writes)."""
    model = TwoLayer(net)
    Xt = torch.as_tensor(X)
    with torch.no_grad():
        y = model(Xt)
    theta0 = torch.cat([p.detach().ravel() for p in model.parameters()])
    n1 = net.W1.size

    def loss(theta):
        W1, W2 = theta[:n1].reshape(net.W1.shape), theta[n1:].reshape(1, -1)
        return 0.5 * ((net.activation(Xt @ W1.T) @ W2.T - y) ** 2).mean()

    grad = func.grad(loss)

    def mv(v):
        return func.jvp(grad, (theta0,), (torch.as_tensor(np.ravel(v)),))[1].numpy()

    return LinearOperator((theta0.numel(),) * 2, matvec=mv, dtype=np.float64)


def top_k(op: LinearOperator, k: int) -> np.ndarray:
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    return np.sort(eigsh(op, k=k, which="LA", v0=v0, return_eigenvectors=False))


def bench_size(n: int, oversample: float, k: int) -> dict:
    net = no.sample_teacher(n, n, "erf", seed=0)
    P = net.n_params
    N = int(oversample * P)
    X = no.sample_inputs(N, n, seed=1)
    row: dict = {"N_i=N_h": n, "P": P, "N": N}
    exact, row["nearopt_all_s"] = timed(lambda: no.population_spectrum(net, "structured").eigenvalues)
    H = no.PopulationHessian(net)
    top, row["nearopt_topk_s"] = timed(lambda: H.spectrum("lanczos", k=k).eigenvalues)
    row["nearopt_topk_err"] = rel_err(top, exact[-k:])
    small, row["nearopt_smallk_s"] = timed(lambda: H.spectrum("smallest", k=min(k, 5)).eigenvalues)
    row["nearopt_smallk_err"] = rel_err(small, exact[: min(k, 5)])
    tf = torch_func_operator(net, X)
    top_tf, row["torchfunc_topk_s"] = timed(lambda: top_k(tf, k))
    row["torchfunc_topk_err"] = rel_err(top_tf, exact[-k:])
    if GGNLinearOperator is not None:
        cl = curvlinops_operator(net, X)
        top_cl, row["curvlinops_topk_s"] = timed(lambda: top_k(cl, k))
        row["curvlinops_topk_err"] = rel_err(top_cl, exact[-k:])
        all_cl, row["curvlinops_all_s"] = timed(lambda: scipy.linalg.eigvalsh(cl @ np.eye(P)))
        nz = exact > 1e-8 * exact[-1]  # compare where the relative error is meaningful
        row["curvlinops_all_err"] = rel_err(all_cl[nz], exact[nz])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20,40,60", help="N_i = N_h values (comma-separated)")
    ap.add_argument("--oversample", type=float, default=10.0, help="batch size N = oversample * P for the peers")
    ap.add_argument("--k", type=int, default=20, help="eigenvalues at the top")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if GGNLinearOperator is None:
        print("curvlinops is not installed (bash benchmarks/install_peers.sh): its columns are skipped")
    print(f"device: cpu, float64, torch {torch.__version__}, nearopt {no.__version__}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = bench_size(n, args.oversample, args.k)
        print(f"\nerf N_i = N_h = {n}: P = {r['P']}, peers' batch N = {r['N']}")
        print(f"  all eigenvalues: nearopt structured (exact) {r['nearopt_all_s']:.2f} s", end="")
        if "curvlinops_all_s" in r:
            print(f"; curvlinops dense eigvalsh {r['curvlinops_all_s']:.2f} s (rel. err {r['curvlinops_all_err']:.2g}); ratio {r['curvlinops_all_s'] / r['nearopt_all_s']:.1f}x")
        else:
            print()
        print(f"  top {args.k}: nearopt lanczos (exact) {r['nearopt_topk_s']:.2f} s (rel. err {r['nearopt_topk_err']:.2g})")
        print(f"          torch.func HVP + eigsh {r['torchfunc_topk_s']:.2f} s (rel. err {r['torchfunc_topk_err']:.2g}); ratio {r['torchfunc_topk_s'] / r['nearopt_topk_s']:.1f}x")
        if "curvlinops_topk_s" in r:
            print(f"          curvlinops GGN + eigsh {r['curvlinops_topk_s']:.2f} s (rel. err {r['curvlinops_topk_err']:.2g}); ratio {r['curvlinops_topk_s'] / r['nearopt_topk_s']:.1f}x")
        print(f"  smallest nonzero {min(args.k, 5)}: nearopt (exact) {r['nearopt_smallk_s']:.2f} s (rel. err {r['nearopt_smallk_err']:.2g}); no peer route reaches them")


if __name__ == "__main__":
    main()
