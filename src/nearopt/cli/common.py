"""Options shared by several commands: the network and its inputs."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import io
from ..activations import available_activations, get_activation
from ..errors import NearoptError, require_positive_int
from ..model import TwoLayerNet, sample_inputs, sample_teacher


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_teacher_size_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("random teacher")
    g.add_argument("--ni", type=positive_int, required=required, help="input width N_i")
    g.add_argument("--nh", type=positive_int, required=required, help="hidden width N_h")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed of the teacher weights (default 0)")
    g.add_argument("--sigma1", type=positive_float, default=None, help="std of W1 entries (default 1/sqrt(N_i))")
    g.add_argument("--sigma2", type=positive_float, default=None, help="std of W2 entries (default 1/sqrt(N_h))")


def add_network_args(p: argparse.ArgumentParser, activation_default: str | None = None) -> None:
    """``--activation`` plus either ``--ni/--nh/--seed`` or ``--teacher FILE``."""
    p.add_argument(
        "--activation",
        "-a",
        required=activation_default is None,
        default=activation_default,
        help=f"activation: {', '.join(available_activations())} (monomial:P, polynomial:c0,c1,..., erf:unit for erf(z))",
    )
    add_teacher_size_args(p)
    p.add_argument("--teacher", metavar="FILE.npz", help="teacher weights (W1 (N_h,N_i), W2 (1,N_h)) instead of --ni/--nh")


def add_data_args(p: argparse.ArgumentParser, population: bool = True, population_help: str = "exact population Hessian (N -> infinity)") -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--samples", "-n", type=positive_int, help="number N of Gaussian inputs x ~ N(0, I)")
    g.add_argument("--data-seed", type=nonneg_int, default=0, help="seed of the inputs (default 0)")
    g.add_argument("--inputs", metavar="X.npy", help="use these (N, N_i) inputs instead of --samples")
    if population:
        g.add_argument("--population", action="store_true", help=population_help)


def network_from_args(args: argparse.Namespace) -> TwoLayerNet:
    act = get_activation(args.activation)
    if args.teacher:
        if args.ni is not None or args.nh is not None:
            raise NearoptError("give either --teacher or --ni/--nh, not both")
        return TwoLayerNet.load(args.teacher, act)
    if args.ni is None or args.nh is None:
        raise NearoptError("give --ni and --nh (or --teacher FILE.npz)")
    return sample_teacher(args.ni, args.nh, act, seed=args.seed, sigma1=args.sigma1, sigma2=args.sigma2)


def inputs_from_args(args: argparse.Namespace, net: TwoLayerNet) -> np.ndarray | None:
    """The ``(N, N_i)`` inputs, or ``None`` for ``--population``."""
    chosen = [name for name, on in (("--samples", args.samples is not None), ("--inputs", bool(args.inputs)), ("--population", getattr(args, "population", False))) if on]
    if len(chosen) > 1:
        raise NearoptError(f"choose one of {' / '.join(chosen)}")
    if not chosen:
        opts = "--samples N, --inputs X.npy or --population" if hasattr(args, "population") else "--samples N or --inputs X.npy"
        raise NearoptError(f"say which inputs to use: {opts}")
    if args.inputs:
        return io.load_inputs(args.inputs, net.n_inputs)
    if args.samples is not None:
        return sample_inputs(require_positive_int(args.samples, "--samples"), net.n_inputs, seed=args.data_seed)
    return None


def emit_json(data, out: str | None) -> None:
    """Print JSON to stdout, and write it atomically to ``out`` if given."""
    text = io.to_json(data)
    if out:
        io.write_text(out, text + "\n")
    sys.stdout.write(text + "\n")
