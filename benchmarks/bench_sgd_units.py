"""Benchmark: the exact SGD moments by units against the tensor rule, at the same nodes per axis.

:func:`~nearopt.dynamics.sgd_predict.exact_model` takes ``H`` and ``M4`` either by one Gauss-Hermite
rule in the ``r = rank W1`` dimensions of the row space (``route="tensor"``, ``order^r`` nodes) or by
rules over the span of at most four hidden units (``route="units"``, ``C(N_h + 3, 4)`` multisets).
Both are timed in this run on ReLU teachers with ``N_i = 20`` (no check rule); beyond the budget the
tensor rule's refusal (with its operation count) is printed instead; the ratio and the two routes'
critical rates (``B = 1``) where both ran.

    PYTHONPATH=src python benchmarks/bench_sgd_units.py [--quick] [--order 16] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import nearopt as no
from nearopt.dynamics.sgd_predict import exact_model
from nearopt.errors import NearoptError
from nearopt.model.network import io


def timed(net, route: str, order: int):
    t0 = time.perf_counter()
    model = exact_model(net, route=route, order=order, check=False)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N_h = 3, 4 only (a minute)")
    ap.add_argument("--order", type=int, default=16, help="Gauss-Hermite nodes per axis of both routes (default 16)")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    rows = []
    for nh in (3, 4) if args.quick else (3, 4, 5, 6, 8):
        net = no.sample_teacher(20, nh, "relu", seed=0)
        units, t_units = timed(net, "units", args.order)
        row = {"N_i": 20, "N_h": nh, "P": net.n_params, "coordinates": units.size, "order": args.order, "units_s": t_units}
        try:
            tensor, t_tensor = timed(net, "tensor", args.order)
        except NearoptError as exc:  # the tensor rule is over the budget: its refusal says what it would cost
            row["tensor_refused"] = str(exc)
            print(f"N_h={nh:2d} P={net.n_params:4d} D={units.size:5d}: units {t_units:8.2f} s; tensor refused: {exc}", flush=True)
        else:
            c_t, c_u = tensor.critical_lr(1), units.critical_lr(1)
            diff = abs(c_u / c_t - 1.0)
            row.update(tensor_s=t_tensor, ratio=t_tensor / t_units, critical_lr_tensor=c_t, critical_lr_units=c_u, critical_lr_rel_difference=diff)
            print(f"N_h={nh:2d} P={net.n_params:4d} D={units.size:5d}: tensor {t_tensor:8.2f} s, units {t_units:8.2f} s, "
                  f"ratio {t_tensor / t_units:8.2f}x, critical rates {c_t:.6g} / {c_u:.6g} (rel. difference {diff:.2g})", flush=True)
        rows.append(row)
    meta = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(), "activation": "relu"}
    if args.out:
        io.write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
