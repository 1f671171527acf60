"""What is being analysed: a :class:`Problem` (teacher, student, input law, trained blocks).

Every curvature operator, spectrum route and dynamics run takes one immutable
``Problem``. The student defaults to the teacher (the global minimum the paper
studies); the input law defaults to isotropic Gaussian inputs ``x ~ N(0, I)``;
both layers train by default. Parameters are ordered as
:meth:`nearopt.model.TwoLayerNet.parameters` (``W1`` row-major, then ``W2``);
when only some blocks train, :attr:`Problem.trained_indices` picks them out of
that vector, in the same order.

Example::

    import nearopt as no
    teacher = no.sample_teacher(8, 4, "erf", seed=0)
    problem = no.Problem(teacher)                    # student = teacher, x ~ N(0, I)
    committee = problem.replace(trained="first")     # second layer fixed
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import NearoptError, require_positive_int
from .model import TwoLayerNet

#: which parameter blocks train: both layers, the first layer only (committee machine), the second only
TRAINED_BLOCKS = ("both", "first", "second")


@dataclass(frozen=True)
class GaussianInputs:
    """Isotropic Gaussian inputs ``x ~ N(0, I_{N_i})``."""

    n_inputs: int
    name: str = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_inputs", require_positive_int(self.n_inputs, "N_i"))

    @property
    def covariance(self) -> np.ndarray:
        """``E[x x^T]``, shape ``(N_i, N_i)``."""
        return np.eye(self.n_inputs)

    @property
    def isotropic(self) -> bool:
        return True


InputLaw = GaussianInputs


@dataclass(frozen=True, eq=False)
class Problem:
    """An immutable description of a teacher-student curvature problem.

    Attributes
    ----------
    teacher : TwoLayerNet
        Labels ``y = f_teacher(x)``; ``W1`` ``(M, N_i)``, ``W2`` ``(1, M)``.
    student : TwoLayerNet
        The point ``theta`` where curvature is taken; ``W1`` ``(K, N_i)``; same
        ``N_i`` and activation as the teacher. Defaults to the teacher.
    inputs : GaussianInputs
        The input law (defaults to ``N(0, I_{N_i})``).
    trained : {"both", "first", "second"}
        Which blocks are parameters; the others stay fixed.
    """

    teacher: TwoLayerNet
    student: TwoLayerNet | None = None
    inputs: InputLaw | None = None
    trained: str = "both"

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, TwoLayerNet):
            raise NearoptError(f"teacher must be a TwoLayerNet, got {type(self.teacher).__name__}")
        student = self.teacher if self.student is None else self.student
        if not isinstance(student, TwoLayerNet):
            raise NearoptError(f"student must be a TwoLayerNet, got {type(student).__name__}")
        if student.n_inputs != self.teacher.n_inputs:
            raise NearoptError(f"student has N_i = {student.n_inputs}, teacher has N_i = {self.teacher.n_inputs}")
        if student.activation != self.teacher.activation:
            raise NearoptError(f"student activation {student.activation.name!r} differs from the teacher's {self.teacher.activation.name!r}")
        inputs = GaussianInputs(self.teacher.n_inputs) if self.inputs is None else self.inputs
        if inputs.n_inputs != self.teacher.n_inputs:
            raise NearoptError(f"the input law has dimension {inputs.n_inputs}, the networks N_i = {self.teacher.n_inputs}")
        if self.trained not in TRAINED_BLOCKS:
            raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {self.trained!r}")
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "inputs", inputs)

    # the student is always set after __post_init__; these accessors give it a non-optional type
    @property
    def point(self) -> TwoLayerNet:
        """The student network (the point where curvature is taken)."""
        assert self.student is not None
        return self.student

    @property
    def n_inputs(self) -> int:
        return self.teacher.n_inputs

    @property
    def activation(self):
        return self.teacher.activation

    @property
    def at_teacher(self) -> bool:
        """Whether the student *is* the teacher (same width and weights): the residual vanishes there."""
        s, t = self.point, self.teacher
        return s is t or (s.W1.shape == t.W1.shape and np.array_equal(s.W1, t.W1) and np.array_equal(s.W2, t.W2))

    @property
    def trained_indices(self) -> np.ndarray:
        """Indices ``(P,)`` of the trained entries in ``student.parameters()``."""
        n1, n_all = self.point.W1.size, self.point.n_params
        if self.trained == "first":
            return np.arange(n1)
        if self.trained == "second":
            return np.arange(n1, n_all)
        return np.arange(n_all)

    @property
    def n_params(self) -> int:
        """``P``: the number of trained parameters."""
        return int(self.trained_indices.size)

    def replace(self, **changes) -> "Problem":
        """A copy with some fields changed (``dataclasses.replace``; validated again)."""
        if "teacher" in changes and "student" not in changes and self.point is self.teacher:
            changes["student"] = None
        return dataclasses.replace(self, **changes)


def as_problem(problem_or_net: "Problem | TwoLayerNet") -> Problem:
    """``Problem(net)`` for a bare network (student = teacher), a problem unchanged."""
    if isinstance(problem_or_net, Problem):
        return problem_or_net
    if isinstance(problem_or_net, TwoLayerNet):
        return Problem(problem_or_net)
    raise NearoptError(f"expected a Problem or a TwoLayerNet, got {type(problem_or_net).__name__}")
