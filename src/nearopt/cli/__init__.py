"""The ``nearopt`` command line: a thin layer over the Python API.

:func:`main` answers ``nearopt --version`` at once, without importing the numerical
stack, and hands everything else to :mod:`nearopt.cli.app` (the parser, the
command modules ``cmd_<name>.py``, error and signal handling).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .. import __version__

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``nearopt ARGS`` (default ``sys.argv[1:]``); returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        print(f"nearopt {__version__}")
        return 0
    return int(importlib.import_module(f"{__name__}.app").main(argv))


def build_parser() -> Any:
    """The full argument parser of every command (built by ``nearopt.cli.app``)."""
    return importlib.import_module(f"{__name__}.app").build_parser()
