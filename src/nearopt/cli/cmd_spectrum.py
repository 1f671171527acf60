"""``nearopt spectrum``: eigenvalues and rank of the Hessian at the optimum."""

from __future__ import annotations

import sys

import numpy as np

from ..curvature import BATCH_METHODS, batch_spectrum
from ..curvature.deep_linear import DeepLinearHessian
from ..curvature.population import PopulationHessian
from ..curvature.rank_measurement import compare_with_population
from ..errors import NearoptError, require_finite
from ..figures.spectrum import check_plot_path, plot_spectrum
from ..landscape.critical import load_point
from ..landscape.manifold import add_dead_units, load_student, random_student, split_unit
from ..model import io
from ..model.activations import get_activation
from ..model.deep_linear import DeepLinearNet, DeepLinearProblem, deep_linear_depth
from ..model.network import TwoLayerNet, check_finite
from ..model.problem import GaussianInputs, Problem
from ..policy import RankPolicy
from ..spectra import Spectrum, SpectrumRequest
from .common import (
    add_data_args,
    add_input_cov_arg,
    add_network_args,
    emit_json,
    input_law_from_args,
    inputs_from_args,
    network_from_args,
    numerics,
    positive_float,
    positive_int,
    require_dense_memory,
)

__all__ = [
    "add_student_args", "BATCH_ALTERNATIVES", "COMMAND", "compute", "deep_linear_spectrum", "DEEP_LINEAR_REFUSED", "ORDER", "POPULATION_METHODS",
    "register", "run", "student_from_args", "student_width", "teacher_activation", "TRAINED_ALIASES", "trained_value"
]

COMMAND = "spectrum"
ORDER = 20

