"""Deep linear networks ``f(x) = W_L ⋯ W_1 x`` and their teacher-student problems.

Widths ``n_0 = N_i, n_1, ..., n_L = K``: layer ``l`` is ``W_l`` of shape ``(n_l, n_{l-1})``,
no biases, ``K`` outputs, any depth ``L >= 1``. Parameter vector convention::

    theta = concat(W1.ravel(), W2.ravel(), ..., WL.ravel())    # each row-major; P = sum_l n_l n_{l-1}

The loss of a student against a teacher under inputs ``x ~ N(0, Sigma)`` is
``1/2 E|f_s(x) - f_t(x)|^2`` summed over the outputs,
``= 1/2 tr((A - T) Sigma (A - T)^T)`` with ``A = W_L ... W_1`` and ``T`` the teacher's
end-to-end map (``docs/deep_linear.md``). Weight files hold ``W1 ... WL`` (``.npz``; a PyTorch
state dict of bias-free Linear layers in a ``.pt``/``.pth`` reads as one, :mod:`nearopt.model.torch_state`).

Example::

    from nearopt.model.deep_linear import DeepLinearProblem, sample_deep_linear
    teacher = sample_deep_linear((6, 4, 3, 2), seed=0)      # L = 3, K = 2
    problem = DeepLinearProblem(teacher)                    # student = teacher, x ~ N(0, I)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NearoptError, real_array, require_positive_finite, require_positive_int
from . import io
from .problem import GaussianInputs

__all__ = ["DeepLinearNet", "DeepLinearProblem", "deep_linear_depth", "is_deep_linear_file", "sample_deep_linear", "TWO_LAYER_KEYS"]

#: the keys of a two-layer weight file (read as :class:`~nearopt.model.network.TwoLayerNet`, never as a deep net)
TWO_LAYER_KEYS = ("W1", "W2")
_LAYER_KEY = re.compile(r"^W([1-9][0-9]*)$")
#: seed stream of deep linear weights (distinct from the two-layer teacher's and the inputs')
_DEEP_STREAM = 0xDE


@dataclass(frozen=True, eq=False)
class DeepLinearNet:
    """A bias-free deep linear network ``f(x) = W_L ⋯ W_1 x``.

    Attributes
    ----------
    weights : tuple of ndarray
        ``(W_1, ..., W_L)``, ``W_l`` of shape ``(n_l, n_{l-1})``; float64, read-only copies.

    Validation (one :class:`~nearopt.errors.NearoptError` each): at least one layer;
    each layer a real 2-D array with both sides ``>= 1``; finite values; consecutive
    shapes chain (``W_{l+1}`` has ``n_l`` columns).
    """

    weights: tuple[np.ndarray, ...]

    def __post_init__(self):
        layers = tuple(self.weights) if isinstance(self.weights, (tuple, list)) else None
        if not layers:
            raise NearoptError("a deep linear network needs at least one layer: weights (W1, ..., WL) with L >= 1")
        out = []
        for ell, W in enumerate(layers, start=1):
            W = np.array(real_array(W, f"W{ell}", finite=False), dtype=np.float64)
            if W.ndim != 2 or min(W.shape) < 1:
                raise NearoptError(f"W{ell} must be a 2-D array (n_{ell}, n_{ell - 1}) with both sides >= 1, got shape {W.shape}")
            if not np.all(np.isfinite(W)):
                raise NearoptError(f"W{ell} contains NaN or infinite values")
            if out and W.shape[1] != out[-1].shape[0]:
                raise NearoptError(f"W{ell} has {W.shape[1]} columns but W{ell - 1} has {out[-1].shape[0]} rows: shapes must chain (W{ell} is (n_{ell}, n_{ell - 1}))")
            W.setflags(write=False)
            out.append(W)
        object.__setattr__(self, "weights", tuple(out))

    # sizes -------------------------------------------------------------
    @property
    def depth(self) -> int:
        """``L``: the number of weight matrices."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_L)``: inputs, hidden widths, outputs."""
        return (int(self.weights[0].shape[1]), *(int(W.shape[0]) for W in self.weights))

    @property
    def n_inputs(self) -> int:
        """``n_0 = N_i``."""
        return self.widths[0]

    @property
    def n_outputs(self) -> int:
        """``n_L = K``."""
        return self.widths[-1]

    @property
    def n_params(self) -> int:
        """``P = sum_l n_l n_{l-1}``."""
        return sum(W.size for W in self.weights)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """``((n_1, n_0), ..., (n_L, n_{L-1}))``."""
        return tuple((int(W.shape[0]), int(W.shape[1])) for W in self.weights)

    # parameters --------------------------------------------------------
    def parameters(self) -> np.ndarray:
        """``theta`` of shape ``(P,)``: ``W1, ..., WL``, each row-major."""
        return np.concatenate([W.ravel() for W in self.weights])

    def with_parameters(self, theta) -> DeepLinearNet:
        """The same widths with parameters ``theta`` ``(P,)``."""
        theta = real_array(theta, "parameters").ravel()
        if theta.size != self.n_params:
            raise NearoptError(f"expected {self.n_params} parameters, got {theta.size}")
        ends = np.cumsum([0, *(W.size for W in self.weights)])
        return DeepLinearNet(tuple(theta[a:b].reshape(s) for a, b, s in zip(ends[:-1], ends[1:], self.shapes, strict=True)))

    # evaluation --------------------------------------------------------
    def end_to_end(self) -> np.ndarray:
        """``A = W_L ... W_1``, shape ``(K, N_i)``."""
        A = self.weights[0]
        for W in self.weights[1:]:
            A = W @ A
        return A

    def forward(self, X) -> np.ndarray:
        """Outputs ``(N, K)`` for inputs ``X`` ``(N, N_i)`` (layer by layer: ``X W_1^T ... W_L^T``)."""
        X = real_array(X, "inputs")
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise NearoptError(f"inputs must have shape (N, {self.n_inputs}), got {X.shape}")
        for W in self.weights:
            X = X @ W.T
        return X

    # persistence -------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``W1 ... WL`` to an ``.npz`` atomically (:func:`nearopt.model.io.write_npz`)."""
        return io.write_npz(path, **{f"W{ell}": W for ell, W in enumerate(self.weights, start=1)})

    @classmethod
    def load(cls, path: str | os.PathLike, role: str = "teacher") -> DeepLinearNet:
        """Read a file with exactly ``W1 ... WL`` (consecutive, nothing else); one error line otherwise."""
        path = Path(path)
        arrays = io.read_arrays(path, f"{role} file")
        depth = _layer_count(arrays, f"{role} file {path}")
        try:
            return cls(tuple(arrays[f"W{ell}"] for ell in range(1, depth + 1)))
        except NearoptError as exc:
            raise NearoptError(f"{role} file {path}: {exc}") from None


