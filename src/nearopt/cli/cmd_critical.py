"""``nearopt critical``: converge to a critical point of the exact population loss and classify it.

Exit status 1 (after the JSON) when the search ends without a critical point
(``"not converged"``), with ``--index K`` at a point of another index, or, with
``--avoid-trivial``, only at the trivial point ``f = 0``. ``--gtol`` must be small against the gradient's own scale
(:data:`nearopt.landscape.critical.GTOL_MAX_FRACTION`): a larger one would call any point critical. A point
accepted by a ``--gtol`` above the rounding-level default is classified with a
warning and ``"classification_note"``: near a degenerate minimum the smallest
eigenvalues, hence the class, are only right at the rounding level.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import NearoptError, ResultFailure
from ..landscape.certificate import SUPPORTED, certify, require_supported
from ..landscape.critical import GTOL_MAX_FRACTION, RESTARTS, check_gtol, committee_start, committee_teacher, find_critical_point, require_classification_memory
from ..model import io
from ..model.problem import Problem
from .cmd_spectrum import add_student_args, student_from_args, teacher_activation, trained_value
from .common import add_network_args, emit_json, network_from_args, nonneg_float, nonneg_int, positive_float, positive_int

__all__ = ["COMMAND", "ORDER", "problem_from_args", "register", "run"]

COMMAND = "critical"
ORDER = 25


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="converge to a critical point of the population loss and classify it (index, zero modes)",
        description="From a student point (default: a random student), descend on the exact population loss "
        "(x ~ N(0, I)), polish with Newton on the gradient to a gradient norm near machine precision, and "
        "classify the point by the exact Hessian spectrum: global minimum, spurious local minimum, "
        "degenerate critical point, saddle, local maximum. Prints JSON.",
    )
    add_network_args(p, activation_default="relu")
    p.add_argument("--committee", type=positive_int, metavar="K",
                   help="teacher: the orthonormal committee machine sum_i g(x_i), W1 = I (K, N_i), W2 = 1 (N_i = --ni, default K); "
                   "the student's second layer is fixed to ones and --trained defaults to first")
    add_student_args(p)
    p.set_defaults(trained=None)
    g = p.add_argument_group("search")
    g.add_argument("--descent", choices=("gd", "trust", "newton"), default=None,
                   help="gd: gradient descent then Newton (default for W2 g(W1 x)); trust: SciPy trust-exact then Newton (default with biases, "
                        "several outputs or --teacher-activation); newton: Newton only (finds saddles too)")
    g.add_argument("--lr", type=positive_float, help="gradient-descent step (default 1/lambda_max of the Hessian at the start)")
    g.add_argument("--max-steps", type=positive_int, default=20000, help="most descent steps (default 20000)")
    g.add_argument("--descent-gtol", type=positive_float, default=1e-6, help="gradient norm that ends the descent (default 1e-6)")
    g.add_argument("--gtol", type=nonneg_float,
                   help="gradient norm counted as zero (default 1e3 (K+M) eps E[f_t^2]^1/2 max(1, |theta|); "
                   f"at most {GTOL_MAX_FRACTION:g} E[f_t^2]^1/2 max(1, |theta|) at the start)")
    g.add_argument("--index", type=nonneg_int, metavar="K",
                   help="search for a critical point of index K (eigenvector following: ascend along the K lowest Hessian modes, descend "
                   "along the others, at most --max-steps steps; then Newton); fails when the end point's index differs")
    g.add_argument("--newton-iter", type=positive_int, default=100, metavar="N", help="most Newton iterations (default 100)")
    g.add_argument("--avoid-trivial", action="store_true",
                   help="when the search ends at the trivial critical point f = 0 (v = 0), search again from seeded perturbations of the start "
                   "(seed --student-seed + i); fails when every restart ends there too")
    g.add_argument("--restarts", type=positive_int, default=RESTARTS, metavar="R", help=f"most restarts of --avoid-trivial (default {RESTARTS})")
    p.add_argument("--certify", action="store_true",
                   help="certify the end point as a strict local minimum (Newton-Kantorovich with a derived bound on the third "
                   f"derivatives; {', '.join(SUPPORTED)}): adds 'certificate' to the JSON")
    p.add_argument("--track", type=positive_int, metavar="K", default=None,
                   help="the curvature at the start and at the end point: the K largest and K smallest eigenvalues, inertia, loss and the "
                   "eigenvectors' overlap with the teacher's rows; adds 'curvature' to the JSON")
    p.add_argument("--save-point", metavar="P.npz", help="write the critical point (W1, b1, W2, b2 as the network has them, teacher, eigenvalues, classification) to this .npz")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON here")
    p.add_argument("--json", action="store_true", help="print JSON (the command's only output format; accepted for scripts that say so)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (a line at most every 10 s in long descents)")
    p.set_defaults(func=run)


def problem_from_args(args) -> Problem:
    """Teacher (random, file or committee), student and trained blocks."""
    if args.committee is not None:
        if args.teacher or args.nh is not None:
            raise NearoptError("--committee builds the teacher: do not give --teacher or --nh")
        teacher = committee_teacher(args.committee, args.ni, args.activation)
    else:
        teacher = teacher_activation(args, network_from_args(args))
    trained = trained_value(args.trained) if args.trained is not None else ("first" if args.committee is not None else "both")
    if args.committee is not None and not (args.student or args.split or args.dead):
        start = committee_start(teacher, args.student_width, seed=args.student_seed)
        return start.replace(trained=trained)
    student = student_from_args(args, teacher)
    if student is None:
        raise NearoptError("give a start: --student S.npz, --student-width K (random student) or --split/--dead (a manifold point)")
    return Problem(teacher, student=student, trained=trained)


def run(args) -> int:
    if args.save_point:
        io.check_output_path(args.save_point, suffix=".npz")
    problem = problem_from_args(args)
    check_gtol(args.gtol, problem)
    require_classification_memory(problem)
    if args.certify:
        require_supported(problem.point.activation.name, "--certify")
    if args.certify and not problem.inputs.isotropic:
        raise NearoptError("--certify needs isotropic inputs x ~ N(0, I)")
    if args.save_student:
        problem.point.save(args.save_student)
    cp = find_critical_point(problem, descent=args.descent, lr=args.lr, max_steps=args.max_steps, descent_gtol=args.descent_gtol, gtol=args.gtol,
                             newton_iter=args.newton_iter, avoid_trivial=args.avoid_trivial, restarts=args.restarts, seed=args.student_seed,
                             target_index=args.index, track=args.track,
                             progress=not args.quiet)
    if args.save_point:
        cp.save(args.save_point)
    out = cp.to_dict()
    for note in cp.notes():
        warnings.warn(note + ("; leave --gtol out for a reliable class" if "rounding-level" in note else ""), stacklevel=1)
    out["eigenvalues"] = np.asarray(cp.eigenvalues).tolist()
    if args.certify:
        out["certificate"] = certify(cp).to_dict()
    emit_json(out, args.out)
    if not cp.converged:
        raise ResultFailure(f"not converged: gradient norm {cp.gradient_norm:.3g} > tolerance {cp.gradient_tolerance:.3g} after "
                            f"{cp.descent_steps} descent steps and {max(len(cp.newton_history) - 1, 0)} Newton iterations; "
                            f"try more --max-steps, --newton-iter (now {args.newton_iter}) or --descent trust")
    if args.index is not None and cp.index != args.index:
        raise ResultFailure(f"the search ended at a critical point of index {cp.index}, not the --index {args.index} asked; try another "
                            "--student-seed or more --max-steps")
    if args.avoid_trivial and cp.trivial:
        raise ResultFailure(f"no non-trivial critical point: the search and all {cp.restarts} restarts (--restarts) ended at the trivial point f = 0")
    return 0