POPULATION_METHODS = ("auto", "dense", "structured", "factor", "lanczos", "slq")


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="eigenvalues and rank of the Hessian at the optimum",
        description="Hessian of the loss at the optimum (student = teacher): for a batch of N inputs "
        "(--samples/--inputs) or in the population limit (--population). Prints a summary, or all P "
        "eigenvalues with --json.",
    )
    add_network_args(p)
    add_data_args(p)
    add_input_cov_arg(p)
    p.add_argument(
        "--method",
        default="auto",
        help="batch: auto (default: jacobian-svd up to P=4000, else gauss-newton), jacobian-svd "
        "(eigenvalues from singular values of J; most accurate), gauss-newton (eigvalsh of J^T J/N; "
        "fastest, GPU) or autodiff (eigvalsh of the torch.func Hessian); population: auto (default, cheapest exact route), "
        "dense, structured (exact, never forms the P x P matrix), lanczos (the --k largest or smallest nonzero "
        "eigenvalues, matrix-free, to a stated tolerance) or slq (the density by stochastic Lanczos quadrature, with an error band)",
    )
    p.add_argument("--k", type=positive_int, default=None, help="how many eigenvalues at the --which end (default 20; at most P)")
    it = p.add_argument_group("matrix-free population routes (--method lanczos / slq; docs/scale.md)")
    it.add_argument("--which", choices=("all", "largest", "smallest"), default=None,
                    help="all eigenvalues (default; --method lanczos: largest), the k largest, or the k algebraically smallest outside "
                    "the null space (the smallest nonzero ones at a minimum, the most negative at a saddle); with --method auto the "
                    "exact or the matrix-free route is taken by estimated cost")
    it.add_argument("--tol", type=positive_float, default=None, help="matrix-free routes: relative residual ||Hx - lambda x|| / lambda each eigenpair must reach (default 1e-6)")
    it.add_argument("--null-dim", type=int, default=None, metavar="N0",
                    help="--which smallest: dimension of the null space to skip (default, on every route: P - predict_rank when the "
                    "prediction is exact or observed, else ReLU's rescaling modes, else the rank policy's tolerance; the answer says which)")
    it.add_argument("--maxiter", type=positive_int, default=None,
                    help="--which smallest: LOBPCG iterations at most (default 3000 with a known null space, else 400)")
    it.add_argument("--block", type=positive_int, default=None,
                    help="--which smallest: LOBPCG block size (default k + 4 within a 2.5 GiB budget for the blocks)")
    it.add_argument("--probes", type=positive_int, default=None, help="--method slq: random probe vectors (default 10)")
    it.add_argument("--steps", type=positive_int, default=None, help="--method slq: Lanczos steps per probe (default 80)")
    it.add_argument("--sigma", type=positive_float, default=None, help="--method slq: Gaussian smoothing width (default 1%% of the spectral range)")
    it.add_argument("--probe-seed", type=int, default=0, help="--method slq / lanczos: seed of the probe and start vectors (default 0)")
    it.add_argument("--vectors", metavar="FILE.npz",
                    help="also write the eigenvectors held (eigenvectors (P, m), columns matching eigenvalues (m,)) to this .npz (atomically)")
    it.add_argument("--quiet", action="store_true", help="no progress lines on stderr for long matrix-free runs")
    p.add_argument("--order", type=positive_int, default=None,
                   help="population: quadrature order for an activation without closed-form moments (needed for a custom one with a kink)")
    p.add_argument("--rtol", type=positive_float, default=None, help="relative tolerance of the rank decision on singular values (default max(N,P)*eps)")
    p.add_argument("--chunk-size", type=positive_int, default=None, help="inputs per chunk when accumulating the batch Hessian (default: by memory)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto (batch Hessians, and the matrix-free population routes)")
    p.add_argument("--compare-population", action="store_true",
                   help="batch routes: also compute the exact population spectrum of the same problem (the law the samples come from; "
                   "for --inputs files their Gaussian-equivalent law) and report the KS distance and the relative errors of the extremes")
    p.add_argument("--plot", metavar="FILE.png|pdf|svg", help="also draw the spectrum (sorted and its density; beside the population with --compare-population)")
    p.add_argument("--json", action="store_true", help="print the full result (all eigenvalues) as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    add_student_args(p)
    p.set_defaults(func=run)


#: --trained / --train values -> Problem.trained
TRAINED_ALIASES = {"both": "both", "all": "both", "first": "first", "W1": "W1", "second": "second", "W2": "W2"}


def trained_value(text: str) -> str:
    """``--trained``: an alias of :data:`TRAINED_ALIASES` or a comma list of blocks (``W1,b1``), checked by the problem."""
    return TRAINED_ALIASES.get(text, text)


def add_student_args(p) -> None:
    """The student point (any width, any weights, or a point of the global-minimum manifold) and the trained layers."""
    g = p.add_argument_group("student (default: the teacher itself)")
    g.add_argument("--student", metavar="S.npz", help="student weights: W1 (K, N_i), W2 (1, K) or (K,); any width K, the teacher's N_i")
    g.add_argument("--student-width", type=positive_int, metavar="K", help="a random student of width K (W1 ~ N(0, 1/N_i), W2 ~ N(0, 1/K), --student-seed)")
    g.add_argument("--student-seed", type=int, default=1, help="seed of --student-width (default 1)")
    g.add_argument("--split", action="append", default=[], metavar="UNIT:r1,r2,...",
                   help="global-minimum manifold: split teacher unit UNIT into copies with outgoing ratios r (summing to 1); repeatable")
    g.add_argument("--dead", type=int, default=0, metavar="N", help="global-minimum manifold: add N units with zero outgoing weight (random incoming)")
    g.add_argument("--teacher-activation", metavar="ACT",
                   help="the teacher's activation when it differs from the student's (-a); needs a student point (--student or --student-width)")
    g.add_argument("--save-student", metavar="S.npz", help="write the student point used (W1, W2) to this .npz")
    g.add_argument("--trained", "--train", dest="trained", default=None, type=trained_value,
                   help="which blocks train: both/all (default; a saved critical point's own blocks), first (W1 and b1: committee machine, "
                        "second layer fixed), second (W2 and b2), or a comma list of blocks, e.g. W1,b1")


def _same_net(a: TwoLayerNet, b: TwoLayerNet) -> bool:
    return a.W1.shape == b.W1.shape and bool(np.array_equal(a.W1, b.W1) and np.array_equal(a.W2, b.W2))


def teacher_activation(args, teacher: TwoLayerNet) -> TwoLayerNet:
    """The teacher with ``--teacher-activation`` when given (the student keeps ``-a``)."""
    name = getattr(args, "teacher_activation", None)
    return teacher.with_activation(name) if name else teacher


def student_width(args, teacher: TwoLayerNet) -> int:
    """The student's width from the options alone (before anything is built or read)."""
    if args.student_width is not None:
        return int(args.student_width)
    extra = sum(max(len(spec.partition(":")[2].split(",")) - 1, 0) for spec in args.split)
    return teacher.n_hidden + extra + max(int(args.dead), 0)


def student_from_args(args, teacher: TwoLayerNet) -> TwoLayerNet | None:
    """The student point from --student / --student-width / --split / --dead (``None``: the teacher)."""
    given = [o for o, on in (("--student", bool(args.student)), ("--student-width", args.student_width is not None), ("--split/--dead", bool(args.split) or args.dead)) if on]
    if len(given) > 1:
        raise NearoptError(f"choose one of {' / '.join(given)}")
    act = get_activation(args.activation) if args.activation else teacher.activation  # -a names the student's (the teacher may differ)
    if args.student:
        return load_student(args.student, teacher, act)  # validated: W1 (K, N_i), W2 (M, K), biases, the teacher's N_i
    if args.student_width is not None:
        return random_student(teacher, args.student_width, seed=args.student_seed).with_activation(act)
    if act != teacher.activation:
        raise NearoptError(f"a {teacher.activation.name} teacher for a {act.name} student (--teacher-activation) needs a student point: "
                           "--student S.npz or --student-width K")
    if not (args.split or args.dead):
        return None
    S = teacher
    for spec in args.split:
        unit, _, ratios = spec.partition(":")
        try:
            unit_index, values = int(unit), [float(r) for r in ratios.split(",")]
        except ValueError:
            raise NearoptError(f"--split takes UNIT:r1,r2,... (e.g. 0:0.5,0.5), got {spec!r}") from None
        S = split_unit(S, unit_index, values)
    if args.dead < 0:
        raise NearoptError(f"--dead must be >= 0, got {args.dead}")
    return add_dead_units(S, args.dead, seed=args.student_seed) if args.dead else S


#: routes that fit when a dense batch route does not
BATCH_ALTERNATIVES = ["--population --method structured (exact, no P x P matrix)", "--population --which largest|smallest --k K (matrix-free)", "smaller --ni/--nh"]


def _check_memory(args, P: int, population: bool) -> None:
    """Refuse a dense route whose P x P matrices cannot fit (nothing is allocated to find out)."""
    if population:
        if args.method == "dense":
            require_dense_memory(P, "population --method dense", ["--method structured", "--which largest|smallest --k K (matrix-free)"])
        return
    # jacobian-svd holds the P x P factor R and its SVD workspace; the eigvalsh routes a matrix, a copy and workspace
    copies = 2.0 if args.method == "jacobian-svd" else 3.0
    require_dense_memory(P, f"batch --method {args.method}", BATCH_ALTERNATIVES, device=args.device, copies=copies)


def _request(args, population: bool) -> SpectrumRequest:
    """The :class:`SpectrumRequest` of the options (the request itself refuses options that do not apply)."""
    method = args.method if population else "auto"
    which = args.which or ("largest" if method == "lanczos" else "density" if method == "slq" else "all")
    if args.tol is not None and which == "all":
        raise NearoptError("--tol applies to the matrix-free routes (--which largest|smallest, --method lanczos|slq); the exact routes are exact to rounding")
    if args.k is not None and which in ("all", "density"):
        raise NearoptError("--k applies with --which largest|smallest")
    options = {name: getattr(args, name) for name in ("null_dim", "maxiter", "block", "probes", "steps", "sigma") if getattr(args, name) is not None}
    if args.tol is not None:
        options["tol"] = args.tol
    return SpectrumRequest(which=which, k=args.k, vectors=bool(args.vectors), method=method, policy=RankPolicy(rtol=args.rtol),
                           seed=args.probe_seed, progress=not args.quiet, **options)


def compute(args) -> tuple[Spectrum, Spectrum | None]:
    """Problem, curvature and request from the options, answered by the library: the spectrum and, with
    --compare-population, the population spectrum it was compared with."""
    if args.teacher and deep_linear_depth(args.teacher) is not None:
        return deep_linear_spectrum(args), None
    saved = load_point(args.student, get_activation(args.activation)) if args.student else None
    if saved is not None and saved.teacher is not None:
        if args.ni is not None or args.nh is not None:
            raise NearoptError(f"student file {args.student} carries its teacher (a saved critical point): drop --ni/--nh")
        if args.teacher and not _same_net(network_from_args(args), saved.teacher):
            raise NearoptError(f"student file {args.student} carries a teacher that differs from --teacher {args.teacher}: drop --teacher")
        net = saved.teacher
    else:
        net = network_from_args(args)
    net = teacher_activation(args, net)
    if args.trained is None:
        args.trained = saved.trained if saved is not None and saved.trained else "both"
    population = bool(getattr(args, "population", False))
    if not args.student:  # a student file's size is read with it; the others are known from the options
        _check_memory(args, student_width(args, net) * (net.n_inputs + 1), population)
    student = student_from_args(args, net)
    if population and args.method not in POPULATION_METHODS:
        raise NearoptError(f"--method {args.method} is not a population method; choose from {', '.join(POPULATION_METHODS)}")
    if not population and args.method not in BATCH_METHODS:
        raise NearoptError(f"--method {args.method} is not a batch method; choose from {', '.join(BATCH_METHODS)} (or use --population)")
    request = _request(args, population)
    if args.order is not None and not population:
        raise NearoptError("--order applies to --population (the quadrature of the population moments)")
    _check_memory(args, (student or net).n_params, population)
    if args.vectors:
        io.check_output_path(args.vectors, suffix=".npz")
    if args.plot:
        check_plot_path(args.plot)
    if args.compare_population and (population or request.which != "all"):
        raise NearoptError("--compare-population compares a batch spectrum (--samples or --inputs) with the population one: every eigenvalue, no --which")
    X = inputs_from_args(args, net)
    law = input_law_from_args(args, net.n_inputs) if X is None else None
    problem = Problem(net, student=student, inputs=law, trained=trained_value(args.trained))  # type: ignore[arg-type]  # None: the defaults
    # under N(0, Sigma) the pre-activations have variances w^T Sigma w: check the whitened network W1 Sigma^{1/2}
    for n in {net, problem.point}:
        check_finite(n if law is None else TwoLayerNet(law.matmul(n.W1, 0.5), n.W2, n.activation, n.b1, n.b2), X)
    if args.save_student:
        problem.point.save(args.save_student)
    compared: Spectrum | None = None  # the population spectrum of --compare-population
    cause = f"activation {net.activation.name}, N_i={net.n_inputs}, N_h={net.n_hidden}, {'population' if X is None else f'N={X.shape[0]}'}"
    with numerics("the Hessian spectrum", cause):
        if X is None:
            curv = PopulationHessian(problem, device=args.device, order=args.order)
            spec = curv.spectrum(request)
        else:
            fields = {"which": request.which, "k": request.k, "vectors": request.vectors}
            spec = batch_spectrum(problem, X, method=args.method, chunk_size=args.chunk_size, device=args.device, rtol=args.rtol, **fields)
            if args.compare_population:
                law = input_law_from_args(args, net.n_inputs) or (GaussianInputs.from_data(X) if args.inputs else None)
                spec, compared = compare_with_population(spec, problem, law, policy=request.policy, device=args.device)
    spec = spec.replace(extra={**spec.extra, "inputs_source": _inputs_source(args, X, law)})
    require_finite(spec.eigenvalues, "Hessian eigenvalues", cause)
    if spec.exact and spec.eigenvalues.size and not spec.eigenvalues.any():
        raise NearoptError(f"the Hessian is zero to float64 precision ({cause}); weights this small underflow, use larger --sigma1/--sigma2")
    return spec, compared


#: options of the two-layer problem that a deep linear teacher file does not take (attribute, option, default)
DEEP_LINEAR_REFUSED: tuple[tuple[str, str, object], ...] = (("ni", "--ni", None), ("nh", "--nh", None), ("samples", "--samples", None), ("inputs", "--inputs", None),
                       ("student_width", "--student-width", None), ("split", "--split", []), ("dead", "--dead", 0), ("order", "--order", None),
                       ("compare_population", "--compare-population", False))


def deep_linear_spectrum(args) -> Spectrum:
    """The population Hessian spectrum of a deep linear teacher file ``W1 ... WL`` (and ``--student``, ``--input-cov``):
    :class:`~nearopt.curvature.deep_linear.DeepLinearHessian` answers the request."""
    depth = deep_linear_depth(args.teacher)
    layers = "W1" if depth == 1 else f"W1 ... W{depth}"
    if get_activation(args.activation).name != "linear":
        if depth == 1:
            raise NearoptError(f"teacher file {args.teacher} lacks W2 of a two-layer network: it holds W1 only, a deep linear network of depth 1 (use -a linear)")
        raise NearoptError(f"teacher file {args.teacher} holds a deep network ({layers}): deep networks are linear only here; use -a linear")
    given = [opt for name, opt, default in DEEP_LINEAR_REFUSED if getattr(args, name, default) not in (None, default)]
    if given:
        raise NearoptError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a deep linear teacher file ({args.teacher}: {layers}); it takes --population, --student, --input-cov")
    if args.trained not in (None, "both", "all"):
        raise NearoptError(f"--trained {args.trained}: a deep linear network trains all its layers here")
    if not getattr(args, "population", False):
        raise NearoptError(f"a deep linear teacher file ({args.teacher}: {layers}) has the exact population Hessian only: add --population")
    if args.method not in POPULATION_METHODS:
        raise NearoptError(f"--method {args.method} is not a population method; choose from {', '.join(POPULATION_METHODS)}")
    request = _request(args, True)
    teacher = DeepLinearNet.load(args.teacher, "teacher")
    student = DeepLinearNet.load(args.student, "student") if args.student else None
    law = input_law_from_args(args, teacher.n_inputs)
    problem = DeepLinearProblem(teacher, student, law)  # type: ignore[arg-type]  # None: the defaults
    _check_memory(args, problem.n_params, True)
    if args.vectors:
        io.check_output_path(args.vectors, suffix=".npz")
    if args.plot:
        check_plot_path(args.plot)
    if args.save_student:
        problem.point.save(args.save_student)
    cause = f"deep linear network, widths {'-'.join(map(str, problem.point.widths))}, population"
    with numerics("the Hessian spectrum", cause):
        spec = DeepLinearHessian(problem, device=args.device).spectrum(request)
    require_finite(spec.eigenvalues, "Hessian eigenvalues", cause)
    cov = f"N(0, Sigma) from {args.input_cov}" if args.input_cov else "N(0, I)"
    return spec.replace(extra={**spec.extra, "inputs_source": f"population, x ~ {cov}"})


def _inputs_source(args, X, law) -> str:
    """The input law in words, for the summary."""
    if args.inputs:
        return f"{args.inputs} ({X.shape[0]} inputs)"
    cov = f"N(0, Sigma) from {args.input_cov}" if getattr(args, "input_cov", None) else "N(0, I)"
    return f"population, x ~ {cov}" if X is None else f"{X.shape[0]} samples of x ~ {cov}"


def run(args) -> int:
    spec, population = compute(args)
    if args.plot:
        plot_spectrum(spec, args.plot, population)
        spec = spec.replace(extra={**spec.extra, "plot_file": str(args.plot)})
    if args.vectors:
        if spec.eigenvectors is None:
            raise NearoptError(f"the route that ran ({spec.method}) gives no eigenvectors")
        io.write_npz(args.vectors, eigenvalues=spec.eigenvalues, eigenvectors=spec.eigenvectors)
        spec = spec.replace(extra={**spec.extra, "vectors_file": str(args.vectors)})
    with numerics("the spectrum's summary", f"activation {spec.activation}, P={spec.n_params}"):
        data, text = spec.to_dict(), spec.summary()
    if args.json:
        emit_json(data, args.out)
    else:
        if args.out:
            io.write_json(args.out, data)
        print(text)
    if not spec.converged:
        print(f"nearopt {COMMAND}: the {spec.method} route did not reach what was asked ({_why(spec)}); the result is written but not valid", file=sys.stderr)
        return 1
    return 0


def _why(spec: Spectrum) -> str:
    a = spec.accuracy or {}
    return str(a.get("null_check_detail") or f"relative residual {a.get('tolerance_reached')} > tol {a.get('tolerance')}")
