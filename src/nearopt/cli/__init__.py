"""The ``nearopt`` command line: a thin layer over the Python API.

Each subcommand lives in its own module ``cmd_<name>.py`` of this package and exposes
``COMMAND`` (its name), ``ORDER`` (position in ``--help``) and
``register(subparsers)``, which adds a parser whose ``func`` default takes the
parsed arguments and returns an exit status. Modules are discovered
automatically.

Errors in user input (:class:`nearopt.errors.NearoptError`, including
:class:`~nearopt.errors.ResourceError`) become one line on stderr and exit
status 2; SIGINT and SIGTERM exit with status 130 after the commands' ``finally``
blocks have stopped their workers. Output paths and devices are checked before
any computation (:func:`preflight`); warnings are printed as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
import warnings

import torch

from .. import __version__, io
from ..errors import NearoptError
from ..resources import check_device


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _command_modules():
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("cmd_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.COMMAND))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nearopt",
        description="Hessian spectra and learning dynamics of teacher-student networks near the optimum.",
    )
    parser.add_argument("--version", action="version", version=f"nearopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for mod in _command_modules():
        mod.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks stop worker processes."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"nearopt: warning: {text}", file=file or sys.stderr)


def preflight(args: argparse.Namespace) -> None:
    """Checks made before any computation: the output path (file or folder) and the device.

    A command marks its ``--out`` as a folder with ``set_defaults(out_is_dir=True)``
    and may require a suffix with ``set_defaults(out_suffix=".npz")``.
    """
    if getattr(args, "device", None) is not None:
        args.device = check_device(args.device)
    out = getattr(args, "out", None)
    if out:
        io.check_output_path(out, directory=getattr(args, "out_is_dir", False), suffix=getattr(args, "out_suffix", None))


def _describe_runtime_error(exc: RuntimeError) -> str | None:
    """One line for torch's allocation failures (CPU or GPU); ``None`` for anything else (a bug)."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text:
        return "out of memory: " + text.strip().splitlines()[0][:200] + "; try smaller sizes, a smaller --chunk-size or another --method"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            preflight(args)
            return int(args.func(args) or 0)
        except NearoptError as exc:
            print(f"nearopt {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            why = "terminated" if isinstance(exc, Terminated) else "interrupted"
            print(f"nearopt {args.command}: {why}", file=sys.stderr)
            return 130
        except MemoryError:
            print(f"nearopt {args.command}: error: out of memory; try smaller sizes or another --method", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            line = _describe_runtime_error(exc)
            if line is None:
                raise
            print(f"nearopt {args.command}: error: {line}", file=sys.stderr)
            return 2
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
