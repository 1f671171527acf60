"""The ``nearopt`` command line: a thin layer over the Python API.

Each subcommand lives in its own module ``cmd_<name>.py`` of this package and exposes
``COMMAND`` (its name), ``ORDER`` (position in ``--help``) and
``register(subparsers)``, which adds a parser whose ``func`` default takes the
parsed arguments and returns an exit status. Modules are discovered
automatically.

Errors in user input (:class:`nearopt.errors.NearoptError`) become one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..errors import NearoptError


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NearoptError as exc:
        print(f"nearopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nearopt {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"nearopt {args.command}: error: out of memory; try smaller sizes or another --method", file=sys.stderr)
        return 2