def _layer_count(arrays: dict[str, np.ndarray], where: str) -> int:
    """``L`` of a file whose keys are exactly ``W1 ... WL``; one error line otherwise."""
    keys = list(arrays)
    other = [k for k in keys if not _LAYER_KEY.match(k)]
    if other:
        raise NearoptError(f"{where} has array(s) {', '.join(other)} that a deep linear network does not have: give W1 ... WL only (no biases)")
    numbers = sorted(int(_LAYER_KEY.match(k).group(1)) for k in keys)  # type: ignore[union-attr]  # every key matched above
    if numbers != list(range(1, len(numbers) + 1)):
        raise NearoptError(f"{where}: layers must be W1 ... WL without gaps, got {', '.join(f'W{n}' for n in numbers) or 'none'}")
    return len(numbers)


def deep_linear_depth(path: str | os.PathLike, role: str = "teacher") -> int | None:
    """``L`` when the ``.npz`` at ``path`` is a deep linear weight file, else ``None``.

    A deep file holds only ``W1 ... WL`` with ``L != 2``, or any file with ``W3``;
    a file with exactly ``W1, W2`` (or with other arrays and no ``W3``) is left to the
    two-layer loader. A missing or unreadable file raises one error line.
    """
    arrays = io.read_arrays(Path(path), f"{role} file")
    numbered = [k for k in arrays if _LAYER_KEY.match(k)]
    if "W3" in arrays or (numbered and len(numbered) == len(arrays) and set(arrays) != set(TWO_LAYER_KEYS)):
        return _layer_count(arrays, f"{role} file {path}")
    return None


