"""Benchmark: the Newton polish's ReLU Hessian product, worked out by hand, against the products derived from the one gradient.

The polish (:mod:`nearopt.landscape.polish`) solves ``H s = -g`` by MINRES, one Hessian product per
iteration. For the ReLU committee with ``v`` fixed it applies ``_ReluHessian`` (the differential of
:func:`nearopt.gaussian.kernels.relu_terms` worked out once, every point-only term computed once per
Newton step); the products derived by automatic differentiation from the gradient itself are

* ``forward``: the forward-mode derivative of the gradient (``_Gradient.forward_hessian``, what every
  other activation and block uses), which recomputes the gradient's point-only terms per product;
* ``linearize``: ``torch.func.linearize`` of the gradient at the point (traced once per Newton step and
  chunk, the point-only part folded into constants; each product re-runs the linearised graph).

1. Per-product cost at ``R = --points`` points (default 64), ``k = 6`` and ``k = 20``, ``d = k`` and ``k + 1``
   (one torch thread, best of 3 of ``--repeats`` products): milliseconds per product of each engine,
   the set-up of ``linearize``, each derived cost divided by the hand-written one (ratios of this run),
   and each engine's largest difference from ``forward``.
2. ``--cells K,N ...``: survey cells of the Safran-Shamir table (1000 starts, seed ``k``, ``1000 + k``
   for ``n = k + 1``, the experiment's protocol) run with the hand-written product and with the
   ``forward`` product (``--derived forward,linearize`` adds ``linearize``), alternating in this
   process; the seconds of each, of its Newton phase, the ratio ``hand / derived`` (the derived route's
   speed relative to the hand-written one: ``>= 1.0`` when not slower), and whether the spurious counts
   and families agree.

    PYTHONPATH=src python benchmarks/bench_polish_hvp.py [--points 64] [--out FILE.json]
    PYTHONPATH=src python benchmarks/bench_polish_hvp.py --cells 8,8 10,10

Records (2-core x86_64 CPU VM, one torch thread):

| date | what | value | target |
|---|---|---|---|
| 2026-12-07 | per product, R = 64; k, d = 6, 6 / 6, 7 / 20, 20 / 20, 21: forward / hand (load average 2.1) | 18.9x / 17.7x / 10.6x / 9.0x | ~1.0 |
| 2026-12-07 | same run: linearize / hand; linearize set-up per point batch | 3.3x / 3.3x / 2.0x / 2.6x; 270-530 ms | ~1.0 |
| 2026-12-07 | same run, cells 8,8 and 10,10 (--cells): survey seconds hand / forward (Newton phase hand -> forward) | 3.7 s / 4.7 s = 0.81x (0.13 s -> 1.16 s), 6.9 s / 7.5 s = 0.92x (0.31 s -> 1.42 s); same spurious counts and families | >= 1.0: not met |
| 2026-12-07 | cells 8,8 and 10,10 (--cells --derived forward,linearize, load average 3.0-4.5): hand / forward, hand / linearize | 0.93x, 0.30x (Newton 0.20 s -> 1.55 s, 13.8 s); 0.96x, 0.44x (Newton 0.53 s -> 2.50 s, 18.4 s) | >= 1.0: not met |

The hand-written product is kept: every derived one makes the survey slower (0.78x-0.96x with forward
mode over these runs and one of separate processes at load average 0.6: 10.5 s / 13.5 s and 6.5 s / 7.6 s).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from nearopt.landscape import polish
from nearopt.landscape.critical import committee_teacher
from nearopt.landscape.descent import SAFRAN_SHAMIR
from nearopt.landscape.survey import survey
from nearopt.model.network import io

SIZES = [(6, 6), (6, 7), (20, 20), (20, 21)]
TABLE_STARTS = 1000


def point(R: int, k: int, d: int, seed: int = 0) -> tuple[polish._Gradient, torch.Tensor, torch.Tensor]:
    """``R`` students ``(k, d)`` near the committee teacher ``I_k`` (unit second layer): the gradient, ``theta`` ``(R, k d)``, its rows."""
    rng = np.random.default_rng(seed)
    T, u = torch.eye(k, d, dtype=torch.float64), torch.ones(k, dtype=torch.float64)
    W = torch.as_tensor(np.eye(k, d) + rng.normal(scale=d**-0.5, size=(R, k, d)))
    v = torch.ones(R, k, dtype=torch.float64)
    g = polish._Gradient("relu", T, u, W, v, "first")
    return g, g.theta(W, v), torch.arange(R)


def linearized(g: polish._Gradient, theta: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> H x`` from ``torch.func.linearize`` of the gradient at ``theta``."""
    return torch.func.linearize(lambda t: g(t, rows), theta)[1]


