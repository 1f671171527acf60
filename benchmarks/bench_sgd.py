"""Benchmark: SGD simulation throughput (runs x steps per second) against a plain PyTorch loop.

nearopt's :func:`~nearopt.dynamics.sgd.simulate_sgd` steps ``R`` runs together (one batched
forward and an explicit ``J^T r / B`` gradient per step). The baseline is the loop a user
writes: one run at a time, an ``nn.Module`` student, ``torch.optim.SGD``, autograd, fresh
Gaussian inputs each step, float64. Both are timed in this run on the same problem (erf
teacher, online inputs, the same ``eta``, ``B`` and label noise); the ratio of throughputs is
printed. The simulator's time includes its exact population-loss records (``points`` of them).

    PYTHONPATH=src python benchmarks/bench_sgd.py [--quick] [--device cpu|cuda] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import nearopt as no
from nearopt.dynamics.sgd import simulate_sgd
from nearopt.model.network import io


class Student(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.W1 = torch.nn.Parameter(torch.as_tensor(net.W1.copy()))
        self.W2 = torch.nn.Parameter(torch.as_tensor(net.W2.ravel().copy()))
        self.act = net.activation

    def forward(self, x):
        return self.act(x @ self.W1.T) @ self.W2


def baseline(net, *, lr: float, batch: int, noise: float, steps: int, runs: int, device: str) -> float:
    """Seconds for ``runs`` runs of ``steps`` plain SGD steps, one run after another."""
    dev = torch.device(device)
    W1t = torch.as_tensor(net.W1, device=dev)
    vt = torch.as_tensor(net.W2.ravel(), device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(runs):
        model = Student(net).to(dev)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype, device=dev))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(steps):
            x = torch.randn(batch, net.n_inputs, generator=gen, dtype=torch.float64, device=dev)
            y = net.activation(x @ W1t.T) @ vt + noise * torch.randn(batch, generator=gen, dtype=torch.float64, device=dev)
            opt.zero_grad()
            loss = 0.5 * ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    ni, nh = 4, 3
    net = no.sample_teacher(ni, nh, "erf", seed=0)
    lr, noise = 0.2, 0.01
    steps = 200 if args.quick else 1000
    base_runs = 2 if args.quick else 3
    rows = []
    for batch in (1, 32):
        t_base = baseline(net, lr=lr, batch=batch, noise=noise, steps=steps, runs=base_runs, device=args.device)
        base_tp = base_runs * steps / t_base
        for runs in ((100, 1000) if args.quick else (100, 1000, 5000)):
            sim = simulate_sgd(net, lr=lr, batch=batch, steps=steps, sigma0=1e-2, noise=noise, runs=runs, points=20, device=args.device)
            rows.append({"batch": batch, "runs": runs, "steps": steps, "nearopt_run_steps_per_s": sim.throughput,
                         "baseline_run_steps_per_s": base_tp, "ratio": sim.throughput / base_tp})
            print(f"B={batch:3d} R={runs:6d}: nearopt {sim.throughput:10.3g} run-steps/s, plain torch.optim.SGD loop "
                  f"{base_tp:10.3g} run-steps/s, ratio {sim.throughput / base_tp:8.1f}x", flush=True)
    meta = {"device": args.device, "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
            "N_i": ni, "N_h": nh, "activation": "erf", "lr": lr, "noise": noise}
    if args.out:
        io.write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
