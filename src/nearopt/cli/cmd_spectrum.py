"""``nearopt spectrum``: eigenvalues and rank of the Hessian at the optimum."""

from __future__ import annotations

from .. import io
from ..errors import NearoptError
from ..hessian.population import population_spectrum
from ..spectrum import BATCH_METHODS, Spectrum, batch_spectrum
from .common import add_data_args, add_network_args, emit_json, inputs_from_args, network_from_args, positive_float, positive_int

COMMAND = "spectrum"
ORDER = 20

POPULATION_METHODS = ("auto", "dense", "structured", "lanczos")


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
    p.add_argument(
        "--method",
        default="auto",
        help="batch: auto (default: jacobian-svd up to P=4000, else gauss-newton), jacobian-svd "
        "(eigenvalues from singular values of J; most accurate), gauss-newton (eigvalsh of J^T J/N; "
        "fastest, GPU) or autodiff (eigvalsh of the torch.func Hessian); population: auto (default, cheapest exact route), "
        "dense, structured (exact, never forms the P x P matrix) or lanczos (extreme eigenvalues only)",
    )
    p.add_argument("--k", type=positive_int, default=20, help="population --method lanczos: how many of the largest eigenvalues to compute (default 20)")
    p.add_argument("--rtol", type=positive_float, default=None, help="relative tolerance of the rank decision on singular values (default max(N,P)*eps)")
    p.add_argument("--chunk-size", type=positive_int, default=None, help="inputs per chunk when accumulating the batch Hessian (default: by memory)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto (batch Hessians)")
    p.add_argument("--json", action="store_true", help="print the full result (all eigenvalues) as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=run)


def compute(args) -> Spectrum:
    net = network_from_args(args)
    X = inputs_from_args(args, net)
    if X is None:
        method = args.method
        if method not in POPULATION_METHODS:
            raise NearoptError(f"--method {method} is not a population method; choose from {', '.join(POPULATION_METHODS)}")
        return population_spectrum(net, method=method, rtol=args.rtol, k=args.k)
    if args.method not in BATCH_METHODS:
        raise NearoptError(f"--method {args.method} is not a batch method; choose from {', '.join(BATCH_METHODS)} (or use --population)")
    return batch_spectrum(net, X, method=args.method, chunk_size=args.chunk_size, device=args.device, rtol=args.rtol)


def summary(spec: Spectrum) -> str:
    r = spec.rank
    if spec.partial:
        head = [f"activation     {spec.activation}", f"sizes          N_i={spec.n_inputs}  N_h={spec.n_hidden}  P={spec.n_params}  samples=population"]
        return "\n".join(
            head
            + [
                f"method         {spec.method}  ({spec.dtype}, {spec.seconds:.3g} s)",
                f"computed       the {spec.eigenvalues.size} largest eigenvalues only (rank not determined)",
                f"range          {spec.eigenvalues[0]:.6g} .. {spec.largest:.6g}",
            ]
        )
    lines = [
        f"activation     {spec.activation}",
        f"sizes          N_i={spec.n_inputs}  N_h={spec.n_hidden}  P={spec.n_params}  samples={'population' if spec.samples is None else spec.samples}",
        f"method         {spec.method}  ({spec.dtype}, {spec.seconds:.3g} s)",
        f"rank           {r.rank} of {spec.n_params}  (tolerance {r.eigenvalue_tolerance:.3g} on eigenvalues; "
        f"gap {r.gap:.3g}, margin {r.margin:.3g}{'' if r.clear else '  -- NO CLEAR GAP, rank is uncertain'})",
        f"smallest >0    {spec.smallest_nonzero:.6g}",
        f"largest        {spec.largest:.6g}",
        f"condition      {spec.condition_number:.6g}  (largest / smallest nonzero)",
    ]
    return "\n".join(lines)


def run(args) -> int:
    spec = compute(args)
    if args.json or args.out:
        if args.json:
            emit_json(spec.to_dict(), args.out)
        else:
            io.write_json(args.out, spec.to_dict())
            print(summary(spec))
    else:
        print(summary(spec))
    return 0
