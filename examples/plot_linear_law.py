"""
Linear law vs histogram
=======================

For a linear network ``f(x) = W2 W1 x`` the nonzero population eigenvalues of
the Hessian at the optimum are ``s + mu`` with ``s = ||W2||^2`` and ``mu`` the
eigenvalues of ``W1^T W1`` (``docs/theory.md`` §3). Pooled over random teachers
they follow a scaled chi-square convolved with a scaled Marchenko–Pastur law,
:class:`nearopt.ChiSquareMPConvolution`. Here the exact spectra of 300 teachers
are pooled into a histogram and set against that law, for ``q = N_i/N_h = 1/2``
(pure bulk) and ``q = 2`` (a chi-square component of weight ``1 - 1/q`` appears:
those eigenvalues equal ``s`` exactly).
"""

import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import nearopt as no
from nearopt.theory.linear import pooled_linear_eigenvalues

# output folder: the first argument, else $NEAROPT_EXAMPLES_OUT, else examples/_output
default = os.environ.get("NEAROPT_EXAMPLES_OUT", "examples/_output")
out = Path(sys.argv[1] if len(sys.argv) > 1 else default)
out.mkdir(parents=True, exist_ok=True)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
for ax, (n_inputs, n_hidden) in zip(axes, [(20, 40), (40, 20)]):
    eig, s, ranks = pooled_linear_eigenvalues(
        n_inputs, n_hidden, teachers=300, seed=0
    )
    assert np.all(ranks == n_inputs)  # rank N_i for every teacher
    pooled = eig.ravel()
    law = no.ChiSquareMPConvolution(n_inputs, n_hidden)
    ks = stats.kstest(pooled, law.cdf)
    print(
        f"N_i={n_inputs} N_h={n_hidden}: {pooled.size} eigenvalues, "
        f"KS distance {ks.statistic:.4f} "
        f"(mean {pooled.mean():.4f} vs law {law.mean():.4f})"
    )
    grid = np.linspace(max(law.support()[0], 1e-6), np.quantile(pooled, 0.999), 300)
    label = f"{eig.shape[0]} teachers, exact"
    ax.hist(pooled, bins=80, density=True, color="0.75", label=label)
    ax.plot(grid, law.pdf(grid), "C3-", lw=1.5, label="χ² ⊛ MP law")
    q = n_inputs / n_hidden
    title = f"N_i = {n_inputs}, N_h = {n_hidden} (q = {q:g}), KS = {ks.statistic:.3f}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("nonzero eigenvalue")
axes[0].set_ylabel("density")
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "linear_law.png", dpi=120)
print("wrote linear_law.png")
