"""Two-layer teacher-student networks ``f(x) = W2 g(W1 x + b1) + b2`` and their inputs.

Parameter vector convention (used by every Hessian in the package)::

    theta = concat(W1.ravel(), b1, W2.ravel(), b2)      # shape (P,)

with ``W1`` ``(N_h, N_i)`` row-major, ``W2`` ``(M, N_h)`` row-major (``M`` outputs) and the
biases ``b1`` ``(N_h,)``, ``b2`` ``(M,)`` present only when the network has them. For the
network of the paper (no biases, one output) ``P = N_h N_i + N_h``: entries
``a*N_i : (a+1)*N_i`` are row ``w_a`` of ``W1`` and the last ``N_h`` entries are the output
weights ``v = W2.ravel()``. :meth:`TwoLayerNet.blocks` names the slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NearoptError, real_array, require_finite, require_positive_finite, require_positive_int, require_product_finite
from . import io
from .activations import Activation, get_activation

__all__ = [
    "BLOCKS", "CAPABILITIES", "capability_error", "check_finite", "forward_torch", "network_output", "require_plain", "INPUT_DISTRIBUTIONS", "POPULATION_SIGMAS", "require_variances_representable", "sample_inputs", "sample_teacher",
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


#: the parameter blocks of a two-layer network, in parameter order
BLOCKS = ("W1", "b1", "W2", "b2")


@dataclass(frozen=True, eq=False)
class TwoLayerNet:
    """A two-layer network ``f(x) = W2 g(W1 x + b1) + b2``; biases optional, ``M >= 1`` outputs.

    Attributes
    ----------
    W1 : ndarray, shape (N_h, N_i)
    W2 : ndarray, shape (M, N_h)
        ``(N_h,)`` is taken as one output ``(1, N_h)``.
    activation : Activation
    b1 : ndarray, shape (N_h,), optional
        First-layer biases (``None``: the layer has none; a zero array is a trainable bias at 0).
    b2 : ndarray, shape (M,), optional
        Output biases.

    The network of the paper has no biases and one output (:attr:`is_plain`); routes that
    cover only that network say so with one message (:func:`require_plain`).
    """

    W1: np.ndarray
    W2: np.ndarray
    activation: Activation
    b1: np.ndarray | None = None
    b2: np.ndarray | None = None

    def __post_init__(self):
        W1 = real_array(self.W1, "W1", finite=False)  # complex weights are refused, not cut to their real part
        W2 = real_array(self.W2, "W2", finite=False)
        if W1.ndim != 2 or min(W1.shape) < 1:
            raise NearoptError(f"W1 must have shape (N_h, N_i), got {W1.shape}")
        n_h = W1.shape[0]
        if W2.ndim <= 1 and W2.size == n_h:
            W2 = W2.reshape(1, n_h)
        if W2.ndim != 2 or W2.shape[1] != n_h or W2.shape[0] < 1:
            raise NearoptError(f"W2 must have shape (M, {n_h}) for N_h = {n_h} hidden units, got shape {W2.shape}")
        arrays = [W1, W2]
        for name, size in (("b1", n_h), ("b2", W2.shape[0])):
            b = getattr(self, name)
            if b is not None:
                b = real_array(b, name, finite=False).reshape(-1)
                if b.size != size:
                    raise NearoptError(f"{name} must have {size} entries, got {b.size}")
                object.__setattr__(self, name, b)
                arrays.append(b)
        if not all(np.all(np.isfinite(x)) for x in arrays):
            raise NearoptError("network weights contain NaN or infinite values")
        object.__setattr__(self, "W1", W1)
        object.__setattr__(self, "W2", W2)
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
    def n_outputs(self) -> int:
        """``M``."""
        return self.W2.shape[0]

    @property
    def n_params(self) -> int:
        """``P = N_h N_i + M N_h`` (``+ N_h`` with ``b1``, ``+ M`` with ``b2``)."""
        return sum(stop - start for start, stop in self.blocks().values())

    @property
    def is_plain(self) -> bool:
        """The network of the paper: no biases, one output."""
        return self.b1 is None and self.b2 is None and self.n_outputs == 1

    def features(self) -> list[str]:
        """What the network has beyond the paper's ``W2 g(W1 x)``: ``"b1"``, ``"b2"``, ``"outputs"``."""
        out = [name for name in ("b1", "b2") if getattr(self, name) is not None]
        return out + (["outputs"] if self.n_outputs > 1 else [])

    def blocks(self) -> dict[str, tuple[int, int]]:
        """``{name: (start, stop)}`` of each parameter block present, in the order of :data:`BLOCKS`."""
        sizes = {"W1": self.W1.size, "b1": 0 if self.b1 is None else self.n_hidden, "W2": self.W2.size, "b2": 0 if self.b2 is None else self.n_outputs}
        out, start = {}, 0
        for name in BLOCKS:
            if sizes[name]:
                out[name] = (start, start + sizes[name])
                start += sizes[name]
        return out

    # parameters --------------------------------------------------------
    def parameters(self) -> np.ndarray:
        """``theta`` of shape ``(P,)`` (see module docstring for the order)."""
        parts = [self.W1.ravel(), self.b1, self.W2.ravel(), self.b2]
        return np.concatenate([p for p in parts if p is not None])

    def arrays(self) -> dict[str, np.ndarray]:
        """The weight arrays present, by name (what :meth:`save` writes)."""
        out = {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}
        return {k: v for k, v in out.items() if v is not None}

    def unpack(self, theta):
        """``(W1, b1, W2, b2)`` views of a parameter vector ``(P,)`` (numpy or torch); absent biases are ``None``."""
        bl = self.blocks()
        shapes = {"W1": self.W1.shape, "b1": (self.n_hidden,), "W2": self.W2.shape, "b2": (self.n_outputs,)}
        return tuple(theta[bl[k][0]:bl[k][1]].reshape(shapes[k]) if k in bl else None for k in BLOCKS)

    def with_parameters(self, theta: np.ndarray) -> TwoLayerNet:
        """The same architecture with parameters ``theta`` of shape ``(P,)``."""
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if theta.size != self.n_params:
            raise NearoptError(f"expected {self.n_params} parameters, got {theta.size}")
        W1, b1, W2, b2 = self.unpack(theta)
        return TwoLayerNet(W1, W2, self.activation, b1, b2)

    def with_activation(self, activation: str | Activation) -> TwoLayerNet:
        return TwoLayerNet(self.W1, self.W2, get_activation(activation), self.b1, self.b2)

    # evaluation --------------------------------------------------------
    def forward(self, X: np.ndarray) -> np.ndarray:
        """``f(x_n)`` for inputs ``X`` of shape ``(N, N_i)``: ``(N,)`` for one output, ``(N, M)`` for several."""
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
        out = network_output(self, torch.as_tensor(self.parameters()), Xt)
        return out[:, 0].numpy() if self.n_outputs == 1 else out.numpy()

    # persistence -------------------------------------------------------
    def save(self, path) -> None:
        """Write ``W1`` ``(N_h, N_i)``, ``W2`` ``(M, N_h)`` (and ``b1``, ``b2`` when present) to an ``.npz`` atomically."""
        io.write_npz(path, **self.arrays())

    @classmethod
    def load(cls, path, activation: str | Activation, role: str = "teacher") -> TwoLayerNet:
        """Read weights written by :meth:`save` (any ``.npz`` with ``W1``, ``W2`` and optionally ``b1``, ``b2``)."""
        arrays = io.load_weights(path, role=role)
        return cls(arrays["W1"], arrays["W2"], get_activation(activation), arrays.get("b1"), arrays.get("b2"))


