"""Two-layer teacher-student networks ``f(x) = W2 g(W1 x)`` and their inputs.

Parameter vector convention (used by every Hessian in the package)::

    theta = concat(W1.ravel(), W2.ravel())      # shape (P,), P = N_h*N_i + N_h

so entries ``a*N_i : (a+1)*N_i`` are row ``w_a`` of ``W1`` and the last ``N_h``
entries are the output weights ``v = W2.ravel()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NearoptError, real_array, require_finite, require_positive_finite, require_positive_int, require_product_finite
from . import io
from .activations import Activation, get_activation

__all__ = [
    "check_finite", "forward_torch", "INPUT_DISTRIBUTIONS", "POPULATION_SIGMAS", "require_variances_representable", "sample_inputs", "sample_teacher",
    "TwoLayerNet"
]

INPUT_DISTRIBUTIONS = ("gaussian", "uniform", "rademacher", "student-t")

# Teacher weights and inputs draw from distinct streams, so that equal seeds
# (e.g. --seed 0 --data-seed 0) never give inputs correlated with the weights.
_TEACHER_STREAM, _INPUT_STREAM = 0x7E, 0x1A


def _rng(seed: int | None, stream: int) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise NearoptError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), stream])


@dataclass(frozen=True, eq=False)
class TwoLayerNet:
    """A bias-free two-layer network with one output.

    Attributes
    ----------
    W1 : ndarray, shape (N_h, N_i)
    W2 : ndarray, shape (1, N_h)
    activation : Activation
    """

    W1: np.ndarray
    W2: np.ndarray
    activation: Activation

    def __post_init__(self):
        W1 = real_array(self.W1, "W1", finite=False)  # complex weights are refused, not cut to their real part
        W2 = real_array(self.W2, "W2", finite=False)
        if W1.ndim != 2 or min(W1.shape) < 1:
            raise NearoptError(f"W1 must have shape (N_h, N_i), got {W1.shape}")
        if W2.size != W1.shape[0]:
            raise NearoptError(f"W2 must have N_h = {W1.shape[0]} entries, got shape {W2.shape}")
        if not (np.all(np.isfinite(W1)) and np.all(np.isfinite(W2))):
            raise NearoptError("network weights contain NaN or infinite values")
        object.__setattr__(self, "W1", W1)
        object.__setattr__(self, "W2", W2.reshape(1, -1))
        object.__setattr__(self, "activation", get_activation(self.activation))

    # sizes -------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """``N_i``."""
        return self.W1.shape[1]

    @property
    def n_hidden(self) -> int:
        """``N_h``."""
        return self.W1.shape[0]

    @property
    def n_params(self) -> int:
        """``P = N_h N_i + N_h``."""
        return self.W1.size + self.W2.size

    # parameters --------------------------------------------------------
    def parameters(self) -> np.ndarray:
        """``theta`` of shape ``(P,)`` (see module docstring for the order)."""
        return np.concatenate([self.W1.ravel(), self.W2.ravel()])

    def with_parameters(self, theta: np.ndarray) -> TwoLayerNet:
        """The same architecture with parameters ``theta`` of shape ``(P,)``."""
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if theta.size != self.n_params:
            raise NearoptError(f"expected {self.n_params} parameters, got {theta.size}")
        n1 = self.W1.size
        return TwoLayerNet(theta[:n1].reshape(self.W1.shape), theta[n1:].reshape(1, -1), self.activation)

    def with_activation(self, activation: str | Activation) -> TwoLayerNet:
        return TwoLayerNet(self.W1, self.W2, get_activation(activation))

    # evaluation --------------------------------------------------------
    def forward(self, X: np.ndarray) -> np.ndarray:
        """``f(x_n)`` for inputs ``X`` of shape ``(N, N_i)``; returns ``(N,)``."""
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
        return forward_torch(torch.as_tensor(self.parameters()), Xt, self.activation, self.n_hidden).numpy()

    # persistence -------------------------------------------------------
    def save(self, path) -> None:
        """Write ``W1`` ``(N_h, N_i)`` and ``W2`` ``(1, N_h)`` to an ``.npz`` atomically."""
        io.write_npz(path, W1=self.W1, W2=self.W2)

    @classmethod
    def load(cls, path, activation: str | Activation) -> TwoLayerNet:
        """Read weights written by :meth:`save` (or any ``.npz`` with ``W1``, ``W2``)."""
        W1, W2 = io.load_weights(path)
        return cls(W1, W2, get_activation(activation))


def forward_torch(theta: torch.Tensor, X: torch.Tensor, activation: Activation, n_hidden: int) -> torch.Tensor:
    """Network output for flat parameters ``theta`` ``(P,)`` and inputs ``X`` ``(N, N_i)``.

    Differentiable in ``theta`` (used by the autodiff Hessian). Returns ``(N,)``.
    """
    n_inputs = X.shape[-1]
    W1 = theta[: n_hidden * n_inputs].reshape(n_hidden, n_inputs)
    v = theta[n_hidden * n_inputs :]
    return activation(X @ W1.T) @ v


def sample_teacher(
    n_inputs: int,
    n_hidden: int,
    activation: str | Activation = "linear",
    seed: int | None = 0,
    sigma1: float | None = None,
    sigma2: float | None = None,
) -> TwoLayerNet:
    """Random teacher with i.i.d. normal weights.

    ``W1 ~ N(0, sigma1**2)`` with default ``sigma1**2 = 1/N_i``; ``W2 ~ N(0, sigma2**2)``
    with default ``sigma2**2 = 1/N_h``. The same ``seed`` gives the same weights.
    """
    n_inputs = require_positive_int(n_inputs, "N_i")
    n_hidden = require_positive_int(n_hidden, "N_h")
    s1 = 1.0 / np.sqrt(n_inputs) if sigma1 is None else require_positive_finite(sigma1, "sigma1")
    s2 = 1.0 / np.sqrt(n_hidden) if sigma2 is None else require_positive_finite(sigma2, "sigma2")
    rng = _rng(seed, _TEACHER_STREAM)
    W1 = rng.standard_normal((n_hidden, n_inputs)) * s1
    W2 = rng.standard_normal((1, n_hidden)) * s2
    return TwoLayerNet(W1, W2, get_activation(activation))


def sample_inputs(
    n_samples: int,
    n_inputs: int,
    seed: int | None = 0,
    distribution: str = "gaussian",
    df: float = 5.0,
    *,
    factor: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, N_i)`` i.i.d. inputs with zero mean and unit variance per coordinate.

    ``distribution``: ``gaussian`` (default, ``N(0, 1)``), ``uniform`` (on
    ``[-sqrt 3, sqrt 3]``), ``rademacher`` (``+-1``) or ``student-t`` (``df`` degrees
    of freedom, rescaled to unit variance; needs ``df > 2``).

    ``factor`` ``L`` ``(N_i, N_i)`` (Gaussian only): correlated inputs ``x = L z``,
    ``z ~ N(0, I)``, i.e. ``x ~ N(0, L L^T)``; rows ``X = Z L^T`` from the same
    draws ``Z`` as without it, so ``factor = I`` gives the same inputs. See
    :meth:`nearopt.model.problem.GaussianInputs.sample` for a validated covariance.
    """
    n_samples = require_positive_int(n_samples, "number of samples")
    n_inputs = require_positive_int(n_inputs, "N_i")
    rng = _rng(seed, _INPUT_STREAM)
    shape = (n_samples, n_inputs)
    if factor is not None:
        L = np.asarray(factor, dtype=np.float64)
        if distribution != "gaussian":
            raise NearoptError(f"a covariance factor needs Gaussian inputs, got distribution {distribution!r}")
        if L.shape != (n_inputs, n_inputs) or not np.all(np.isfinite(L)):
            raise NearoptError(f"the covariance factor must be a finite ({n_inputs}, {n_inputs}) array, got shape {L.shape}")
        return rng.standard_normal(shape) @ L.T
    if distribution == "gaussian":
        return rng.standard_normal(shape)
    if distribution == "uniform":
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape)
    if distribution == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=shape)
    if distribution == "student-t":
        if not df > 2:
            raise NearoptError(f"student-t inputs need df > 2 for a finite variance, got {df}")
        return rng.standard_t(df, shape) * np.sqrt((df - 2.0) / df)
    raise NearoptError(f"unknown input distribution {distribution!r}; choose from {', '.join(INPUT_DISTRIBUTIONS)}")


