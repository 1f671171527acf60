"""``nearopt ode``: the order-parameter ODEs of online SGD from given weights, and the plateau they pass."""

from __future__ import annotations

import numpy as np

from ..dynamics.ode import ODE_TRAINED
from ..dynamics.plateau import ODERun, run_ode
from ..errors import NearoptError
from ..model import io
from ..model.activations import get_activation
from ..model.network import TwoLayerNet
from .common import emit_result, nonneg_float, numerics, positive_float, positive_int

__all__ = ["COMMAND", "compute", "ORDER", "register", "run", "table"]

COMMAND = "ode"
ORDER = 44


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="order-parameter ODEs of online SGD from given weights: the error, Q, R, v and the plateau",
        description="Integrates the order-parameter ODEs of online SGD (inputs x ~ N(0, I_N), step ETA/N on every trained "
        "parameter, alpha = steps/N, N -> infinity) from the student's weights: Q = W1 W1^T, R = W1 T^T in the weights' own "
        "scale, v the second layer. Prints alpha, eps, Q, R, v at the recorded alphas and, where the trajectory passes a "
        "plateau, the fixed point's error and unstable rate per unit alpha (docs/learning.md).",
    )
    p.add_argument("--activation", "-a", required=True, help="activation of teacher and student (erf: erf(z/sqrt 2))")
    p.add_argument("--teacher", metavar="T.npz", required=True, help="teacher weights: W1 (M, N_i), W2 (1, M) or (M,)")
    p.add_argument("--student", metavar="S.npz", required=True, help="student weights: W1 (K, N_i), W2 (1, K) or (K,)")
    p.add_argument("--lr", type=positive_float, required=True, help="eta~ > 0: the SGD step is eta~ / N_i")
    p.add_argument("--trained", choices=ODE_TRAINED, default="both", help="both layers (default) or first (the soft committee machine)")
    p.add_argument("--noise", type=nonneg_float, default=0.0, help="label noise sigma >= 0 (default 0)")
    p.add_argument("--alpha", type=positive_float, required=True, help="horizon alpha = steps / N_i")
    p.add_argument("--points", type=positive_int, default=200, help="recorded alphas, evenly spaced from 0 (default 200, >= 2)")
    p.add_argument("--target", type=positive_float, default=None, metavar="EPS", help="also the first alpha where the error reaches EPS")
    p.add_argument("--track", type=positive_int, metavar="K", default=None, help="the curvature along the trajectory: at each recorded alpha the K largest and "
                   "K smallest eigenvalues of the exact population Hessian at weights with those Q, R, v (in the teacher's inputs), its inertia, "
                   "the loss and the eigenvectors' overlap with the teacher's rows; adds 'curvature' to the JSON")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=run)


def _networks(args) -> tuple[TwoLayerNet, TwoLayerNet]:
    act = get_activation(args.activation)
    teacher = TwoLayerNet.load(args.teacher, act)
    arrays = io.load_weights(args.student, role="student")
    if arrays["W1"].shape[1] != teacher.n_inputs:
        raise NearoptError(f"student file {args.student} has N_i = {arrays['W1'].shape[1]}; the teacher has N_i = {teacher.n_inputs}")
    return teacher, TwoLayerNet(arrays["W1"], arrays["W2"], act, arrays.get("b1"), arrays.get("b2"))


def compute(args) -> ODERun:
    if args.points < 2:
        raise NearoptError(f"--points must be >= 2, got {args.points}")
    teacher, student = _networks(args)
    with numerics("the order-parameter ODEs", f"activation {teacher.activation.name}, K={student.n_hidden}, M={teacher.n_hidden}, eta~={args.lr:g}"):
        return run_ode(teacher, student, lr=args.lr, alpha=args.alpha, points=args.points, trained=args.trained, noise=args.noise, target=args.target,
                       track=args.track)


def table(res: ODERun) -> str:
    d = res.to_dict()
    lines = [f"{d['activation']}  K={d['K']} M={d['M']} N_i={d['N_i']} ({d['trained']})  eta~={d['lr']:g} sigma={d['noise']:g}",
             f"{'alpha':>12} {'eps':>14}"]
    idx = np.unique(np.linspace(0, d["alpha"].size - 1, min(12, d["alpha"].size)).round().astype(int))
    lines.extend(f"{d['alpha'][i]:>12.6g} {d['eps'][i]:>14.6g}" for i in idx)
    p = d["plateau"]
    if p is None:
        lines.append("plateau: none")
    else:
        lines.append(f"plateau: eps {p['eps']:.6g} from alpha {p['alpha_start']:.6g} to {p['alpha_end']:.6g}; "
                     f"unstable rate {p['unstable_rate']:.6g} per unit alpha (the error's deviation: twice that)")
    if "target" in d:
        hit = d["alpha_target"]
        lines.append(f"eps reaches {d['target']:g} at alpha " + ("-" if hit is None else f"{hit:.6g}") + ("" if hit is not None else " (not within the horizon)"))
    if res.curvature is not None:
        lines.append(res.curvature.table())
    return "\n".join(lines)


def run(args) -> int:
    emit_result(compute(args), table, args)
    return 0