def network_output(net: TwoLayerNet, theta: torch.Tensor, X: torch.Tensor, activation: Activation | None = None) -> torch.Tensor:
    """``f(x_n)`` ``(N, M)`` of ``net``'s architecture at parameters ``theta`` ``(P,)``; differentiable in ``theta``.

    ``activation`` overrides the network's (a student of another activation uses its own).
    """
    W1, b1, W2, b2 = net.unpack(theta)
    z = X @ W1.T
    if b1 is not None:
        z = z + b1
    out = (activation or net.activation)(z) @ W2.T
    return out if b2 is None else out + b2


#: what each route takes beyond the paper's ``W2 g(W1 x)`` (one output, no biases, one activation)
CAPABILITIES = {
    "the population spectrum": "biases, several outputs, a teacher of another activation, trained block lists; smooth activations and ReLU",
    "the batch spectrum": "biases, several outputs, a teacher of another activation, trained block lists; any activation",
    "critical points": "biases, several outputs, a teacher of another activation; smooth activations and ReLU",
    "deep linear networks (spectrum, rank, GD)": "W_L ... W_1 x of any depth, widths and outputs",
}


def require_plain(net: TwoLayerNet, route: str) -> None:
    """Refuse a network with biases or several outputs on a route that covers only ``W2 g(W1 x)`` with one output.

    One message for every such route: what the network has, and which routes take it
    (:data:`CAPABILITIES`, ``docs/architectures.md``).
    """
    if net.is_plain:
        return
    raise capability_error(route, "with one output and no biases", "network", net.features())


def capability_error(route: str, covers: str, what: str, features: list[str]) -> NearoptError:
    """The one refusal of a route that covers only the paper's network: what it covers, what ``what`` has, and what takes it."""
    return NearoptError(f"{route} covers f(x) = W2 g(W1 x) {covers}; this {what} has {', '.join(features)} "
                        f"(what takes it: {', '.join(CAPABILITIES)}; docs/architectures.md, 'What each route takes')")


def forward_torch(theta: torch.Tensor, X: torch.Tensor, activation: Activation, n_hidden: int) -> torch.Tensor:
    """Network output for flat parameters ``theta`` ``(P,)`` and inputs ``X`` ``(N, N_i)``.

    Differentiable in ``theta`` (used by the autodiff Hessian). Returns ``(N,)``.
    """
    n_inputs = X.shape[-1]
    W1 = theta[: n_hidden * n_inputs].reshape(n_hidden, n_inputs)
    v = theta[n_hidden * n_inputs :]
    return activation(X @ W1.T) @ v  # the paper's network; network_output covers biases and outputs


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
        shift = 0.0 if net.b1 is None else float(np.abs(net.b1).max())
        z = torch.linspace(-POPULATION_SIGMAS, POPULATION_SIGMAS, 201, dtype=torch.float64) * sd
        z = torch.cat([z - shift, z + shift]) if shift else z
        what = f"Gaussian pre-activations (std up to {sd:.3g}, checked to {POPULATION_SIGMAS:g} std)"
    else:
        z = torch.as_tensor(X, dtype=torch.float64) @ W1.T  # (N, N_h)
        if net.b1 is not None:
            z = z + torch.as_tensor(net.b1)
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
