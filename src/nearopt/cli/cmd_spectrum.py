"""``nearopt spectrum``: eigenvalues and rank of the Hessian at the optimum."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .. import io
from ..activations import ReLU
from ..curvature import BATCH_METHODS, batch_spectrum, population_spectrum
from ..curvature.batch import BatchHessian
from ..curvature.landscape import PopulationLossHessian
from ..curvature.population import PopulationHessian, rescaling_modes
from ..errors import NearoptError, require_finite
from ..manifold import add_dead_units, split_unit
from ..model import TwoLayerNet, forward_torch
from ..problem import Problem
from ..spectra.spectrum import Spectrum
from ..theory.rank_prediction import predict_rank
from .common import (
    add_data_args,
    add_input_cov_arg,
    add_network_args,
    check_network_finite,
    emit_json,
    input_law_from_args,
    inputs_from_args,
    network_from_args,
    numerics,
    positive_float,
    positive_int,
    require_dense_memory,
)

COMMAND = "spectrum"
ORDER = 20

POPULATION_METHODS = ("auto", "dense", "structured", "lanczos", "slq")


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
    p.add_argument("--k", type=positive_int, default=20, help="population --method lanczos: how many eigenvalues at the --which end (default 20)")
    it = p.add_argument_group("matrix-free population routes (--method lanczos / slq; docs/scale.md)")
    it.add_argument("--which", choices=("largest", "smallest"), default=None,
                    help="--method lanczos: the k largest (ARPACK; the default) or the k smallest NONZERO eigenvalues (preconditioned "
                    "LOBPCG, null space deflated); with --method auto: only those k are wanted, and auto takes the exact or the "
                    "matrix-free route by estimated cost")
    it.add_argument("--tol", type=positive_float, default=1e-6, help="relative residual ||Hx - lambda x|| / lambda each eigenpair must reach (default 1e-6)")
    it.add_argument("--null-dim", type=int, default=None, metavar="N0",
                    help="--which smallest: dimension of the null space (default: P - predict_rank when the prediction is exact "
                    "or observed, the rescaling modes for ReLU, else detected)")
    it.add_argument("--maxiter", type=positive_int, default=None,
                    help="--which smallest: LOBPCG iterations at most (default 3000 with a known null space, else 400)")
    it.add_argument("--block", type=positive_int, default=None,
                    help="--which smallest: LOBPCG block size (default k + 4 within a 2.5 GiB budget for the blocks)")
    it.add_argument("--probes", type=positive_int, default=10, help="--method slq: random probe vectors (default 10)")
    it.add_argument("--steps", type=positive_int, default=80, help="--method slq: Lanczos steps per probe (default 80)")
    it.add_argument("--sigma", type=positive_float, default=None, help="--method slq: Gaussian smoothing width (default 1%% of the spectral range)")
    it.add_argument("--probe-seed", type=int, default=0, help="--method slq / lanczos: seed of the probe and start vectors (default 0)")
    it.add_argument("--vectors", metavar="FILE.npz",
                    help="--method lanczos: also write the K eigenvectors (eigenvectors (P, K), columns matching eigenvalues (K,)) to this .npz (atomically)")
    it.add_argument("--quiet", action="store_true", help="no progress lines on stderr for long matrix-free runs")
    p.add_argument("--rtol", type=positive_float, default=None, help="relative tolerance of the rank decision on singular values (default max(N,P)*eps)")
    p.add_argument("--chunk-size", type=positive_int, default=None, help="inputs per chunk when accumulating the batch Hessian (default: by memory)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto (batch Hessians, and the matrix-free population routes)")
    p.add_argument("--json", action="store_true", help="print the full result (all eigenvalues) as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    add_student_args(p)
    p.set_defaults(func=run)


#: --trained / --train values -> Problem.trained
TRAINED_ALIASES = {"both": "both", "all": "both", "first": "first", "W1": "first", "second": "second", "W2": "second"}


def add_student_args(p) -> None:
    """The student point (any width, any weights, or a point of the global-minimum manifold) and the trained layers."""
    g = p.add_argument_group("student (default: the teacher itself)")
    g.add_argument("--student", metavar="S.npz", help="student weights: W1 (K, N_i), W2 (1, K) or (K,); any width K, the teacher's N_i")
    g.add_argument("--student-width", type=positive_int, metavar="K", help="a random student of width K (W1 ~ N(0, 1/N_i), W2 ~ N(0, 1/K), --student-seed)")
    g.add_argument("--student-seed", type=int, default=1, help="seed of --student-width (default 1)")
    g.add_argument("--split", action="append", default=[], metavar="UNIT:r1,r2,...",
                   help="global-minimum manifold: split teacher unit UNIT into copies with outgoing ratios r (summing to 1); repeatable")
    g.add_argument("--dead", type=int, default=0, metavar="N", help="global-minimum manifold: add N units with zero outgoing weight (random incoming)")
    g.add_argument("--save-student", metavar="S.npz", help="write the student point used (W1, W2) to this .npz")
    g.add_argument("--trained", "--train", dest="trained", default="both", choices=sorted(TRAINED_ALIASES),
                   help="which layers train: both/all (default), first/W1 (committee machine: second layer fixed), second/W2")


def student_from_args(args, teacher: TwoLayerNet) -> TwoLayerNet | None:
    """The student point from --student / --student-width / --split / --dead (``None``: the teacher)."""
    given = [o for o, on in (("--student", bool(args.student)), ("--student-width", args.student_width is not None), ("--split/--dead", bool(args.split) or args.dead)) if on]
    if len(given) > 1:
        raise NearoptError(f"choose one of {' / '.join(given)}")
    if args.student:
        W1, W2 = io.load_weights(args.student)  # validated: W1 (K, N_i), W2 (1, K) or (K,)
        if W1.shape[1] != teacher.n_inputs:
            raise NearoptError(f"student {args.student} has N_i = {W1.shape[1]} (W1 {W1.shape}); the teacher has N_i = {teacher.n_inputs}")
        return TwoLayerNet(W1, W2, teacher.activation)
    if args.student_width is not None:
        K = args.student_width
        rng = np.random.default_rng([args.student_seed, 0x57])
        return TwoLayerNet(rng.standard_normal((K, teacher.n_inputs)) / np.sqrt(teacher.n_inputs), rng.standard_normal((1, K)) / np.sqrt(K), teacher.activation)
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


def _point_spectrum(args, net: TwoLayerNet, student: TwoLayerNet | None, X, law) -> Spectrum:
    """Spectrum of the exact loss Hessian at a student point (or with some layers fixed), population or batch."""
    trained = TRAINED_ALIASES[args.trained]
    problem = Problem(net, student=student if student is not None else net, trained=trained)
    if X is None:
        if law is not None:
            raise NearoptError("a student point or --trained with --input-cov is not implemented: the exact landscape assumes x ~ N(0, I)")
        method = args.method
        if method not in ("auto", "dense", "structured", "lanczos"):
            raise NearoptError(f"--method {method} is not available at a student point; choose auto, dense, structured or lanczos")
        return PopulationLossHessian(problem).spectrum(method, rtol=args.rtol, k=args.k)
    curv = BatchHessian(problem, X, chunk_size=args.chunk_size, device=args.device)
    spec = curv.spectrum("auto" if args.method in ("auto", "jacobian-svd", "gauss-newton", "autodiff") else args.method, rtol=args.rtol, k=args.k)
    st = problem.point
    theta = torch.tensor(st.parameters(), dtype=torch.float64, requires_grad=True)
    y = torch.as_tensor(net.forward(X))
    loss = 0.5 * ((forward_torch(theta, torch.as_tensor(X), st.activation, st.n_hidden) - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, theta)
    spec.extra.update(loss=float(loss.detach()), gradient_norm=float(grad[torch.as_tensor(problem.trained_indices)].norm()))
    return spec


#: routes that fit when a dense batch route does not
BATCH_ALTERNATIVES = ["--population --method structured (exact, no P x P matrix)", "--population --method lanczos (largest eigenvalues only)", "smaller --ni/--nh"]


def _check_memory(args, P: int, population: bool) -> None:
    """Refuse a dense route whose P x P matrices cannot fit (nothing is allocated to find out)."""
    if population:
        if args.method == "dense":
            require_dense_memory(P, "population --method dense", ["--method structured", "--method lanczos"])
        return
    # jacobian-svd holds the P x P factor R and its SVD workspace; the eigvalsh routes a matrix, a copy and workspace
    copies = 2.0 if args.method == "jacobian-svd" else 3.0
    require_dense_memory(P, f"batch --method {args.method}", BATCH_ALTERNATIVES, device=args.device, copies=copies)


def _check_vectors(args, population: bool, student: TwoLayerNet | None) -> None:
    """Refuse ``--vectors`` before any work where no eigenvectors would come (a long run must not end in that error)."""
    if not args.vectors:
        return
    if not (population and args.method == "lanczos") or student is not None or TRAINED_ALIASES[args.trained] != "both":
        raise NearoptError("--vectors needs --population --method lanczos at the teacher (all layers trained); the exact routes give all eigenpairs in Python: Curvature.eigh()")
    io.check_output_path(args.vectors, suffix=".npz")


def compute(args) -> Spectrum:
    net = network_from_args(args)
    student = student_from_args(args, net)
    population = bool(getattr(args, "population", False))
    if population and args.method not in POPULATION_METHODS:
        raise NearoptError(f"--method {args.method} is not a population method; choose from {', '.join(POPULATION_METHODS)}")
    if not population and args.method not in BATCH_METHODS:
        raise NearoptError(f"--method {args.method} is not a batch method; choose from {', '.join(BATCH_METHODS)} (or use --population)")
    _check_memory(args, net.n_params, population)
    _check_vectors(args, population, student)
    X = inputs_from_args(args, net)
    law = input_law_from_args(args, net.n_inputs) if X is None else None
    # under N(0, Sigma) the pre-activations have variances w^T Sigma w: check the whitened network W1 Sigma^{1/2}
    check_network_finite(net if law is None else TwoLayerNet(law.matmul(net.W1, 0.5), net.W2, net.activation), X)
    cause = f"activation {net.activation.name}, N_i={net.n_inputs}, N_h={net.n_hidden}, {'population' if X is None else f'N={X.shape[0]}'}"
    with numerics("the Hessian spectrum", cause):
        if student is not None or TRAINED_ALIASES[args.trained] != "both":
            if args.save_student:
                (student or net).save(args.save_student)
            spec = _point_spectrum(args, net, student, X, law)
        elif X is None and args.method in ("lanczos", "slq"):
            spec = _population_matrix_free(args, net, law)
        elif X is None and args.method == "auto" and args.which is not None:
            spec = _population_extremes(args, net, law)
        elif X is None:
            spec = population_spectrum(net, method=args.method, rtol=args.rtol, k=args.k, inputs=law)
        else:
            spec = batch_spectrum(net, X, method=args.method, chunk_size=args.chunk_size, device=args.device, rtol=args.rtol)
    require_finite(spec.eigenvalues, "Hessian eigenvalues", cause)
    if spec.eigenvalues.size and not np.any(spec.eigenvalues > 0):
        raise NearoptError(f"the Hessian is zero to float64 precision ({cause}); weights this small underflow, use larger --sigma1/--sigma2")
    return spec


def _progress(args, label: str):
    """A progress reporter for long runs: one stderr line at most every 10 s (none with --quiet)."""
    if args.quiet:
        return None
    t0, last = time.perf_counter(), [time.perf_counter()]

    def report(done: int, total: int | float | None = None) -> None:
        now = time.perf_counter()
        if now - last[0] >= 10.0:
            last[0] = now
            of = f"/{total}" if isinstance(total, int) else ""
            print(f"  {label}: {done}{of} {'steps' if of else 'products'}, {now - t0:.0f} s", file=sys.stderr, flush=True)

    return report


def _population_extremes(args, net: TwoLayerNet, law) -> Spectrum:
    """``--population --method auto --which W --k K``: the exact route or the matrix-free one, whichever
    :meth:`PopulationHessian.choose_route` estimates cheaper for those ``k`` eigenvalues."""
    curv = _population_curvature(args, net, law)
    route = curv.choose_route(args.k, args.which)
    if route == "lanczos":
        spec = _population_matrix_free(args, net, law, curv)
    else:
        spec = population_spectrum(net, method=route, rtol=args.rtol, k=args.k, inputs=law)
    spec.extra["route_choice"] = {"asked": f"{args.which} {args.k}", "chosen": route,
                                "estimated_seconds": {key: (val if np.isfinite(val) else None) for key, val in curv.route_costs(args.k, args.which).items()}}
    return spec


def _population_curvature(args, net: TwoLayerNet, law) -> PopulationHessian:
    """The population Hessian at the teacher, on ``--device``."""
    return PopulationHessian(Problem(net) if law is None else Problem(net, inputs=law), device=args.device)


def _population_matrix_free(args, net: TwoLayerNet, law, curv: PopulationHessian | None = None) -> Spectrum:
    """``--population --method lanczos|slq`` at the teacher: the matrix-free operator."""
    curv = curv if curv is not None else _population_curvature(args, net, law)
    if args.method == "slq":
        return curv.spectrum("slq", rtol=args.rtol, n_probes=args.probes, steps=args.steps, seed=args.probe_seed, sigma=args.sigma, progress=_progress(args, "slq"))
    which = args.which or "largest"
    progress = not args.quiet  # the solvers' own lines: products, seconds and (smallest) the pairs locked
    if which == "largest":
        return curv.spectrum("lanczos", rtol=args.rtol, k=args.k, which="largest", tol=args.tol, seed=args.probe_seed, progress=progress, return_vectors=bool(args.vectors))
    P = curv.n_params
    null_dim, null_vectors = args.null_dim, None
    if null_dim is not None and not 0 <= null_dim < P:
        raise NearoptError(f"--null-dim must lie in [0, P) = [0, {P}), got {null_dim}")
    if isinstance(net.activation, ReLU) and null_dim is None:
        null_vectors = rescaling_modes(net)  # exact: deflated as constraints, and all of the null space
        null_dim = null_vectors.shape[1]
    source = None
    if null_dim is None and null_vectors is None:
        # an observed full rank (erf, tanh) counts: their tiny eigenvalues sit far below any
        # zero threshold (erf n = 1000: 1e-12 of lambda_max), so detection would misread them
        pred = predict_rank(net.activation, net.n_inputs, net.n_hidden)
        if pred.kind in ("exact", "observed"):
            null_dim, source = P - pred.rank, f"predict_rank ({pred.kind})"
    spec = curv.spectrum(
        "smallest", rtol=args.rtol, k=args.k, null_dim=null_dim, null_vectors=null_vectors,
        tol=args.tol, maxiter=args.maxiter, block=args.block, seed=args.probe_seed, progress=progress,
        return_vectors=bool(args.vectors),
    )
    if source is not None:
        spec.extra["null_source"] = source
    return spec


def _g(x: float) -> str:
    """A summary number; ``-`` where the quantity is undefined (no nonzero eigenvalue)."""
    return f"{x:.6g}" if np.isfinite(x) else "-"


def summary(spec: Spectrum) -> str:
    r = spec.rank
    if spec.partial:
        head = [f"activation     {spec.activation}", f"sizes          N_i={spec.n_inputs}  N_h={spec.n_hidden}  P={spec.n_params}  samples=population"]
        x = spec.extra
        lines = head + [
            f"method         {spec.method}  ({spec.dtype}, {spec.seconds:.3g} s)",
            f"computed       {x.get('eigenvalues_held', f'the {spec.eigenvalues.size} largest eigenvalues')} (rank not determined)"
            if x.get("rank") is None else f"computed       {x['eigenvalues_held']}; rank {x['rank']} (null space {x['null_dim']}, {x['null_source']})",
            f"range          {spec.eigenvalues[0]:.6g} .. {spec.eigenvalues[-1]:.6g}",
        ]
        if "tolerance_reached" in x:
            lines.append(f"accuracy       relative residual {x['tolerance_reached']:.2g} (asked {x['tolerance']:.2g}; {x['products']} products)")
        if "density" in x:
            d = x["density"]
            lines.append(f"density        {d['probes']} probes x {d['steps']} steps ({d['products']} products); --json for grid, density and its error band")
        return "\n".join(lines)
    lines = [
        f"activation     {spec.activation}",
        f"sizes          N_i={spec.n_inputs}  N_h={spec.n_hidden}  P={spec.n_params}  samples={'population' if spec.samples is None else spec.samples}",
        f"method         {spec.method}  ({spec.dtype}, {spec.seconds:.3g} s)",
        (
            f"rank           {r.rank} of {spec.n_params}  (tolerance {r.eigenvalue_tolerance:.3g} on eigenvalues; "
            f"gap {r.gap:.3g}, margin {r.margin:.3g}{'' if r.clear else '  -- NO CLEAR GAP, rank is uncertain'})"
        ),
        f"smallest >0    {_g(spec.smallest_nonzero)}",
        f"largest        {spec.largest:.6g}",
        f"condition      {_g(spec.condition_number)}  (largest / smallest nonzero)",
    ]
    return "\n".join(lines)


def run(args) -> int:
    spec = compute(args)
    if args.vectors:
        assert spec.eigenvectors is not None  # (_check_vectors admitted only routes that return them)
        io.write_npz(args.vectors, eigenvalues=spec.eigenvalues, eigenvectors=spec.eigenvectors)
        spec.extra["vectors_file"] = str(args.vectors)
    with numerics("the spectrum's summary", f"activation {spec.activation}, P={spec.n_params}"):
        data, text = spec.to_dict(), summary(spec)
    if args.json:
        emit_json(data, args.out)
        return 0
    if args.out:
        io.write_json(args.out, data)
    print(text)
    return 0
