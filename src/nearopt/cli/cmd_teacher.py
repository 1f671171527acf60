"""``nearopt teacher``: sample a random teacher and write it to an .npz file."""

from __future__ import annotations

from ..model.network import sample_teacher
from ..resources import dense_bytes, require_memory
from .common import add_teacher_size_args

__all__ = ["COMMAND", "ORDER", "register", "run"]

COMMAND = "teacher"
ORDER = 10


def register(sub) -> None:
    p = sub.add_parser(
        COMMAND,
        help="sample a random teacher (W1, W2) and save it",
        description="Sample teacher weights W1 ~ N(0, sigma1^2) of shape (N_h, N_i) and W2 ~ N(0, sigma2^2) "
        "of shape (1, N_h), and write them to an .npz file (atomically).",
    )
    add_teacher_size_args(p, required=True)
    p.add_argument("--out", "-o", required=True, metavar="FILE.npz", help="output file (must end in .npz)")
    p.set_defaults(func=run, out_suffix=".npz")


def run(args) -> int:
    # the draw, its float64 copy and the .npz buffer of W1 (N_h, N_i) and W2 (1, N_h)
    require_memory(dense_bytes((args.nh, args.ni + 1), copies=3), f"a teacher of N_h = {args.nh}, N_i = {args.ni}", "smaller --ni/--nh")
    net = sample_teacher(args.ni, args.nh, "linear", seed=args.seed, sigma1=args.sigma1, sigma2=args.sigma2)
    net.save(args.out)
    print(f"wrote teacher N_i={net.n_inputs} N_h={net.n_hidden} P={net.n_params} seed={args.seed} to {args.out}")
    return 0
