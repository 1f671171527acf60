"""``nearopt dynamics``: train from theta* + delta_0 and compare with the quadratic prediction.

Exit status 1 (after the table or JSON, whose curves end where training stopped)
when training diverged: the quadratic prediction then describes nothing.
"""

from __future__ import annotations

import sys

import numpy as np

from ..dynamics import make_objective, run_dynamics
from ..dynamics.regime import describe_target
from ..errors import NearoptError, ResultFailure, require_finite
from ..model.network import check_finite
from ..resources import dense_bytes, require_memory
from .common import (
    add_data_args,
    add_network_args,
    emit_result,
    inputs_from_args,
    network_from_args,
    nonneg_int,
    numerics,
    positive_float,
    positive_int,
    require_dense_memory,
)

__all__ = ["COMMAND", "compute", "divergence", "ORDER", "register", "run", "table"]

COMMAND = "dynamics"
ORDER = 40


def _auto_or_float(text: str):
    return "auto" if text == "auto" else positive_float(text)


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="train near the optimum and compare with the Hessian's prediction",
        description="Full-batch gradient descent (or gradient flow with --flow) of K students started at "
        "theta* + delta_0, delta_0 ~ N(0, sigma0^2 I), on a batch (--samples/--inputs) or the population loss "
        "(--population: closed form for linear/quadratic, a fixed 100000-input sample otherwise). Prints measured "
        "and predicted <L_t> and the late-time slope against -2 eta lambda_min^+.",
    )
    add_network_args(p)
    add_data_args(p, population_help="train on the population loss (N -> infinity): closed form for linear/quadratic, a fixed 100000-input Gaussian sample otherwise")
    p.add_argument("--sigma0", type=positive_float, default=1e-3, help="scale of the initial displacement delta_0 (default 1e-3)")
    p.add_argument("--layer-scales", type=positive_float, nargs=2, metavar=("A1", "A2"), default=None,
                   help="multiply sigma0 by A1 on W1 and A2 on W2 (default: isotropic)")
    p.add_argument("--lr", type=_auto_or_float, default="auto", help="step size eta, or auto (default) = 1/lambda_max; GD needs eta < 2/lambda_max")
    p.add_argument("--steps", type=_auto_or_float, default="auto",
                   help="horizon: GD steps or flow time in the same units; auto (default) runs into the late-time regime")
    p.add_argument("--flow", action="store_true", help="gradient flow by a stiff integrator (for badly conditioned Hessians)")
    p.add_argument("--integrator", default="BDF", choices=("BDF", "Radau", "LSODA"), help="stiff integrator of --flow (default BDF)")
    p.add_argument("--rtol", type=positive_float, default=1e-9, help="relative tolerance of the flow integrator (default 1e-9)")
    p.add_argument("--draws", type=positive_int, default=8, help="number K of initial displacements (default 8)")
    p.add_argument("--draw-seed", type=nonneg_int, default=0, help="seed of the displacements delta_0 (default 0)")
    p.add_argument("--points", type=positive_int, default=40, help="log-spaced record times (default 40)")
    p.add_argument("--track", type=positive_int, metavar="K", default=None, help="the curvature along the run: at each recorded time the K largest and K smallest eigenvalues of the exact population Hessian, its inertia, the loss and the eigenvectors' overlap with the teacher's rows (draw 0); adds 'curvature' to the JSON")
    p.add_argument("--target", type=positive_float, default=None, metavar="EPS",
                   help="report the time (GD steps or flow time) to reach a mean loss EPS: predicted and measured")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown by default on a terminal)")
    p.add_argument("--json", action="store_true", help="print the measured and predicted curves and the slope fit as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=run)


def compute(args):
    net = network_from_args(args)
    # the quadratic prediction diagonalises the P x P Hessian
    require_dense_memory(net.n_params, "the Hessian eigendecomposition of the prediction", ["smaller --ni/--nh"])
    # K trajectories of P parameters (state, gradient, displacement, prediction) and K x points loss records
    require_memory(dense_bytes((args.draws, 4 * net.n_params + 2 * args.points)), f"{args.draws} draws (--draws)", "fewer --draws")
    X = inputs_from_args(args, net)
    check_finite(net, X)
    cause = f"activation {net.activation.name}, N_i={net.n_inputs}, N_h={net.n_hidden}, {'population' if X is None else f'N={X.shape[0]}'}"
    with numerics("the dynamics", cause):
        res = _run(args, net, X)
    d = res.to_dict(arrays=False)
    require_finite([d["lambda_max"], d["lr"]], "Hessian eigenvalues and step size of the dynamics", cause)
    require_finite(res.predicted_mean, "predicted loss curve", cause)
    return res


def _run(args, net, X):
    obj = make_objective(net, X)
    return run_dynamics(
        net,
        objective=obj,
        sigma0=args.sigma0,
        lr=args.lr,
        steps=args.steps,
        draws=args.draws,
        flow=args.flow,
        seed=args.draw_seed,
        points=args.points,
        layer_scales=tuple(args.layer_scales) if args.layer_scales else None,
        method=args.integrator,
        rtol=args.rtol,
        progress=not args.quiet and sys.stderr.isatty(),
        track=args.track,
        target=args.target,
    )


def table(res) -> str:
    d = res.to_dict(arrays=False)
    lt = d["late_time"]
    lines = [
        (
            f"{d['activation']}  N_i={d['N_i']} N_h={d['N_h']} P={d['P']}  {d['objective']} (N={d['samples'] or 'inf'})  {d['integrator']}  "
            f"eta={d['lr']:.6g} (< 2/lambda_max = {d['stable_lr_bound']:.6g})  sigma0={d['sigma0']:g}  draws={d['draws']}"
        ),
        f"rank {d['rank']}  lambda_max {d['lambda_max']:.6g}  lambda_min+ {d['lambda_min_nonzero']:.6g}  condition {d['condition_number']:.3g}  float floor {d['float_floor']:.2g}",
        f"{'t':>12} {'measured <L>':>14} {'predicted <L>':>14} {'same draws':>14}",
    ]
    idx = np.unique(np.linspace(0, res.times.size - 1, min(12, res.times.size)).round().astype(int))
    pd = res.predicted_draw.mean(0)
    stopped = "  (training diverged before this time)" if res.diverged else "  (a draw stalled before this time)"
    for i in idx:
        finite = bool(np.isfinite(res.mean_loss[i]))
        flag = "" if res.valid[i] else "  (below float floor)" if finite else stopped
        measured = f"{res.mean_loss[i]:14.6e}" if finite else f"{'-':>14}"
        lines.append(f"{res.times[i]:12.6g} {measured} {res.predicted_mean[i]:14.6e} {pd[i]:14.6e}{flag}")
    lines.append(f"max rel. error per draw vs its quadratic prediction: {d['max_rel_error_per_draw']:.3g}; "
                 f"<L> vs ensemble formula: {d['max_rel_error_mean']:.3g} (sampling noise ~ sqrt(2/K))")
    if res.diverged:
        pass  # the one failure line on stderr says it (see divergence())
    elif lt["reached"]:
        lines.append(f"late-time slope {lt['slope_measured']:.6g} over t in [{lt['window'][0]:.4g}, {lt['window'][1]:.4g}]: "
                     f"-2 eta lambda_min+ = {-lt['rate_continuous']:.6g} (rel. err {lt['rel_error_vs_continuous']:.2e}), "
                     f"exact {'flow' if res.flow else 'GD'} rate {-lt['rate_exact']:.6g} (rel. err {lt['rel_error_vs_exact']:.2e})")
    else:
        lines.append("late-time regime not reached before the horizon or the float floor; try more --steps (or --flow)")
    if d["target"] is not None:
        lines.append(describe_target(d["target"], "t" if res.flow else "step"))
    if d["stalled_draws"]:
        at = ", ".join(f"draw {x['draw']} at t={x['time']:.4g}" for x in d["stalled_draws"])
        lines.append(f"integrator stalled near the rounding level ({at}); later points of those draws are left out")
    if res.curvature is not None:
        lines.append(res.curvature.table())
    return "\n".join(lines)


def divergence(res) -> str:
    """The failure line of a diverged run: when, and what to change."""
    recorded = np.flatnonzero(np.all(np.isfinite(res.loss), axis=0))
    last = f"t = {res.times[recorded[-1]]:.6g}" if recorded.size else "the start"
    return (f"training diverged after {last} (the loss became non-finite or grew 10^6-fold): the quadratic picture does not "
            f"apply at sigma0 = {res.sigma0:g}, eta = {res.lr:.6g}; try a smaller --sigma0 or --lr")


def run(args) -> int:
    if args.steps != "auto" and args.steps < 1:
        raise NearoptError(f"--steps must be >= 1, got {args.steps}")
    res = compute(args)
    emit_result(res, table, args)
    if res.diverged:
        raise ResultFailure(divergence(res))
    return 0
