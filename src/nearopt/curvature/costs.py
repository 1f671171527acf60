"""The cost model ``auto`` uses to weigh an exact route against the matrix-free one.

Estimates in seconds, from constants measured on the machines nearopt is
benchmarked on (``benchmarks/README.md``). They only need to be right within a
factor of a few: they decide between an ``O(n^3)`` diagonalisation and a number of
``O(N_h^2 N_i)`` products.

Measured constants:

* ``EIGH_S``: seconds per ``n^3`` of a dense symmetric eigensolve (2 CPU cores: the
  dense route at ``P = 1640`` takes 0.13 s);
* ``PRODUCT_S``, ``CALL_S``: one population Hessian-vector product costs about
  ``PRODUCT_S N_h^2 N_i + CALL_S`` on 2 CPU cores (``n = 1000``: 0.065 s);
* ``GPU_PRODUCT_S``, ``GPU_CALL_S``: the same on one NVIDIA H200 in float64 (0.3 ms
  up to ``n = 500``, where launches dominate; 1.24 ms at ``n = 2000``).

ARPACK needs about ``3 (2k + 20)`` products for the ``k`` largest eigenvalues,
the smallest-end LOBPCG about ``70 k``.
"""

from __future__ import annotations

import torch

__all__ = [
    "CALL_S", "dense_cost", "EIGH_S", "generic_costs", "GPU_CALL_S", "GPU_PRODUCT_S", "MAX_EXACT_BLOCK", "product_cost", "PRODUCT_S", "products_needed",
    "route_costs"
]

EIGH_S = 4e-11
PRODUCT_S = 1e-10
CALL_S = 5e-4
GPU_PRODUCT_S = 1.2e-13
GPU_CALL_S = 4e-4
#: largest side of a block the exact routes diagonalise (float64: about 1.2 GB at 12000)
MAX_EXACT_BLOCK = 12_000


def dense_cost(n: int) -> float:
    """Seconds of an exact route whose largest dense block has side ``n`` (``inf`` beyond :data:`MAX_EXACT_BLOCK`)."""
    return EIGH_S * float(n) ** 3 if n <= MAX_EXACT_BLOCK else float("inf")


def products_needed(k: int, which: str) -> int:
    """Matrix-free products for ``k`` eigenvalues at the ``which`` end."""
    return 3 * (2 * k + 20) if which == "largest" else 70 * k


def product_cost(flops: float, device: torch.device) -> float:
    """Seconds of one product of ``flops`` multiply-adds on ``device``."""
    per_flop, per_call = (GPU_PRODUCT_S, GPU_CALL_S) if device.type == "cuda" else (PRODUCT_S, CALL_S)
    return per_flop * flops + per_call


def route_costs(exact_block: int, product_flops: float, k: int, which: str, device: torch.device) -> dict[str, float]:
    """``{"exact": s, "lanczos": s}`` for ``k`` eigenvalues at ``which``."""
    return {"exact": dense_cost(exact_block), "lanczos": products_needed(k, which) * product_cost(product_flops, device)}


def generic_costs(P: int, exact_block: int, k: int, which: str, device: torch.device) -> dict[str, float]:
    """Costs for an operator whose product is priced like a dense ``P x P`` matrix-vector product."""
    return route_costs(exact_block, float(P) * P, k, which, device)