def is_deep_linear_file(path: str | os.PathLike, role: str = "teacher") -> bool:
    """Whether ``path`` holds a deep linear network (:func:`deep_linear_depth`)."""
    return deep_linear_depth(path, role) is not None


def sample_deep_linear(widths, seed: int = 0, scale: float | None = None) -> DeepLinearNet:
    """A random deep linear network with widths ``(n_0, ..., n_L)``, seeded.

    ``W_l`` has i.i.d. ``N(0, s^2)`` entries with ``s = scale``, default
    ``1 / sqrt(n_{l-1})`` (fan-in), so every layer keeps the variance of its input.
    """
    try:
        sizes = [require_positive_int(n, "a width") for n in widths]
    except TypeError:
        raise NearoptError(f"widths must be a sequence of positive integers (n_0, ..., n_L), got {widths!r}") from None
    if len(sizes) < 2:
        raise NearoptError(f"widths must list n_0, ..., n_L with L >= 1 (at least two numbers), got {list(widths)}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise NearoptError(f"seed must be a non-negative integer, got {seed!r}")
    s = None if scale is None else require_positive_finite(scale, "scale")
    rng = np.random.default_rng([int(seed), _DEEP_STREAM])
    return DeepLinearNet(tuple(rng.standard_normal((b, a)) * (s if s is not None else 1.0 / math.sqrt(a)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)))


@dataclass(frozen=True, eq=False)
class DeepLinearProblem:
    """A deep linear teacher-student problem: teacher, student point and input law.

    The student defaults to the teacher (a global minimum), the inputs to ``N(0, I)``.
    The student may have other hidden widths and another depth; it must share ``N_i``
    and ``K`` with the teacher, which enters only through its end-to-end map ``T``.
    """

    teacher: DeepLinearNet
    student: DeepLinearNet = None  # type: ignore[assignment]  # None: the teacher
    inputs: GaussianInputs = None  # type: ignore[assignment]  # None: N(0, I)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, DeepLinearNet):
            raise NearoptError(f"teacher must be a DeepLinearNet, got {type(self.teacher).__name__}")
        student = self.teacher if self.student is None else self.student
        if not isinstance(student, DeepLinearNet):
            raise NearoptError(f"student must be a DeepLinearNet, got {type(student).__name__}")
        t, s = self.teacher, student
        if (s.n_inputs, s.n_outputs) != (t.n_inputs, t.n_outputs):
            raise NearoptError(f"student has N_i = {s.n_inputs}, K = {s.n_outputs}; the teacher N_i = {t.n_inputs}, K = {t.n_outputs}")
        inputs = GaussianInputs(t.n_inputs) if self.inputs is None else self.inputs
        if not isinstance(inputs, GaussianInputs):
            raise NearoptError(f"inputs must be GaussianInputs, got {type(inputs).__name__}")
        if inputs.n_inputs != t.n_inputs:
            raise NearoptError(f"the input law has dimension {inputs.n_inputs}, the networks N_i = {t.n_inputs}")
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "inputs", inputs)

    @property
    def point(self) -> DeepLinearNet:
        """The student (where curvature is taken)."""
        return self.student

    @property
    def n_params(self) -> int:
        return self.student.n_params

    @property
    def at_teacher(self) -> bool:
        """Whether the student *is* the teacher (same widths and weights)."""
        s, t = self.student, self.teacher
        return s is t or (s.shapes == t.shapes and all(np.array_equal(a, b) for a, b in zip(s.weights, t.weights, strict=True)))

    @property
    def target(self) -> np.ndarray:
        """``T``: the teacher's end-to-end map ``(K, N_i)``."""
        return self.teacher.end_to_end()
