"""
How long until the loss reaches ε
=================================

Start gradient descent at ``theta* + delta_0`` with ``delta_0 ~ N(0, sigma0^2 I)``.
In the quadratic regime the mean loss is
``<L_t> = sigma0^2/2 sum_k lambda_k (1 - eta lambda_k)^(2t)`` (``docs/theory.md`` §5),
so the time to reach a target ``eps`` follows from the Hessian spectrum alone,
and at late times only the smallest nonzero eigenvalue matters:
``t_eps ≈ log(sigma0^2 lambda_min / (2 eps)) / (-2 log|1 - eta lambda_min|)``.
:func:`nearopt.run_dynamics` trains real students and returns the prediction
beside the measurement; :func:`nearopt.predict_mean_loss` evaluates the
prediction on any time grid.
"""

import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import nearopt as no

# output folder: the first argument, else $NEAROPT_EXAMPLES_OUT, else examples/_output
default = os.environ.get("NEAROPT_EXAMPLES_OUT", "examples/_output")
out = Path(sys.argv[1] if len(sys.argv) > 1 else default)
out.mkdir(parents=True, exist_ok=True)

# %%
net = no.sample_teacher(4, 3, "quadratic", seed=0)
X = no.sample_inputs(1000, net.n_inputs, seed=0)
sigma0, eps = 1e-3, 1e-10
# gradient descent with eta = 1/lambda_max from 4 random starts
res = no.run_dynamics(net, X, sigma0=sigma0, draws=4, steps=300, seed=0)

lam = res.eigenvalues
lam_min = lam[-res.spectrum.rank.rank]  # smallest nonzero eigenvalue
t_fine = np.arange(0, 301, dtype=np.float64)
predicted = no.predict_mean_loss(lam, sigma0**2, res.lr, t_fine)
measured = res.loss.mean(axis=0)  # (T,), mean over the draws


def first_crossing(times, loss, level):
    """When ``loss`` first falls below ``level`` (interpolated in log); nan if never."""
    below = np.flatnonzero(loss < level)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(times[0])
    y0, y1 = np.log(loss[i - 1]), np.log(loss[i])
    step = (times[i] - times[i - 1]) * (y0 - np.log(level)) / (y0 - y1)
    return float(times[i - 1] + step)


t_pred = first_crossing(t_fine, predicted, eps)
t_meas = first_crossing(res.times, measured, eps)
# the prediction for the very draws that were trained: their c_k(0), not the average
t_same = first_crossing(res.times, res.predicted_draw.mean(axis=0), eps)
rate = -2 * np.log(abs(1 - res.lr * lam_min))  # late-time decay rate of log <L_t>
t_late = np.log(sigma0**2 * lam_min / (2 * eps)) / rate
rank = res.spectrum.rank.rank
print(f"eta = {res.lr:.4g}, lambda_min+ = {lam_min:.4g}, rank {rank} of {lam.size}")
print(f"time to reach eps = {eps:g}: measured {t_meas:.1f} steps;")
print(f"  predicted from the spectrum {t_pred:.1f} (same draws {t_same:.1f});")
print(f"  slowest-mode estimate {t_late:.1f}")

fig, ax = plt.subplots(figsize=(6.4, 4.2))
ax.semilogy(res.times, res.loss.T, color="0.8", lw=0.8)
ax.semilogy(res.times, measured, "o", ms=3, color="C0", label="measured, 4 draws")
ax.semilogy(t_fine, predicted, "C3-", lw=1.2, label="predicted ⟨L_t⟩, spectrum")
same_draws = res.predicted_draw.mean(axis=0)
ax.semilogy(res.times, same_draws, "C0-", lw=0.8, label="predicted, same 4 draws")
ax.axhline(eps, color="k", ls=":", lw=1)
ax.axvline(t_pred, color="C3", ls="--", lw=1, label=f"predicted t_ε = {t_pred:.0f}")
ax.axvline(t_late, color="C2", ls="-.", lw=1, label=f"slowest mode only: {t_late:.0f}")
ax.set_xlabel("gradient-descent step t")
ax.set_ylabel("loss")
ax.set_title(f"quadratic net, N_i = 4, N_h = 3, N = 1000: ε = {eps:g}", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "time_to_eps.png", dpi=120)
print("wrote time_to_eps.png")
