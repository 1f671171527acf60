"""The ``nearopt`` command line: a thin layer over the Python API.

Each subcommand lives in its own module ``cmd_<name>.py`` of this package and exposes
``COMMAND`` (its name), ``ORDER`` (position in ``--help``) and
``register(subparsers)``, which adds a parser whose ``func`` default takes the
parsed arguments and returns an exit status. Modules are discovered
automatically.

Exit statuses:

* 0: a valid answer;
* 1: the command ran but its result is not what was asked (diverged, not
  converged, ...): :class:`nearopt.errors.ResultFailure`, raised after the
  partial result was printed or written; one line ``nearopt CMD: failed: ...``;
* 2: bad input or a computation the machine cannot hold
  (:class:`nearopt.errors.NearoptError`, including
  :class:`~nearopt.errors.ResourceError`, and usage errors): one line
  ``nearopt CMD: error: ...``;
* 130: SIGINT or SIGTERM, after the commands' ``finally`` blocks have stopped
  their workers;
* 141 (``128 + SIGPIPE``): the reader closed stdout (``nearopt ... | head``);
  nothing more is printed.

Output paths, devices and environment variables are checked before any
computation (:func:`preflight`). Warnings are held while the command runs and
printed (one line each, repeats counted) after it returns: a command that
fails with an error or :class:`~nearopt.errors.ResultFailure` prints its one
line and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
import warnings
from pathlib import Path

import torch

from .. import __version__
from ..errors import NearoptError, ResultFailure
from ..model import io
from ..resources import check_device, check_environment

__all__ = ["build_parser", "EXIT_BROKEN_PIPE", "main", "Parser", "preflight", "Terminated"]

#: exit status when the reader of stdout went away (128 + SIGPIPE, as for a process killed by it)
EXIT_BROKEN_PIPE = 141


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit status 2, naming the command they belong to.

    :func:`build_parser` gives the top-level parser ``commands``: the command parsers by name.
    """

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unknown options are reported by the command's parser (``nearopt spectrum: error: ...``)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = getattr(self, "commands", {}).get(getattr(ns, "command", None) or "", self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def _command_modules():
    mods = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("cmd_"):
            continue
        mod = importlib.import_module(f"{__package__}.{info.name}")
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
    parser.commands = dict(sub.choices)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks stop worker processes."""


def _on_sigterm(signum, frame):
    raise Terminated()


class _HeldWarnings:
    """Collects warnings as one line each (in order, repeats counted) to print after a successful command."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        self.lines[text] = self.lines.get(text, 0) + 1

    def print(self) -> None:
        for text, count in self.lines.items():
            print(f"nearopt: warning: {text}" + (f" ({count} times)" if count > 1 else ""), file=sys.stderr)


def _stdout_to_devnull() -> None:
    """Point file descriptor 1 at ``/dev/null`` so that the interpreter's final flush cannot fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests capture it)
        pass


def preflight(args: argparse.Namespace) -> None:
    """Checks made before any computation: the output path (file or folder), the device and the activation.

    A command marks its ``--out`` as a folder with ``set_defaults(out_is_dir=True)``
    and may require a suffix with ``set_defaults(out_suffix=".npz")``. Environment
    variables (``NEAROPT_MEMORY_LIMIT``) are validated here too, whether or not the
    command would read them. A ``--student`` file that records its activation gives
    ``--activation`` (:func:`nearopt.cli.common.activation_from_args`).
    """
    check_environment()
    # the numerical stack loads here, not for ``nearopt --help`` (as the command modules)
    importlib.import_module(".common", __package__).activation_from_args(args)
    if getattr(args, "device", None) is not None:
        args.device = check_device(args.device)
    out = getattr(args, "out", None)
    if out:
        io.check_output_path(out, directory=getattr(args, "out_is_dir", False), suffix=getattr(args, "out_suffix", None))


def _memory_hint(args: argparse.Namespace) -> str:
    """What to try after running out of memory: only the options this command has."""
    hints = ["smaller sizes"]
    if hasattr(args, "chunk_size"):
        hints.append("a smaller --chunk-size")
    if hasattr(args, "method"):
        hints.append("another --method")
    return "try " + (", ".join(hints[:-1]) + " or " + hints[-1] if len(hints) > 1 else hints[0])


def _describe_runtime_error(exc: RuntimeError, args: argparse.Namespace) -> str | None:
    """One line for torch's allocation failures (CPU or GPU); ``None`` for anything else (a bug)."""
    text = str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text:
        return "out of memory: " + text.strip().splitlines()[0][:200] + "; " + _memory_hint(args)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    held = _HeldWarnings()
    code, returned = 2, False
    with warnings.catch_warnings():
        warnings.showwarning = held.show
        try:
            preflight(args)
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            returned = True
        except BrokenPipeError:
            _stdout_to_devnull()
            code = EXIT_BROKEN_PIPE
        except ResultFailure as exc:
            print(f"nearopt {args.command}: failed: {' '.join(str(exc).split())}", file=sys.stderr)
            code = 1
        except NearoptError as exc:
            print(f"nearopt {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt as exc:
            why = "terminated" if isinstance(exc, Terminated) else "interrupted"
            print(f"nearopt {args.command}: {why}", file=sys.stderr)
            code = 130
        except MemoryError:
            print(f"nearopt {args.command}: error: out of memory; {_memory_hint(args)}", file=sys.stderr)
            code = 2
        except RuntimeError as exc:
            line = _describe_runtime_error(exc, args)
            if line is None:  # a bug: keep its traceback, and the warnings that may explain it
                held.print()
                raise
            print(f"nearopt {args.command}: error: {line}", file=sys.stderr)
            code = 2
        except Exception:
            held.print()
            raise
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    if returned:
        held.print()
    return code
