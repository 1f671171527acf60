"""Population loss and dense Hessians written here from the Gaussian integrals, sharing no code with nearopt.

For ``x ~ N(0, Sigma)`` and units ``omega_i`` with signed output weights ``beta_i`` (student
``[W1; T1]``, ``[v; -u]``), ``L = 1/2 sum_ij beta_i beta_j kappa(c_ii, c_ij, c_jj)`` with
``c = Omega Sigma Omega^T`` and the pair kernel ``kappa(c11, c12, c22) = E[g(a) g(b)]``:

* ``erf`` (``g(z) = erf(z / sqrt 2)``): ``2/pi asin(c12 / sqrt((1 + c11)(1 + c22)))``;
* ``linear`` (``g(z) = z``): ``c12``;
* ``quadratic`` (``g(z) = z^2``): ``c11 c22 + 2 c12^2`` (Isserlis);
* ``relu`` (arc-cosine kernel, Cho & Saul 2009): ``(sqrt(c11 c22 - c12^2) + c12 (pi - arccos(c12 / sqrt(c11 c22)))) / (2 pi)``,
  a unit with itself ``c11 / 2`` (the angle is singular there: points with parallel units are not for this reference).

Hessians come from torch autograd on these closed forms, over the parameters
``theta = concat(W1.ravel(), v)`` of the student, restricted to the trained blocks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KERNELS = ("erf", "linear", "quadratic")


def kernel(name: str, c11: torch.Tensor, c12: torch.Tensor, c22: torch.Tensor) -> torch.Tensor:
    """``E[g(a) g(b)]`` for ``(a, b) ~ N(0, [[c11, c12], [c12, c22]])``, elementwise."""
    if name == "erf":
        return 2.0 / math.pi * torch.asin(c12 / torch.sqrt((1.0 + c11) * (1.0 + c22)))
    if name == "linear":
        return c12
    if name == "quadratic":
        return c11 * c22 + 2.0 * c12**2
    if name == "relu":
        return (torch.sqrt(c11 * c22 - c12**2) + c12 * (math.pi - torch.acos(c12 / torch.sqrt(c11 * c22)))) / (2.0 * math.pi)
    raise ValueError(name)


def loss(name: str, W1: torch.Tensor, v: torch.Tensor, T1: torch.Tensor, u: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
    """``1/2 E[(v . g(W1 x) - u . g(T1 x))^2]`` for ``x ~ N(0, Sigma)``."""
    Om = torch.cat([W1, T1])
    beta = torch.cat([v, -u])
    C = Om @ Sigma @ Om.T
    d = torch.diagonal(C)
    if name == "relu":  # a unit with itself: E[relu(a)^2] = c / 2, off the kernel's singular angle
        eye = torch.eye(len(d), dtype=torch.bool)
        K = torch.where(eye, torch.diag(d / 2.0), kernel(name, d[:, None], torch.where(eye, 0.0, C), d[None, :]))
    else:
        K = kernel(name, d[:, None], C, d[None, :])
    return 0.5 * beta @ K @ beta


def _split(theta: torch.Tensor, K: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return theta[: K * n].reshape(K, n), theta[K * n :]


def hessian(name: str, W1, v, T1, u, Sigma=None, *, trained: str = "both", gauss_newton: bool = False) -> np.ndarray:
    """Dense Hessian of :func:`loss` in the student parameters at ``(W1, v)``, trained blocks only.

    ``gauss_newton``: ``E[J J^T]`` instead, the Hessian at ``theta0`` of ``1/2 E[(f_theta - f_theta0)^2]``
    (the student against a frozen copy of itself).
    """
    W1, v, T1, u = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (W1, v, T1, u))
    v, u = v.reshape(-1), u.reshape(-1)
    K, n = W1.shape
    S = torch.eye(n, dtype=torch.float64) if Sigma is None else torch.as_tensor(np.asarray(Sigma, dtype=np.float64))
    theta0 = torch.cat([W1.reshape(-1), v])
    if gauss_newton:
        T1, u = W1.clone(), v.clone()

    def f(theta: torch.Tensor) -> torch.Tensor:
        return loss(name, *_split(theta, K, n), T1, u, S)

    H = torch.autograd.functional.hessian(f, theta0).numpy()
    idx = {"both": np.arange(K * n + K), "first": np.arange(K * n), "second": np.arange(K * n, K * n + K)}[trained]
    H = H[np.ix_(idx, idx)]
    return 0.5 * (H + H.T)


def problem_hessian(problem, *, gauss_newton: bool = False) -> np.ndarray:
    """:func:`hessian` of a :class:`nearopt.model.problem.Problem` (its arrays only)."""
    s, t = problem.point, problem.teacher
    Sigma = None if problem.inputs.isotropic else np.array(problem.inputs.covariance)
    return hessian(s.activation.name, s.W1, s.W2, t.W1, t.W2, Sigma, trained=problem.trained, gauss_newton=gauss_newton)


def problem_loss(problem) -> float:
    """:func:`loss` of a problem."""
    s, t = problem.point, problem.teacher
    n = s.n_inputs
    Sigma = np.eye(n) if problem.inputs.isotropic else np.array(problem.inputs.covariance)
    args = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (s.W1, s.W2.ravel(), t.W1, t.W2.ravel(), Sigma))
    return float(loss(s.activation.name, *args))
