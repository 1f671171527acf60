"""``nearopt sgd``: SGD near the optimum, simulated and predicted (exact linearised and spectral)."""

from __future__ import annotations

import sys

import numpy as np

from ..dynamics.regime import describe_target
from ..dynamics.sgd import SAMPLING, run_sgd
from ..errors import NearoptError, ResultFailure, require_nonneg_finite
from ..model.network import check_finite
from ..model.problem import Problem
from .common import (
    add_input_cov_arg,
    add_network_args,
    emit_result,
    input_law_from_args,
    network_from_args,
    nonneg_int,
    numerics,
    positive_float,
    positive_int,
)

__all__ = ["argparse_inputs", "COMMAND", "compute", "ORDER", "register", "run", "table", "TRAINED"]

COMMAND = "sgd"
ORDER = 42
TRAINED = ("both", "first", "second")


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="SGD near the optimum: simulated runs against the exact and spectral predictions",
        description="R runs of SGD from theta* + delta_0 (delta_0 ~ N(0, sigma0^2 I) on the trained parameters) with "
        "batch B, learning rate eta and label noise sigma, on fresh inputs each step (online) or a fixed training set "
        "(--samples). Records the exact excess population loss (mean and standard error over runs) and predicts it "
        "from the linearised second-moment recursion: exact (true fourth moments of the Jacobian) and spectral "
        "(Gaussian-equivalent, from the Hessian's eigenvalues). Reports the stationary loss and the critical "
        "learning rate of both.",
    )
    add_network_args(p)
    add_input_cov_arg(p)
    p.add_argument("--lr", type=positive_float, required=True, help="learning rate eta > 0")
    p.add_argument("--batch", type=int, default=1, help="batch size B >= 1 (default 1)")
    p.add_argument("--steps", type=int, default=1000, help="SGD steps (default 1000)")
    p.add_argument("--sigma0", type=positive_float, default=1e-2, help="scale of the initial displacement delta_0 (default 1e-2)")
    p.add_argument("--noise", type=float, default=0.0, help="label noise sigma >= 0: y = f*(x) + sigma xi (default 0)")
    p.add_argument("--runs", type=int, default=100, help="independent runs R, simulated together (default 100)")
    p.add_argument("--run-seed", type=nonneg_int, default=0, help="seed of delta_0, the inputs and the label noise (default 0)")
    p.add_argument("--samples", type=positive_int, default=None, help="a fixed training set of N samples instead of fresh inputs (predictions are for online SGD only)")
    p.add_argument("--sampling", choices=[s for s in SAMPLING if s != "online"], default="replacement",
                   help="how batches visit the --samples training set: replacement (default) or epochs (without replacement)")
    p.add_argument("--trained", choices=TRAINED, default="both", help="which layers train (default both)")
    p.add_argument("--points", type=positive_int, default=30, help="log-spaced record steps (default 30)")
    p.add_argument("--target", type=positive_float, default=None, metavar="EPS",
                   help="report the steps to reach a mean excess loss EPS: predicted by each recursion, measured from the runs")
    p.add_argument("--no-exact", action="store_true", help="skip the exact linearised prediction (quadrature in the row space of W1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--track", type=positive_int, metavar="K", default=None, help="the curvature along the run: at each recorded step the K largest and K smallest eigenvalues of the exact population Hessian, its inertia, the loss and the eigenvectors' overlap with the teacher's rows (run 0); adds 'curvature' to the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown by default on a terminal)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.batch < 1:
        raise NearoptError(f"--batch must be >= 1, got {args.batch}")
    if args.steps < 1:
        raise NearoptError(f"--steps must be >= 1, got {args.steps}")
    if args.runs < 1:
        raise NearoptError(f"--runs must be >= 1, got {args.runs}")
    require_nonneg_finite(args.noise, "--noise")
    if args.samples is not None and args.batch > args.samples and args.sampling == "epochs":
        raise NearoptError(f"--batch {args.batch} exceeds the --samples {args.samples} of an epoch")


def compute(args):
    _check(args)
    net = network_from_args(args)
    check_finite(net, None)
    law = input_law_from_args(argparse_inputs(args), net.n_inputs)
    problem = Problem(net, inputs=law, trained=args.trained)
    cause = f"activation {net.activation.name}, N_i={net.n_inputs}, N_h={net.n_hidden}, eta={args.lr:g}, B={args.batch}"
    with numerics("the SGD prediction", cause):
        return run_sgd(
            problem, lr=args.lr, batch=args.batch, steps=args.steps, sigma0=args.sigma0, noise=args.noise,
            runs=args.runs, seed=args.run_seed, sampling="online" if args.samples is None else args.sampling,
            samples=args.samples, points=args.points, device=args.device, exact=not args.no_exact and "auto",
            progress=not args.quiet and sys.stderr.isatty(), track=args.track, target=args.target,
        )


def argparse_inputs(args):
    """``input_law_from_args`` reads ``args.inputs`` (batch files): this command has only ``--input-cov``."""
    if not hasattr(args, "inputs"):
        args.inputs = None
    return args


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}" if np.isfinite(x) else ("inf" if x > 0 else str(x))


def table(res) -> str:
    d = res.to_dict()
    head = (f"{d['activation']}  N_i={d['N_i']} N_h={d['N_h']} P={d['P']} ({d['trained']})  "
            f"{d['sampling']}{'' if d['samples'] is None else ' N=' + str(d['samples'])}  eta={d['lr']:.6g} B={d['batch']} "
            f"sigma={d['noise']:g} sigma0={d['sigma0']:g}  runs={d['runs']}  {d['device']}")
    lines = [head, f"{'step':>10} {'measured':>12} {'sem':>10} {'exact':>12} {'spectral':>12}"]
    steps = d["steps"]
    idx = np.unique(np.linspace(0, steps.size - 1, min(12, steps.size)).round().astype(int))
    for i in idx:
        flag = "" if d["mean_reliable"][i] else "  (mean not reliable: a few runs dominate or diverged)"
        ex = None if d["predicted"] is None else d["predicted"][i]
        sp = None if d["predicted_spectral"] is None else d["predicted_spectral"][i]
        lines.append(f"{steps[i]:>10d} {_fmt(d['loss'][i]):>12} {_fmt(d['loss_sem'][i]):>10} {_fmt(ex):>12} {_fmt(sp):>12}{flag}")
    lines.append(f"critical learning rate (batch {d['batch']}): exact {_fmt(d['critical_lr'])}, spectral {_fmt(d['critical_lr_spectral'])}")
    lines.append(f"stationary excess loss: exact {_fmt(d['stationary_loss'])}, spectral {_fmt(d['stationary_loss_spectral'])}")
    lines.append(f"late-time rate per step: exact {_fmt(d['late_rate'])}, spectral {_fmt(d['late_rate_spectral'])}, GD {_fmt(d['late_rate_gd'])}")
    lines.append(f"throughput {d['throughput_run_steps_per_s']:.3g} run-steps/s; diverged runs {d['diverged_runs']}")
    if d["target"] is not None:
        lines.append(describe_target(d["target"], "step"))
    lines.extend(f"note: {w}" for w in d["warnings"])
    if res.simulation.curvature is not None:
        lines.append(res.simulation.curvature.table())
    return "\n".join(lines)


def run(args) -> int:
    res = compute(args)
    emit_result(res, table, args)
    failure = res.failure()
    if failure is not None:
        raise ResultFailure(failure + "; try a smaller --lr or --noise")
    return 0