#: population checks evaluate g, g' out to this many standard deviations of the pre-activations
POPULATION_SIGMAS = 10.0


def check_finite(net: TwoLayerNet, X: np.ndarray | None = None) -> None:
    """Refuse inputs on which the activation or its derivative overflow float64 (before any Hessian is built).

    Every batch Hessian is assembled from ``g(W1 x)`` and ``g'(W1 x)``; if either
    is NaN or infinite the spectrum is meaningless, so say which input caused it.
    For the population (``X is None``) the pre-activations are Gaussian with
    variance ``|w_i|^2``; ``g`` and ``g'`` are checked out to
    :data:`POPULATION_SIGMAS` standard deviations, where the expectations'
    quadrature reaches.
    """
    W1 = torch.as_tensor(net.W1, dtype=torch.float64)
    if X is None:
        sd = float(W1.square().sum(1).max().sqrt())
        z = torch.linspace(-POPULATION_SIGMAS, POPULATION_SIGMAS, 201, dtype=torch.float64) * sd
        what = f"Gaussian pre-activations (std up to {sd:.3g}, checked to {POPULATION_SIGMAS:g} std)"
    else:
        z = torch.as_tensor(X, dtype=torch.float64) @ W1.T  # (N, N_h)
        what = "the inputs"
    zmax = float(z.abs().max()) if z.numel() else 0.0
    cause = f"activation {net.activation.name} on {what}, |W1 x| up to {zmax:.3g}; use smaller inputs or weights, or another activation"
    require_finite(z, "pre-activations W1 x", "the inputs or weights are too large for float64")
    with torch.no_grad():
        g, dg = net.activation(z), net.activation.derivative(z)
    require_finite(g, "activation g(W1 x)", cause)
    require_finite(dg, "derivative g'(W1 x)", cause)
    xmax = POPULATION_SIGMAS if X is None else float(np.sqrt(np.square(X).sum(1).max())) if X.size else 0.0
    feature = max(float(g.abs().max()), float(dg.abs().max()) * xmax) if z.numel() else 0.0
    require_product_finite({"N_h": net.n_hidden, "max |W2|": float(np.abs(net.W2).max()), "max(|g|, |g'| |x|)": feature},
                           "the output's square and the Hessian entries", "use smaller weight scales (--sigma1/--sigma2), weights or inputs", power=2)
    if X is None:
        require_variances_representable(net.W1)


def require_variances_representable(W1: np.ndarray) -> None:
    """Refuse first-layer rows ``(N_h, N_i)`` whose squared norm, the variance of a Gaussian pre-activation, underflows float64.

    The population moments are functions of these variances; a nonzero row below
    ``sqrt(tiny)`` (about ``1.5e-154``) has a variance of 0 or a subnormal one, so its
    unit would look dead. The batch route (``W1 x`` itself) has no such limit.
    """
    W1 = np.asarray(W1, dtype=np.float64)
    peak = np.abs(W1).max(1)
    norms = peak * np.sqrt(np.square(W1 / np.where(peak > 0, peak, 1.0)[:, None]).sum(1))  # no underflow in the squares
    small = (norms > 0) & (norms < np.sqrt(np.finfo(np.float64).tiny))
    if np.any(small):
        a = int(np.argmax(small))
        raise NearoptError(f"first-layer row {a} has norm {norms[a]:.3g}: its pre-activation variance |w|^2 underflows float64 "
                           f"(norms below {np.sqrt(np.finfo(np.float64).tiny):.3g}), so the population moments cannot be formed; "
                           "rescale the weights (a batch of inputs needs no variance)")
