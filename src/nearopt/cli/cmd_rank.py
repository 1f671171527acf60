"""``nearopt rank``: measured vs predicted rank over a sweep of sizes, or vs the sample size."""

from __future__ import annotations

import argparse

import numpy as np

from ..curvature.deep_linear import DeepLinearRank, deep_linear_rank
from ..curvature.rank_measurement import (
    DEFAULT_OVERSAMPLE,
    MIN_GAP,
    NetworkRank,
    SweepRow,
    network_rank,
    rank_sweep,
    rank_vs_samples,
    sweep_samples,
)
from ..errors import NearoptError, require_finite
from ..model import io
from ..model.activations import available_activations, get_activation
from ..model.deep_linear import DeepLinearNet, DeepLinearProblem, deep_linear_depth
from ..model.network import TwoLayerNet, sample_teacher
from ..model.problem import GaussianInputs, Problem
from ..policy import RankPolicy
from ..resources import dense_bytes, require_memory
from ..theory.rank_prediction import saturation_hidden
from .common import emit_json, nonneg_int, numerics, positive_float, positive_int

__all__ = ["COMMAND", "compute", "deep_linear_table", "deep_rank", "int_list", "MAX_SWEEP_VALUES", "ORDER", "register", "run", "table", "two_layer_rank",
           "two_layer_table"]

COMMAND = "rank"
ORDER = 30


#: most values one size list may expand to (a sweep of this many sizes already takes days)
MAX_SWEEP_VALUES = 10_000


