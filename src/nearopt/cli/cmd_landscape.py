"""``nearopt landscape``: a many-start survey of the critical points of the exact population loss."""

from __future__ import annotations

import sys
import time

from ..errors import NearoptError, ResultFailure
from ..landscape.certificate import SUPPORTED, certify, require_supported
from ..landscape.critical import committee_teacher
from ..landscape.descent import SAFRAN_SHAMIR
from ..landscape.survey import require_fresh_family_folder, survey
from ..model import io
from ..model.activations import available_activations, get_activation
from ..model.network import TwoLayerNet
from .cmd_spectrum import TRAINED_ALIASES
from .common import emit_json, nonneg_int, positive_float, positive_int

__all__ = ["COMMAND", "ORDER", "register", "run", "teacher_from_args"]

COMMAND = "landscape"
ORDER = 26


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="many-start survey: batched gradient descent, Newton polish, classification and families of critical points",
        description="Draw R random students, run gradient descent on the exact population loss for all of them at once "
        "(torch, float64), polish every end point with Newton, classify it by the exact Hessian and group the points "
        "into families (same loss and spectrum up to symmetry). Defaults follow Safran & Shamir (2018): step 0.1, "
        "first-layer entries N(0, 1/N_i), stop when every unit's gradient norm is <= 1e-9, spurious when a converged run "
        "polishes to a minimum above the global level with loss >= 1e-3. Exit status 1 when no run ends at a minimum. "
        "Prints JSON (--json) or a table.",
    )
    t = p.add_argument_group("teacher")
    t.add_argument("--committee", type=positive_int, metavar="K",
                   help="the orthonormal committee sum_i g(x_i) (W1 = I (K, N_i), W2 = 1); the student's second layer is fixed to ones")
    t.add_argument("--ni", type=positive_int, metavar="N", help="input width N_i of --committee (default K)")
    t.add_argument("--teacher", metavar="T.npz", help="teacher weights W1 (M, N_i), W2 (1, M) instead of --committee")
    t.add_argument("--activation", "-a", default="relu", help=f"activation (default relu): {', '.join(available_activations())}")
    s = p.add_argument_group("survey")
    s.add_argument("--student-width", type=positive_int, metavar="K", help="student units (default: the teacher's)")
    s.add_argument("--starts", type=int, required=True, metavar="R", help="number of random starts")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of the starts (default 0)")
    s.add_argument("--trained", choices=sorted(TRAINED_ALIASES),
                   help="trained layers (default: first for --committee, both for --teacher)")
    s.add_argument("--lr", type=positive_float, help=f"fixed gradient-descent step (default {SAFRAN_SHAMIR.lr})")
    s.add_argument("--gtol", type=positive_float, help=f"largest per-unit gradient norm that ends a run (default {SAFRAN_SHAMIR.gtol:g})")
    s.add_argument("--max-steps", type=positive_int, help=f"most descent steps (default {SAFRAN_SHAMIR.max_steps})")
    s.add_argument("--handover", type=positive_float, metavar="G",
                   help="stop the descent at per-unit gradient norm G and let Newton finish (runs not at a strict minimum resume the "
                   "descent to --gtol); default: the full descent")
    s.add_argument("--spurious-loss", type=positive_float, help=f"a converged run polished to a minimum above the global level is spurious when its loss is >= this (default {SAFRAN_SHAMIR.spurious_loss:g})")
    s.add_argument("--device", default="cpu", help="torch device of the batched descent (default cpu)")
    o = p.add_argument_group("output")
    o.add_argument("--certify", action="store_true",
                   help="certify each family's representative as a strict local minimum (Newton-Kantorovich with a derived bound on the "
                   f"third derivatives; {', '.join(SUPPORTED)}): adds 'certificate' to each family")
    o.add_argument("--save-families", metavar="DIR", help="write each family's representative to DIR/family_NN.npz (a --student file)")
    o.add_argument("--json", action="store_true", help="print the full JSON (default: a table)")
    o.add_argument("--out", metavar="FILE.json", help="also write the JSON here")
    o.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def teacher_from_args(args) -> TwoLayerNet:
    if (args.committee is None) == (args.teacher is None):
        raise NearoptError("give exactly one of --committee K and --teacher T.npz")
    if args.committee is not None:
        return committee_teacher(args.committee, args.ni, args.activation)
    if args.ni is not None:
        raise NearoptError("--ni goes with --committee (a --teacher file fixes N_i)")
    return TwoLayerNet.load(args.teacher, get_activation(args.activation))