def per_product(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Seconds per product, best of 3 of ``repeats`` products (after one warm-up)."""
    f(x)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            f(x)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def product_costs(R: int, k: int, d: int, repeats: int) -> dict:
    """Section 1 at one size."""
    g, theta, rows = point(R, k, d)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=theta.shape))
    with torch.no_grad():
        engines = {"hand": g.hessian(theta, rows), "forward": g.forward_hessian(theta, rows)}
        assert isinstance(engines["hand"], polish._ReluHessian)
        linearized(g, theta, rows)  # first trace: warm-up of the tracer
        t0 = time.perf_counter()
        engines["linearize"] = linearized(g, theta, rows)
        setup = time.perf_counter() - t0
        ref = engines["forward"](x)
        out = {"R": R, "k": k, "d": d, "linearize_setup_s": setup}
        for name, f in engines.items():
            out[f"{name}_s"] = per_product(f, x, repeats)
            out[f"{name}_max_diff"] = float((f(x) - ref).abs().max() / ref.abs().max())
    out["forward_over_hand"] = out["forward_s"] / out["hand_s"]
    out["linearize_over_hand"] = out["linearize_s"] / out["hand_s"]
    return out


@contextlib.contextmanager
def polish_product(engine: str) -> Iterator[None]:
    """The polish's ReLU Hessian product replaced by a derived one (``forward``, ``linearize``) while inside; ``hand`` leaves it."""
    hand = polish._Gradient.hessian
    derived = {"hand": hand, "forward": polish._Gradient.forward_hessian, "linearize": linearized}[engine]
    polish._Gradient.hessian = derived  # type: ignore[method-assign]
    try:
        yield
    finally:
        polish._Gradient.hessian = hand  # type: ignore[method-assign]


def cell(k: int, n: int, engine: str) -> dict:
    """One survey cell (section 2) with the polish's product ``engine``."""
    protocol = SAFRAN_SHAMIR.replace(gtol=1e-9 / (2 * math.pi), max_steps=1_000_000)
    with polish_product(engine):
        t0 = time.perf_counter()
        s = survey(committee_teacher(k), width=n, n_starts=TABLE_STARTS, seed=1000 * (n - k) + k, handover=1e-5, protocol=protocol)
        seconds = time.perf_counter() - t0
    d = s.to_dict()
    return {"k": k, "n": n, "engine": engine, "seconds": seconds, "newton_s": d["polish"]["newton_s"], "spurious": d["spurious"],
            "families": len(d["families"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=64, help="points per product (default 64)")
    ap.add_argument("--repeats", type=int, default=30, help="products per timing (default 30)")
    ap.add_argument("--cells", nargs="+", metavar="K,N", help="survey cells run with each product (section 2)")
    ap.add_argument("--derived", default="forward", help="derived products of --cells (comma-separated: forward, linearize)")
    ap.add_argument("--out", metavar="FILE.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    out: dict = {"date": time.strftime("%Y-%m-%d"), "load_average_start": load, "products": []}
    for k, d in SIZES:
        r = product_costs(args.points, k, d, args.repeats)
        out["products"].append(r)
        print(f"R = {r['R']}, k = {k}, d = {d}: hand {r['hand_s'] * 1e3:.3f} ms, forward {r['forward_s'] * 1e3:.3f} ms "
              f"({r['forward_over_hand']:.1f}x), linearize {r['linearize_s'] * 1e3:.3f} ms ({r['linearize_over_hand']:.1f}x; "
              f"set-up {r['linearize_setup_s'] * 1e3:.0f} ms); largest relative difference from forward: hand {r['hand_max_diff']:.1e}, "
              f"linearize {r['linearize_max_diff']:.1e}", flush=True)
    for c in args.cells or []:
        k, n = (int(x) for x in c.split(","))
        hand = cell(k, n, "hand")
        for engine in args.derived.split(","):
            der = cell(k, n, engine)
            same = (hand["spurious"], hand["families"]) == (der["spurious"], der["families"])
            out.setdefault("cells", []).append({"hand": hand, "derived": der, "ratio": hand["seconds"] / der["seconds"], "same": same})
            print(f"k = {k}, n = {n}: hand {hand['seconds']:.1f} s (Newton {hand['newton_s']:.2f} s), {engine} {der['seconds']:.1f} s "
                  f"(Newton {der['newton_s']:.2f} s): ratio {hand['seconds'] / der['seconds']:.2f}x; "
                  f"{'same' if same else 'DIFFERENT'} spurious count and families", flush=True)
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average: {load:.1f} at the start, {out['load_average_end']:.1f} at the end")
    if args.out:
        io.write_json(args.out, out)


if __name__ == "__main__":
    main()
