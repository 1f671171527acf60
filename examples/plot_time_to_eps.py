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

# output folder: argv[1], else $NEAROPT_EXAMPLES_OUT, else examples/_output (the docs build
# runs this script without __file__, in the examples folder, with the variable set)
here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NEAROPT_EXAMPLES_OUT", here / "_output"))
out.mkdir(parents=True, exist_ok=True)

# %%
net = no.sample_teacher(4, 3, "quadratic", seed=0)
X = no.sample_inputs(1000, net.n_inputs, seed=0)
sigma0, eps = 1e-3, 1e-10
res = no.run_dynamics(net, X, sigma0=sigma0, draws=4, steps=300, seed=0)  # GD, eta = 1/lambda_max

lam = res.eigenvalues
lam_min = lam[-res.spectrum.rank.rank]  # smallest nonzero eigenvalue
t_fine = np.arange(0, 301, dtype=np.float64)
predicted = no.predict_mean_loss(lam, sigma0**2, res.lr, t_fine)
measured = res.loss.mean(axis=0)  # (T,), mean over the draws


def first_crossing(times, loss, level):
    """First time the curve falls below ``level``, interpolated in log(loss); nan if never."""
    below = np.flatnonzero(loss < level)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(times[0])
    y0, y1 = np.log(loss[i - 1]), np.log(loss[i])
    return float(times[i - 1] + (times[i] - times[i - 1]) * (y0 - np.log(level)) / (y0 - y1))


t_pred = first_crossing(t_fine, predicted, eps)
t_meas = first_crossing(res.times, measured, eps)
# the same prediction for the very draws that were trained: their c_k(0) instead of the average
t_same = first_crossing(res.times, res.predicted_draw.mean(axis=0), eps)
t_late = np.log(sigma0**2 * lam_min / (2 * eps)) / (-2 * np.log(abs(1 - res.lr * lam_min)))
print(f"eta = {res.lr:.4g}, lambda_min+ = {lam_min:.4g}, rank {res.spectrum.rank.rank} of {lam.size}")
print(f"time to reach eps = {eps:g}: measured {t_meas:.1f} steps; predicted from the spectrum {t_pred:.1f} "
      f"(same draws {t_same:.1f}); slowest-mode estimate {t_late:.1f}")

fig, ax = plt.subplots(figsize=(6.4, 4.2))
ax.semilogy(res.times, res.loss.T, color="0.8", lw=0.8)
ax.semilogy(res.times, measured, "o", ms=3, color="C0", label="measured ⟨L_t⟩ (4 draws)")
ax.semilogy(t_fine, predicted, "C3-", lw=1.2, label="predicted ⟨L_t⟩ from the spectrum")
ax.semilogy(res.times, res.predicted_draw.mean(axis=0), "C0-", lw=0.8, label="predicted for the same 4 draws")
ax.axhline(eps, color="k", ls=":", lw=1)
ax.axvline(t_pred, color="C3", ls="--", lw=1, label=f"predicted t_ε = {t_pred:.0f}")
ax.axvline(t_late, color="C2", ls="-.", lw=1, label=f"slowest mode only: {t_late:.0f}")
ax.set_xlabel("gradient-descent step t")
ax.set_ylabel("loss")
ax.set_title(f"quadratic net, N_i = 4, N_h = 3, N = 1000: ε = {eps:g}", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "time_to_eps.png", dpi=120)
print(f"wrote {out / 'time_to_eps.png'}")
