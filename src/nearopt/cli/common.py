"""Options shared by several commands: the network and its inputs, and checks made before computing."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import (
    NearoptError,
    require_nonneg_finite,
    require_positive_finite,
    require_positive_int,
    require_squarable,
)
from ..model import io
from ..model.activations import available_activations, get_activation
from ..model.datasets import DATASETS, dataset_names
from ..model.datasets import load_inputs as load_dataset
from ..model.network import TwoLayerNet, sample_inputs, sample_teacher
from ..model.problem import GaussianInputs
from ..resources import dense_bytes, require_memory

__all__ = [
    "activation_from_args", "add_data_args", "add_input_cov_arg", "add_network_args", "add_teacher_size_args", "DENSE_COPIES", "emit_json", "emit_result",
    "input_law_from_args", "inputs_from_args", "network_from_args", "nonneg_float", "nonneg_int", "numerics", "positive_float", "positive_int",
    "require_dense_memory"
]

#: copies of a P x P float64 matrix a dense batch route holds at once (matrix,
#: factor or eigensolver workspace); a deliberate over- rather than under-estimate
DENSE_COPIES = 3


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


def _float_option(text: str, validate: Callable[[object, str], float]) -> float:
    """argparse type: ``text`` as a float checked by ``validate`` and :func:`~nearopt.errors.require_squarable`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    try:
        return require_squarable(validate(value, "the value"), "the value")
    except NearoptError as exc:  # argparse prefixes the option's name
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 whose square float64 holds."""
    return _float_option(text, require_positive_finite)


def nonneg_float(text: str) -> float:
    """argparse type: a finite float >= 0 whose square float64 holds."""
    return _float_option(text, require_nonneg_finite)


def activation_from_args(args: argparse.Namespace) -> None:
    """Take ``args.activation`` from a ``--student`` file that records it; refuse a ``-a`` that contradicts the file.

    Run before any work (:func:`nearopt.cli.app.preflight`) for the commands whose
    activation is required (:func:`add_network_args` without a default): a point
    saved by ``nearopt critical --save-point`` carries its activation, so ``-a`` is
    needed only for plain weight files.
    """
    if not getattr(args, "activation_required", False):
        return
    student = getattr(args, "student", None)
    saved = io.saved_activation(student) if student else None
    if saved is None:
        if args.activation is None:
            note = f" (student file {student} does not record its activation)" if student else ""
            raise NearoptError(f"the following arguments are required: --activation/-a{note}")
        return
    try:
        recorded = get_activation(saved)
    except NearoptError as exc:
        raise NearoptError(f"student file {student} records activation {saved!r}, which cannot be used: {exc}") from None
    if args.activation is not None and get_activation(args.activation).name != recorded.name:
        raise NearoptError(f"student file {student} was saved for activation {saved!r}, not {args.activation!r}: drop -a (the file's activation is used)")
    args.activation = saved


def add_teacher_size_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("random teacher")
    g.add_argument("--ni", type=positive_int, required=required, help="input width N_i")
    g.add_argument("--nh", type=positive_int, required=required, help="hidden width N_h")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed of the teacher weights (default 0)")
    g.add_argument("--sigma1", type=positive_float, default=None, help="std of W1 entries (default 1/sqrt(N_i))")
    g.add_argument("--sigma2", type=positive_float, default=None, help="std of W2 entries (default 1/sqrt(N_h))")


def add_network_args(p: argparse.ArgumentParser, activation_default: str | None = None) -> None:
    """``--activation`` plus either ``--ni/--nh/--seed`` or ``--teacher FILE``.

    Without ``activation_default`` the activation is required, unless a ``--student``
    file records it (:func:`activation_from_args`, run before the command).
    """
    p.add_argument(
        "--activation",
        "-a",
        default=activation_default,
        help=f"activation: {', '.join(available_activations())} (monomial:P, polynomial:c0,c1,..., erf:unit for erf(z), MODULE:FUNCTION)"
        + ("; required unless a --student file records it" if activation_default is None else ""),
    )
    p.set_defaults(activation_required=activation_default is None)
    add_teacher_size_args(p)
    p.add_argument("--teacher", metavar="FILE.npz", help="teacher weights instead of --ni/--nh: an .npz with W1 (N_h,N_i), W2 (M,N_h) and optionally b1, b2, "
                   "or a PyTorch state dict (.pt/.pth, torch.save(model.state_dict(), path))")


def add_data_args(p: argparse.ArgumentParser, population: bool = True, population_help: str = "exact population Hessian (N -> infinity)") -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--samples", "-n", type=positive_int, help="number N of Gaussian inputs x ~ N(0, I)")
    g.add_argument("--data-seed", type=nonneg_int, default=0, help="seed of the inputs (default 0)")
    g.add_argument(
        "--inputs",
        metavar="X.npy|NAME",
        help="use these (N, N_i) inputs instead of --samples, or a bundled data set by name "
        f"({', '.join(dataset_names())}; standardised and projected on its N_i leading principal components; needs the data extra)",
    )
    if population:
        g.add_argument("--population", action="store_true", help=population_help)


def add_input_cov_arg(p: argparse.ArgumentParser) -> None:
    """``--input-cov S.npy``: Gaussian inputs ``x ~ N(0, S)`` (for --population, or drawn by --samples)."""
    p.add_argument(
        "--input-cov",
        metavar="S.npy",
        help="inputs x ~ N(0, S) for this (N_i, N_i) symmetric positive semi-definite covariance: with --population the "
        "exact population Hessian under S, with --samples N a batch drawn from N(0, S)",
    )


def input_law_from_args(args: argparse.Namespace, n_inputs: int) -> GaussianInputs | None:
    """The ``--input-cov`` law (validated: square, ``N_i x N_i``, symmetric, PSD, finite), or ``None``."""
    path = getattr(args, "input_cov", None)
    if not path:
        return None
    if args.inputs:
        raise NearoptError("--input-cov describes Gaussian inputs: use it with --samples or --population, not --inputs")
    return GaussianInputs.load(path, n_inputs)


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
    law = input_law_from_args(args, net.n_inputs)
    if args.inputs:
        if args.inputs in DATASETS:
            return load_dataset(args.inputs, n_inputs=net.n_inputs)
        if not Path(args.inputs).exists():
            raise NearoptError(f"inputs file not found: {args.inputs}, nor is it a bundled data set ({', '.join(dataset_names())})")
        return io.load_inputs(args.inputs, net.n_inputs)
    if args.samples is not None:
        n = require_positive_int(args.samples, "--samples")
        require_memory(dense_bytes((n, net.n_inputs)), f"{n} inputs of width {net.n_inputs} (--samples)", "fewer --samples")
        return sample_inputs(n, net.n_inputs, seed=args.data_seed) if law is None else law.sample(n, seed=args.data_seed)
    return None


def require_dense_memory(n_params: int, what: str, alternatives: list[str], device: str = "cpu", copies: float = DENSE_COPIES) -> None:
    """Refuse (one line) before a dense ``P x P`` float64 route that cannot fit: see :func:`nearopt.resources.require_memory`."""
    dev = "cpu" if device in (None, "auto") else device
    require_memory(dense_bytes(n_params, np.float64, copies), f"{what} (P = {n_params}, {copies:g} dense P x P float64)", alternatives, device=dev)


@contextlib.contextmanager
def numerics(what: str, cause: str) -> Iterator[None]:
    """Turn failures of the linear algebra on non-finite or degenerate numbers into one-line errors naming ``cause``."""
    try:
        yield
    except (np.linalg.LinAlgError, torch.linalg.LinAlgError, FloatingPointError, ZeroDivisionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NearoptError(f"{what} failed ({msg}); input: {cause}") from None


def emit_json(data, out: str | None) -> None:
    """Print strict JSON to stdout, and write it atomically to ``out`` if given.

    Non-finite numbers are written as ``null`` and listed under ``"non_finite"``
    (:func:`nearopt.model.io.strict_jsonable`).
    """
    text = io.to_json(data, strict=True)
    if out:
        io.write_text(out, text + "\n")
    sys.stdout.write(text + "\n")


def emit_result(result: Any, table: Callable[[Any], str], args: argparse.Namespace) -> None:
    """Print ``result.to_dict()`` as strict JSON with ``--json`` (:func:`emit_json`), else the text ``table(result)``.

    ``--out`` gets the strict JSON either way (written atomically).
    """
    if args.json:
        emit_json(result.to_dict(), args.out)
        return
    if args.out:
        io.write_json(args.out, result.to_dict())
    print(table(result))
