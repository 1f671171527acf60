"""``nearopt reproduce``: run every experiment of the study and write the report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from ..errors import NearoptError
from ..pipeline import reproduce, summary_table
from .common import emit_json, nonneg_float, positive_float, positive_int

__all__ = [
    "add_run_args", "COMMAND", "command_line", "finish", "interrupted", "ORDER", "parse_overrides", "parse_value", "register", "run", "run_options",
    "split_setting"
]

COMMAND = "reproduce"
ORDER = 5


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON if it parses (``3``, ``0.5``, ``[1,2]``, ``true``, ``null``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_setting(text: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, parsed value)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise NearoptError(f"--set expects key=value, got {text!r}")
    return key.strip(), parse_value(value.strip())


def parse_overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["rank.teachers=3", ...]`` -> ``{"rank": {"teachers": 3}}``."""
    out: dict[str, dict[str, Any]] = {}
    for text in settings:
        target, value = split_setting(text)
        name, dot, key = target.partition(".")
        if not dot or not name or not key:
            raise NearoptError(f"--set expects EXPERIMENT.key=value, got {text!r}")
        out.setdefault(name, {})[key] = value
    return out


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared with ``nearopt experiment``: size, output, backend, cache."""
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="small configurations, minutes on 2 cores (default)")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="publication-size configurations")
    p.set_defaults(size="quick")
    p.add_argument("--out", default="results", metavar="DIR", help="output folder: DIR/<experiment>/ data and figures, DIR/cache/ finished cells (default results)")
    p.add_argument("--jobs", "-j", type=positive_int, default=None, metavar="N", help="local worker processes (default: all cores; 1 runs in this process); capped, with a note, by the cores and by the memory the cells need")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the cells on the Dask distributed scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786; needs nearopt[dask])")
    p.add_argument("--scheduler-timeout", type=positive_float, default=30.0, metavar="S", help="--scheduler: seconds for the whole connection, Dask handshake included (default 30)")
    p.add_argument("--worker-wait", type=_seconds_or_forever, default=60.0, metavar="S",
                   help="--scheduler: stop after S seconds with no worker connected (default 60); 'forever' keeps waiting")
    p.add_argument("--lock-wait", type=nonneg_float, default=0.0, metavar="S",
                   help="if another run is writing to --out, wait up to S seconds for it (default 0: stop at once)")
    p.add_argument("--no-cache", action="store_true", help="neither reuse nor store finished cells")
    p.add_argument("--fresh", action="store_true", help="recompute every cell (still storing the new results in the cache)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's record (checks, timings, provenance) as JSON instead of the table")
    p.set_defaults(out_is_dir=True)


def _seconds_or_forever(text: str) -> float | None:
    """argparse type of ``--worker-wait``: seconds > 0, or ``forever`` (``None``)."""
    return None if text.strip().lower() in ("forever", "inf") else positive_float(text)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`nearopt.pipeline.reproduce` common to ``reproduce`` and ``experiment``."""
    return {
        "jobs": args.jobs,
        "scheduler": args.scheduler,
        "cache": not args.no_cache,
        "fresh": args.fresh,
        "quiet": args.quiet or args.json,
        "scheduler_timeout": args.scheduler_timeout,
        "worker_wait": args.worker_wait,
        "lock_wait": args.lock_wait,
    }


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="regenerate every figure and number of the study, with a report of theory vs numerics",
        description="Run the study's experiments (cells in parallel, cached under OUT/cache so a rerun or an "
        "interrupted run resumes), then write OUT/report.html (self-contained), OUT/report.md and "
        "OUT/results.json. Exit status 0 if every check passes, 1 if one fails, 2 for bad input.",
    )
    add_run_args(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments (see `nearopt experiment --list`)")
    p.add_argument("--set", action="append", default=[], metavar="NAME.key=value", help="override one setting of one experiment (value as JSON, e.g. rank.teachers=3); repeatable")
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace, head: list[str]) -> str:
    """The run as a shell command (for provenance), from the parsed options."""
    parts = ["nearopt", *head, f"--{args.size}", "--out", args.out]
    for flag in ("jobs", "scheduler"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    parts += [f"--{f.replace('_', '-')}" for f in ("no_cache", "fresh") if getattr(args, f)]
    for s in args.set:
        parts += ["--set", s]
    return shlex.join(parts)


def finish(study, args, report_path) -> int:
    """Print the summary (or JSON) and return the exit status."""
    if args.json:
        emit_json({"passed": study.passed, "report": str(report_path), "provenance": study.provenance, "experiments": [r.to_dict(args.out) for r in study.runs]}, None)
    else:
        print(summary_table(study.runs))
        for r in study.runs:
            if r.error:
                print(f"{r.name}: error: {r.error}")
            for c in r.checks:
                if not c.passed:
                    print(f"{r.name}: FAILED {c.name}: measured {c.measured}, expected {c.expected} ({c.tolerance})")
        print(f"report: {report_path}")
    return 0 if study.passed else 1


def interrupted(out: str, exc: BaseException | None = None) -> int:
    why = "terminated" if type(exc).__name__ == "Terminated" else "interrupted"
    print(f"nearopt: {why}; workers stopped, finished cells are kept in {out}/cache, run the same command again to resume", file=sys.stderr)
    return 130


def run(args) -> int:
    overrides = parse_overrides(args.set)
    try:
        study = reproduce(
            args.only,
            args.size,
            overrides,
            args.out,
            command=command_line(args, ["reproduce"] + (["--only", *args.only] if args.only else [])),
            **run_options(args),
        )
    except KeyboardInterrupt as exc:
        return interrupted(args.out, exc)
    return finish(study, args, study.paths["html"])
