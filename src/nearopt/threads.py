"""How many torch threads a computation uses: one for small problems, torch's default for large ones.

Torch starts as many intra-op threads as the machine has cores. For small operations the
threads cost more than they save, and on a machine whose cores are busy with other work
every synchronisation waits for a descheduled thread: on a 2-core machine at load about 8,
the smallest end of an erf ``50 x 50`` population Hessian took 29.8 s with torch's 2 threads
and 1.2 s with one (``benchmarks/bench_threads.py`` measures the gain). So the spectra
solver (:func:`nearopt.spectra.solver.solve`) and the SGD simulator
(:func:`nearopt.dynamics.sgd.simulate_sgd`) run inside :func:`threads_for`, which picks one
thread below :data:`PARALLEL_FROM` floating-point operations per torch operation and leaves
torch's own setting above it.

The environment variable ``NEAROPT_THREADS`` overrides the choice: a positive integer is the
thread count for every size, ``auto`` (or unset) the rule above. Only torch's intra-op threads
on the CPU are set (a GPU run is left alone); NumPy's and SciPy's BLAS read
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` when they load.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .resources import requested_threads

__all__ = ["PARALLEL_FROM", "sized_threads", "thread_count", "threads_for"]


#: floating-point operations per torch operation from which torch's default threads are used
#: (below it one thread: a ``P = 10^4`` Hessian product or ``10^8`` multiply-adds per SGD step)
PARALLEL_FROM = 1e8




def thread_count(flops: float) -> int:
    """Threads for torch operations of about ``flops`` floating-point operations each (module docstring)."""
    asked = requested_threads()
    if asked is not None:
        return asked
    return 1 if flops < PARALLEL_FROM else torch.get_num_threads()


@contextlib.contextmanager
def threads_for(flops: float, device: str | torch.device = "cpu") -> Iterator[int]:
    """Run the body with :func:`thread_count` torch threads (on the CPU), restoring the setting afterwards.

    Yields the thread count in force. Nested uses keep the outer choice when it is already smaller.
    """
    before = torch.get_num_threads()
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        on_cpu = torch.device(device).type == "cpu"
    except (RuntimeError, TypeError):  # not a device: the entry point reports it
        on_cpu = False
    if not on_cpu:
        yield before
        return
    n = thread_count(flops)
    if requested_threads() is None:
        n = min(n, before)  # an outer one-thread choice (or a user's cap) stays
    if n == before:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def sized_threads(cost: Callable[[dict[str, Any]], tuple[float, Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an entry point to run inside :func:`threads_for`.

    ``cost(arguments)`` gets the call's bound arguments (defaults applied) by name and returns
    ``(flops per torch operation, device)``.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:  # let the function report its own bad call
                return fn(*args, **kwargs)
            bound.apply_defaults()
            flops, device = cost(bound.arguments)
            with threads_for(flops, device):
                return fn(*args, **kwargs)

        return run

    return wrap