def _certificate_line(c: dict) -> str:
    if c["certified"]:
        return (f"certified strict minimum: within {c['radius']:.2g}, lambda_min >= {c['margin']:.4g}, only critical point within "
                f"{c['ball_radius']:.2g} (h = {c['h']:.2g}, L3 = {c['lipschitz']:.3g})")
    return f"not certified: {c['reason']}"


def _table(out: dict) -> str:
    lo, hi = out["spurious_fraction_ci"]
    lines = [f"{out['starts']} starts, K = {out['K']}, M = {out['M']}, N_i = {out['N_i']}, {out['activation']}, trained {out['trained']}: "
             f"{out['converged']} converged, {out['unconverged']} unconverged, {out['diverged']} diverged",
             f"spurious: {out['spurious']} ({100 * out['spurious_fraction']:.2f} %, 95 % Wilson interval {100 * lo:.2f}-{100 * hi:.2f} %; "
             "converged runs polished to a minimum above the global level)",
             *(f"note: {n}" for n in out["notes"]),
             f"{'count':>6} {'loss':>13} {'class':<28} {'index':>5} {'lambda_min':>11} {'lambda_max':>10}  multiplicities"]
    for f in out["families"]:
        lines.append(f"{f['count']:>6} {f['loss']:>13.6g} {f['classification']:<28} {f['index']:>5} {f['lambda_min']:>11.4g} {f['lambda_max']:>10.4g}  "
                     + " ".join(map(str, f["multiplicities"])))
        if "certificate" in f:
            lines.append(" " * 8 + _certificate_line(f["certificate"]))
    sec = out["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in sec.items()))
    return "\n".join(lines)


def run(args) -> int:
    if args.starts < 1:
        raise NearoptError(f"--starts must be >= 1, got {args.starts}")
    if args.out:
        io.check_output_path(args.out, suffix=".json")
    if args.save_families:
        io.check_output_path(args.save_families, directory=True)
        require_fresh_family_folder(args.save_families)
    teacher = teacher_from_args(args)
    if args.certify:
        require_supported(teacher.activation.name, "--certify")
    trained = {"W1": "first", "W2": "second"}.get(args.trained, TRAINED_ALIASES[args.trained]) if args.trained is not None else ("first" if args.committee is not None else "both")
    protocol = SAFRAN_SHAMIR.replace(lr=args.lr, gtol=args.gtol, max_steps=args.max_steps, spurious_loss=args.spurious_loss)
    if protocol != SAFRAN_SHAMIR:
        protocol = protocol.replace(name="custom")
    last = [0.0]

    def progress(msg: str) -> None:
        now = time.monotonic()
        if not args.quiet and (now - last[0] >= 5.0 or "done" in msg):
            last[0] = now
            sys.stderr.write(f"nearopt landscape: {msg}\n")

    t0 = time.perf_counter()
    s = survey(teacher, width=args.student_width, n_starts=args.starts, trained=trained, protocol=protocol, seed=args.seed, handover=args.handover,
               device=args.device, progress=progress)
    out = s.to_dict()
    if args.certify:
        t1 = time.perf_counter()
        for fam, d in zip(s.families, out["families"]):
            d["certificate"] = certify(fam.representative).to_dict()
        out["seconds"]["certify"] = time.perf_counter() - t1
    out["seconds"]["total"] = time.perf_counter() - t0
    if args.out:  # the results first: a failing family write must not lose them
        io.write_json(args.out, out)
    if args.save_families:
        out["family_files"] = [str(p) for p in s.save_families(args.save_families)]
    if args.json:
        emit_json(out, args.out)
    else:
        if args.out and args.save_families:
            io.write_json(args.out, out)
        sys.stdout.write(_table(out) + "\n")
    failure = s.failure()
    if failure is not None:
        raise ResultFailure(failure + "; try a smaller --lr or more --max-steps")
    return 0
