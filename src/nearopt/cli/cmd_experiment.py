"""``nearopt experiment``: list the experiments, or run one through the cached parallel runner."""

from __future__ import annotations

from pathlib import Path

from ..errors import NearoptError
from ..experiments.base import NOT_APPLICABLE
from ..pipeline import get, reproduce, study_experiments
from .cmd_reproduce import (
    add_run_args,
    command_line,
    finish,
    interrupted,
    run_options,
    split_setting,
)
from .common import positive_int

__all__ = ["COMMAND", "list_experiments", "ORDER", "register", "run"]

COMMAND = "experiment"
ORDER = 6


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="run one experiment of the study (or --list them)",
        description="Run one registered experiment through the same cached, parallel runner as `nearopt reproduce`; "
        "its data, figures, result.json and a one-experiment report.html go to OUT/NAME/. "
        "Exit status 0 if every check passes, 1 if one fails, 2 for bad input.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the experiment to run")
    p.add_argument("--list", action="store_true", help="list the experiments with their descriptions and cell counts, then exit")
    add_run_args(p)
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="override one setting (value as JSON, e.g. teachers=3); repeatable")
    p.add_argument("--teachers", type=positive_int, metavar="T", help="shortcut for --set teachers=T (experiments with that setting)")
    p.set_defaults(func=run)


def list_experiments() -> int:
    exps = study_experiments() + [get("selftest")]
    width = max(len(e.name) for e in exps)
    for e in exps:
        counts = "/".join(str(len(e.cells(e.config(size)))) for size in ("quick", "full"))
        print(f"{e.name.ljust(width)}  {e.description} [cells quick/full: {counts}]")
    return 0


def run(args) -> int:
    if args.list:
        if args.name:
            raise NearoptError("give either --list or an experiment NAME, not both")
        return list_experiments()
    if not args.name:
        raise NearoptError("name an experiment to run (see `nearopt experiment --list`)")
    exp = get(args.name)
    overrides = dict(split_setting(s) for s in args.set)
    if args.teachers is not None:
        if "teachers" not in exp.quick:
            raise NearoptError(f"experiment {exp.name} has no 'teachers' setting; --teachers does not apply")
        overrides["teachers"] = args.teachers
    out_dir = Path(args.out) / exp.name
    try:
        study = reproduce(
            [exp.name],
            args.size,
            {exp.name: overrides} if overrides else None,
            args.out,
            command=command_line(args, ["experiment", exp.name]),
            report_root=out_dir,
            title=f"nearopt experiment {exp.name}",
            **run_options(args),
        )
    except KeyboardInterrupt as exc:
        return interrupted(args.out, exc)
    if not args.json:
        for c in study.runs[0].checks:
            if c.measured == NOT_APPLICABLE:
                print(f"n/a   {c.name}: {c.detail}")
            else:
                print(f"{'pass' if c.passed else 'FAIL'}  {c.name}: measured {c.measured}, expected {c.expected} ({c.tolerance})")
    return finish(study, args, study.paths["html"])