def int_list(text: str) -> list[int]:
    """argparse type: ``"5"``, ``"2,4,8"``, ``"1:12"`` (inclusive) or ``"1:12:2"``, combinable with commas.

    Ranges are counted (``len(range(...))``, O(1)) before any is expanded, so
    ``1:100000000`` is refused at once instead of filling the memory.
    """
    parts: list[range] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                bits = [int(b) for b in part.split(":")]
                if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2] < 1) or bits[1] < bits[0]:
                    raise ValueError
                parts.append(range(bits[0], bits[1] + 1, bits[2] if len(bits) == 3 else 1))
            else:
                parts.append(range(int(part), int(part) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers like 5, 2,4,8 or 1:12[:step], got {text!r}") from None
    count = sum(len(r) for r in parts)
    if count > MAX_SWEEP_VALUES:
        raise argparse.ArgumentTypeError(f"{text!r} expands to {count} values; at most {MAX_SWEEP_VALUES} per list")
    if not count or min(r[0] for r in parts) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be integers >= 1, got {text!r}")
    return list(dict.fromkeys(v for r in parts for v in r))


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="measured vs predicted Hessian rank over a sweep of N_i, N_h (or of the sample size N)",
        description="Rank of the Hessian at the optimum (the effective number of parameters), measured from "
        "the singular values of the batch Jacobian J/sqrt(N) in float64 and compared with the theory "
        "(exact value or bound). Sweeps N_i and N_h with several random teachers per cell; with "
        "--samples-sweep it shows the rank as a function of N for one size instead.",
    )
    p.add_argument(
        "--activation",
        "-a",
        required=True,
        help=f"activation: {', '.join(available_activations())} (monomial:P, polynomial:c0,c1,..., erf:unit for erf(z))",
    )
    p.add_argument("--ni", type=int_list, default=None, help="input widths N_i: 5, 2,4,8 or 1:12[:step] (required unless --teacher)")
    p.add_argument("--nh", type=int_list, default=None, help="hidden widths N_h: 5, 2,4,8 or 1:12[:step] (required unless --teacher)")
    d = p.add_argument_group("deep linear networks (docs/deep_linear.md)")
    d.add_argument("--teacher", metavar="T.npz", help="a weight file: a deep linear one (W1 ... WL, L != 2, with -a linear) or a two-layer one (W1, W2, biases optional, -a ACT): the rank of its exact population "
                   "Hessian at the optimum, measured, against q (r + K - q)")
    d.add_argument("--input-cov", metavar="S.npy", help="with --teacher: inputs x ~ N(0, S) (r = rank S)")
    p.add_argument("--teachers", type=positive_int, default=3, help="random teachers per (N_i, N_h) cell (default 3); teacher t has seed SEED+t")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the first teacher (default 0)")
    p.add_argument("--sigma1", type=positive_float, default=None, help="std of W1 entries (default 1/sqrt(N_i))")
    p.add_argument("--sigma2", type=positive_float, default=None, help="std of W2 entries (default 1/sqrt(N_h))")
    g = p.add_argument_group("inputs")
    g.add_argument("--samples", "-n", type=positive_int, default=None, help="batch size N for every cell (default max(OVERSAMPLE*P, 200) per cell)")
    g.add_argument("--oversample", type=positive_float, default=DEFAULT_OVERSAMPLE, help=f"default N as a multiple of P (default {DEFAULT_OVERSAMPLE})")
    g.add_argument("--data-seed", type=nonneg_int, default=0, help="seed of the inputs (default 0)")
    g.add_argument(
        "--samples-sweep",
        type=int_list,
        default=None,
        metavar="N1,N2,...",
        help="rank as a function of N for one (N_i, N_h): nested batches of these sizes",
    )
    g.add_argument("--population", action="store_true", help="exact population Hessian (N -> infinity) instead of a batch")
    p.add_argument("--rtol", type=positive_float, default=None, help="relative tolerance on singular values (default max(N,P)*eps)")
    p.add_argument("--min-gap", type=positive_float, default=MIN_GAP, help=f"smallest last-kept/first-dropped ratio counted as a clear cut (default {MIN_GAP:g})")
    p.add_argument("--chunk-size", type=positive_int, default=None, help="inputs per chunk of the Jacobian QR (default: by memory)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (add --values for the singular values)")
    p.add_argument("--values", action="store_true", help="with --json/--out: include every teacher's singular values")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON rows to this file (atomically)")
    p.set_defaults(func=run)


def _check_memory(args) -> None:
    """Refuse a sweep whose largest cell cannot fit: its inputs (N x N_i) and the P x P factor of J (nothing allocated)."""
    n_i, n_h = max(args.ni), max(args.nh)
    P = n_h * (n_i + 1)
    if args.population:
        return  # the population routes check their own dense matrices
    n = sweep_samples(P, samples=args.samples, samples_sweep=args.samples_sweep, oversample=args.oversample)
    require_memory(dense_bytes((n, n_i)) + dense_bytes(P, np.float64, 2), f"the largest cell (N_i={n_i}, N_h={n_h}, P={P}, N={n}: inputs and the P x P factor of J)",
                   ["smaller --ni/--nh", "fewer --samples or a smaller --oversample"], device="cpu" if args.device == "auto" else args.device)
    if args.teachers * len(args.ni) * len(args.nh) > MAX_SWEEP_VALUES * 10:
        raise NearoptError(f"{args.teachers} teachers x {len(args.ni)} x {len(args.nh)} sizes is more than {MAX_SWEEP_VALUES * 10} cells; narrow the sweep")


#: sweep options a --teacher file does not take (attribute, option, default)
_SWEEP_ONLY: tuple[tuple[str, str, object], ...] = (("ni", "--ni", None), ("nh", "--nh", None), ("samples", "--samples", None), ("samples_sweep", "--samples-sweep", None),
               ("population", "--population", False), ("sigma1", "--sigma1", None), ("sigma2", "--sigma2", None))


def _refuse_sweep_options(args) -> None:
    """One line for sweep options given with ``--teacher`` (which takes the file's own network)."""
    given = [opt for name, opt, default in _SWEEP_ONLY if getattr(args, name, default) not in (None, default)]
    if given:
        raise NearoptError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply with --teacher (the exact population Hessian of the file's network)")


def two_layer_rank(args) -> NetworkRank:
    """``--teacher`` a two-layer file (biases and outputs optional): its population Hessian's rank against a known formula."""
    _refuse_sweep_options(args)
    teacher = TwoLayerNet.load(args.teacher, get_activation(args.activation))
    law = GaussianInputs.load(args.input_cov, teacher.n_inputs) if args.input_cov else None
    return network_rank(Problem(teacher, inputs=law), RankPolicy(rtol=args.rtol, min_gap=args.min_gap))  # type: ignore[arg-type]  # None: N(0, I)


def two_layer_table(result: NetworkRank) -> str:
    """The human-readable comparison for a two-layer file."""
    d = result.decision
    what = ", ".join(result.features) or "the paper's network"
    verdict = ("no prediction to compare" if result.agrees is None else "ok: the measured rank is the prediction" if result.agrees else "MISMATCH")
    return "\n".join([f"two-layer network ({what})",
                      f"measured rank  {result.measured} of P = {result.n_params}  (eigenvalues by the rank policy; gap {_fmt_gap(d.gap)}, "
                      f"margin {d.margin:.2g}, {'clear' if d.clear else 'NOT clear'})",
                      f"predicted      {'none' if result.predicted is None else result.predicted}: {result.basis}", verdict])


def deep_rank(args) -> DeepLinearRank | NetworkRank:
    """``--teacher`` a deep linear file: measured against predicted rank (:func:`~nearopt.curvature.deep_linear.deep_linear_rank`)."""
    depth = deep_linear_depth(args.teacher)
    layers = "W1" if depth == 1 else f"W1 ... W{depth}"
    if depth is None:
        return two_layer_rank(args)
    if get_activation(args.activation).name != "linear":
        raise NearoptError(f"teacher file {args.teacher} holds a deep network ({layers}): deep networks are linear only here; use -a linear")
    _refuse_sweep_options(args)
    teacher = DeepLinearNet.load(args.teacher, "teacher")
    law = GaussianInputs.load(args.input_cov, teacher.n_inputs) if args.input_cov else None
    return deep_linear_rank(DeepLinearProblem(teacher, inputs=law), RankPolicy(rtol=args.rtol, min_gap=args.min_gap))  # type: ignore[arg-type]  # None: N(0, I)


def deep_linear_table(result: DeepLinearRank) -> str:
    """The human-readable comparison for a deep linear file."""
    d, c = result.decision, result.conditions
    lines = [f"deep linear network, widths {'-'.join(map(str, result.widths))} (L = {len(result.widths) - 1}, K = {result.widths[-1]}), rank Sigma = {result.rank_sigma}",
             f"measured rank  {result.measured} of P = {result.prediction.n_params}  (singular values of the Gauss-Newton factor; gap {_fmt_gap(d.gap)}, "
             f"margin {d.margin:.2g}, {'clear' if d.clear else 'NOT clear'})",
             f"predicted      {result.prediction.label()}: {result.prediction.basis}",
             f"conditions     rank A = {c['rank_A']} (min width {c['min_width']}), rank A Sigma^(1/2) = {c['rank_A_sqrt_sigma']} (q = {c['q']}): "
             + ("hold" if c["holds"] else "FAIL (non-generic weights: the formula is not guaranteed here)"),
             "ok: the measured rank is the prediction" if result.agrees else "MISMATCH"]
    return "\n".join(lines)


def compute(args) -> list[SweepRow]:
    act = get_activation(args.activation)
    if args.input_cov:
        raise NearoptError("--input-cov applies with --teacher (a deep linear file)")
    if args.ni is None or args.nh is None:
        raise NearoptError("give --ni and --nh (or --teacher with a deep linear file)")
    _check_memory(args)
    if args.samples_sweep is None:
        if args.population and args.samples is not None:
            raise NearoptError("choose one of --samples / --population")
        return rank_sweep(
            act,
            args.ni,
            args.nh,
            teachers=args.teachers,
            seed=args.seed,
            samples=args.samples,
            oversample=args.oversample,
            data_seed=args.data_seed,
            rtol=args.rtol,
            sigma1=args.sigma1,
            sigma2=args.sigma2,
            population=args.population,
            chunk_size=args.chunk_size,
            device=args.device,
            min_gap=args.min_gap,
        )
    if len(args.ni) != 1 or len(args.nh) != 1:
        raise NearoptError("--samples-sweep needs a single --ni and a single --nh")
    if args.population or args.samples is not None:
        raise NearoptError("--samples-sweep sets N itself; drop --samples/--population")
    per_teacher = []
    for t in range(args.teachers):
        net = sample_teacher(args.ni[0], args.nh[0], act, seed=args.seed + t, sigma1=args.sigma1, sigma2=args.sigma2)
        ms = rank_vs_samples(net, args.samples_sweep, data_seed=args.data_seed, rtol=args.rtol, chunk_size=args.chunk_size, device=args.device, min_gap=args.min_gap)
        for m in ms:
            m.teacher_seed = args.seed + t
        per_teacher.append(ms)
    return [SweepRow([ms[k] for ms in per_teacher]) for k in range(len(args.samples_sweep))]


def _fmt_gap(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x:.2g}"


def table(rows: list[SweepRow]) -> str:
    """The human-readable table (one line per row, then saturation, warnings and a verdict)."""
    first = rows[0].first
    route = "population Hessian" if first.route == "population" else "singular values of J/sqrt(N), float64"
    head = f"{'N_i':>4} {'N_h':>4} {'P':>6} {'N':>7} {'rank':>9} {'predicted':>16} {'gap':>8} {'margin':>8} {'clear':>5}  ok"
    lines = [f"activation {first.activation}   ({route}; {len(rows[0].measurements)} teacher(s) per row)", head, "-" * len(head)]
    for r in rows:
        lo, hi = min(r.ranks), max(r.ranks)
        rank = f"{lo}" if lo == hi else f"{lo}-{hi}"
        n = "pop" if r.first.n_samples is None else str(r.first.n_samples)
        lines.append(
            f"{r.first.n_inputs:>4} {r.first.n_hidden:>4} {r.first.n_params:>6} {n:>7} {rank:>9} {r.prediction.label():>16} "
            f"{_fmt_gap(r.smallest_gap):>8} {r.min_margin:>8.2g} {'yes' if r.all_clear else 'NO':>5}  {'ok' if r.agrees else 'MISMATCH'}"
        )
    lines.append("gap = last kept / first dropped singular value (inf: nothing dropped); margin = distance from the tolerance; clear: margin >= 10 and gap >= --min-gap")
    for n_i in dict.fromkeys(r.first.n_inputs for r in rows):
        sat = saturation_hidden(first.activation, n_i, max_hidden=200)
        if sat is not None:
            lines.append(f"prediction saturates at N_h = {sat} for N_i = {n_i} (more hidden units add no directions)")
    warnings = [f"N_i={r.first.n_inputs} N_h={r.first.n_hidden} N={r.first.n_samples or 'pop'}: {w}" for r in rows for w in r.warnings]
    if warnings:
        lines.append("warnings:")
        lines.extend(f"  {w}" for w in warnings)
    bad = sum(not r.agrees for r in rows)
    unclear = sum(not r.all_clear for r in rows)
    lines.append(
        f"{len(rows) - bad} of {len(rows)} rows agree with the prediction; "
        + ("all rank decisions clear" if not unclear else f"{unclear} row(s) WITHOUT a clear gap (rank uncertain)")
    )
    return "\n".join(lines)


def run(args) -> int:
    if args.teacher:
        result = deep_rank(args)
        if args.json:
            emit_json(result.to_dict(), args.out)
            return 0
        if args.out:
            io.write_json(args.out, result.to_dict())
        print(deep_linear_table(result) if isinstance(result, DeepLinearRank) else two_layer_table(result))
        return 0
    if args.ni is None or args.nh is None:
        raise NearoptError("give --ni and --nh (or --teacher with a deep linear file)")
    cause = f"activation {args.activation}, N_i in {args.ni[0]}..{args.ni[-1]}, N_h in {args.nh[0]}..{args.nh[-1]}"
    with numerics("the rank sweep", cause):
        rows = compute(args)
    require_finite(np.concatenate([m.singular_values for r in rows for m in r.measurements]), "singular values of the rank sweep", cause)
    data = [r.to_dict(values=args.values) for r in rows]
    if args.json:
        emit_json(data, args.out)
        return 0
    if args.out:
        io.write_json(args.out, data)
    print(table(rows))
    return 0
