"""Start-up cost: ``import nearopt`` and ``nearopt --version`` against ``import torch``, measured in the same run.

Each command runs in a fresh interpreter ``--repeat`` times (default 5) and the median wall time
is printed with its ratio to ``import torch``. Target: ``import nearopt`` at most 1.2x
``import torch`` (it imports neither torch nor SciPy: names load on first use), and
``nearopt --version`` well under a second.

    python benchmarks/bench_import.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import nearopt": [sys.executable, "-c", "import nearopt"],
    "nearopt --version": [sys.executable, "-c", "from nearopt.cli import main; main(['--version'])"],
    "import nearopt + first use (PopulationHessian)": [sys.executable, "-c", "import nearopt; nearopt.PopulationHessian"],
}


def median_seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    base = median_seconds(CASES["import torch"], args.repeat)
    print(f"{'case':<48} {'median s':>9} {'/ import torch':>15}")
    for name, cmd in CASES.items():
        s = base if name == "import torch" else median_seconds(cmd, args.repeat)
        print(f"{name:<48} {s:>9.3f} {s / base:>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
