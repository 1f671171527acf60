"""
The spectrum of my own teacher
==============================

Bring your own first- and second-layer weights, save them, load them back, and
compare the Hessian spectrum at the optimum for batches of growing size ``N``
with the exact population spectrum (``N -> infinity``).

The teacher below has ``N_i = 10`` inputs but its ``N_h = 6`` hidden units only
look at a 3-dimensional subspace of the input space (``rank W1 = 3``). The
population spectrum then consists of the spectrum of a reduced Hessian of side
``N_h (r + 1) = 24`` plus the ``N_h`` eigenvalues of the complement block, each
repeated ``N_i - r = 7`` times (``docs/theory.md`` §2.5). Finite batches split those
repeated eigenvalues and, at small ``N``, spread the whole spectrum.
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
# My own weights: first-layer rows in a random 3-dimensional subspace of R^10.
rng = np.random.default_rng(0)
n_inputs, n_hidden, rank_w1 = 10, 6, 3
# (N_i, r) with orthonormal columns, then W1 (N_h, N_i) with rows in their span
basis = np.linalg.qr(rng.standard_normal((n_inputs, rank_w1)))[0]
W1 = rng.standard_normal((n_hidden, rank_w1)) @ basis.T / np.sqrt(rank_w1)
W2 = rng.standard_normal((1, n_hidden)) / np.sqrt(n_hidden)  # (1, N_h)
teacher = no.TwoLayerNet(W1, W2, "erf")

# Save and load back (an .npz with arrays W1 and W2; the activation is not stored).
path = out / "my_teacher.npz"
teacher.save(path)
net = no.TwoLayerNet.load(path, "erf")
assert np.array_equal(net.W1, teacher.W1) and np.array_equal(net.W2, teacher.W2)
rank = np.linalg.matrix_rank(net.W1)
print(f"teacher: N_i={net.n_inputs} N_h={net.n_hidden} P={net.n_params} rank W1={rank}")

# %%
# Population spectrum (exact, structured route) and batch spectra.
pop = no.population_spectrum(net)
largest = pop.eigenvalues[-1]
print(f"population: method={pop.method} rank={pop.rank.rank} largest={largest:.4g}")
if pop.multiplicities is not None:
    counts = np.asarray(pop.multiplicities)
    repeated = int(np.count_nonzero(counts > 1))
    print(f"  {repeated} distinct eigenvalues repeated {int(counts.max())} times")

fig, ax = plt.subplots(figsize=(6.4, 4.2))
k = np.arange(1, net.n_params + 1)
batches = [(100, "tab:orange"), (1_000, "tab:green"), (10_000, "tab:blue")]
for n_samples, colour in batches:
    X = no.sample_inputs(n_samples, net.n_inputs, seed=1)
    spec = no.batch_spectrum(net, X)
    nonzero = spec.eigenvalues[spec.eigenvalues > 0]
    top, exact = spec.eigenvalues[-5:], pop.eigenvalues[-5:]
    rel = np.max(np.abs(top - exact) / exact)
    print(f"N={n_samples:>6}: rank {spec.rank.rank}, top-5 relative error {rel:.2e}")
    label = f"batch, N = {n_samples}"
    ax.semilogy(k[-nonzero.size :], nonzero, ".", ms=4, color=colour, label=label)
pos = pop.eigenvalues > 0
ax.semilogy(k[pos], pop.eigenvalues[pos], "k-", lw=1.2, label="population (exact)")
ax.set_xlabel("eigenvalue index (ascending)")
ax.set_ylabel("eigenvalue of the Hessian at the optimum")
ax.set_title(f"erf teacher with rank W1 = {rank_w1}: batch vs population")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "own_teacher.png", dpi=120)
print("wrote own_teacher.png")
