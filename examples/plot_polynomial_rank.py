"""
Rank of a polynomial network
============================

At the optimum the Hessian is ``E[J J^T]``, so its rank is the number of
function-space directions the network can move in: an effective number of
parameters (``docs/theory.md`` §4). For polynomial activations that number is
known exactly and saturates once the network spans every polynomial of its
degree. :func:`nearopt.predict_rank` gives the theory, :func:`nearopt.measure_rank`
measures it from the singular values of the Jacobian of a random teacher.
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
n_inputs = 4
hidden = np.arange(1, 13)
fig, ax = plt.subplots(figsize=(6.4, 4.2))
ax.plot(hidden, hidden * (n_inputs + 1), "k:", label="P = N_h (N_i + 1)")
activations = [("quadratic", "C0"), ("cubic", "C1"), ("polynomial:0,1,1", "C2")]
for activation, colour in activations:
    predicted, measured = [], []
    for n_hidden in hidden:
        net = no.sample_teacher(n_inputs, int(n_hidden), activation, seed=int(n_hidden))
        m = no.measure_rank(net)
        p = no.predict_rank(activation, n_inputs, int(n_hidden))
        predicted.append(p.rank)
        measured.append(m.decision.rank)
    agree = sum(a == b for a, b in zip(predicted, measured))
    print(f"{activation} ({agree}/{hidden.size} agree)")
    print(f"  measured  {measured}")
    print(f"  predicted {predicted}")
    ax.plot(hidden, predicted, "-", color=colour, label=f"{activation}: predicted")
    label = f"{activation}: measured"
    ax.plot(hidden, measured, "o", color=colour, mfc="none", label=label)
ax.set_xlabel("hidden units N_h")
ax.set_ylabel("rank of the Hessian at the optimum")
title = f"N_i = {n_inputs}: rank saturates at the dimension of the function space"
ax.set_title(title, fontsize=10)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "polynomial_rank.png", dpi=120)
print("wrote polynomial_rank.png")
