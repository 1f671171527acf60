"""The one clustering (gap rule) and the one greedy grouping, against independent references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.spectra import grouping as gr

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=0, max_size=40)
tols = st.floats(0.0, 50.0)


def _reference_clusters(v, tol):
    """Walk the sorted values once: a gap larger than ``tol`` opens a new cluster."""
    out = []
    for x in sorted(v):
        if out and x - out[-1][-1] <= tol:
            out[-1].append(x)
        else:
            out.append([x])
    return out


@settings(max_examples=200, deadline=None)
@given(values, tols, st.randoms(use_true_random=False))
def test_cluster_labels_gap_rule_and_permutation_invariance(v, tol, rnd):
    v = np.array(v, dtype=np.float64)
    lab = gr.cluster_labels(v, tol)
    ref = _reference_clusters(v.tolist(), tol)
    # gap rule: the clusters are the reference's, numbered by increasing value
    assert sorted(np.unique(lab).tolist()) == list(range(len(ref)))
    for c, members in enumerate(ref):
        assert sorted(v[lab == c].tolist()) == members
    # neighbours within tol share a label, across a gap > tol they do not
    s = np.sort(v)
    ls = gr.cluster_labels(s, tol)
    assert np.array_equal(np.diff(ls) > 0, np.diff(s) > tol)
    # permuting the input permutes the labels with it
    perm = list(range(v.size))
    rnd.shuffle(perm)
    assert np.array_equal(gr.cluster_labels(v[perm], tol), lab[perm])
    first, counts = gr.clusters(v, tol)
    assert first.tolist() == [m[0] for m in ref]
    assert counts.tolist() == [len(m) for m in ref] and counts.dtype == np.int64


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30), st.floats(1e-12, 1e-2))
def test_eigenvalue_clusters_are_relative_to_the_largest_magnitude(lam, rtol):
    lam = np.array(lam)
    first, counts = gr.eigenvalue_clusters(lam, rtol)
    ref = _reference_clusters(lam.tolist(), rtol * max(np.abs(lam).max(), 1e-300))
    assert first.tolist() == [m[0] for m in ref] and counts.tolist() == [len(m) for m in ref]
    scaled = gr.eigenvalue_clusters(1024.0 * lam, rtol)  # exact scaling: the same pattern
    assert scaled[1].tolist() == counts.tolist()


def test_clusters_shapes_weights_and_empty():
    lab = gr.cluster_labels(np.array([[0.0, 1.0], [1.0 + 1e-9, 5.0]]), 1e-6)
    assert lab.tolist() == [[0, 1], [1, 2]]
    first, w = gr.clusters([3.0, 1.0, 1.0 + 1e-12], 1e-9, weights=[2, 5, 7])
    assert first.tolist() == [1.0, 3.0] and w.tolist() == [12.0, 2.0]
    e, c = gr.eigenvalue_clusters(np.zeros(0))
    assert e.size == 0 and c.size == 0 and c.dtype == np.int64
    assert gr.eigenvalue_clusters([0.0, 0.0])[1].tolist() == [2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=30))
def test_first_match_groups_against_the_anchor_greedy(keys):
    """Each item joins the first group whose representative it matches: the partition of the
    'first free item takes every free item it matches' greedy, for a relation that is not transitive."""
    keys = np.array(keys)

    def near(reps, i):
        return np.abs(keys[reps] - keys[i]) <= 1

    groups = gr.first_match_groups(range(keys.size), near)
    ref, free = [], list(range(keys.size))
    while free:
        a = free.pop(0)
        grp = [a] + [c for c in free if abs(keys[c] - keys[a]) <= 1]
        free = [c for c in free if c not in grp]
        ref.append(grp)
    assert groups == ref
    assert sorted(i for g in groups for i in g) == list(range(keys.size))


def test_close_losses_and_spectra():
    assert gr.close_losses([1.0, 2.0, 0.0], 1.0 + 5e-8, floor=1e-12).tolist() == [True, False, False]
    assert gr.close_losses([0.0], 1e-13, floor=1e-12).tolist() == [True]
    ref = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.1]])
    assert gr.close_spectra(ref, [5e-7, 1.0 + 5e-6, 2.0]).tolist() == [True, False]
    assert gr.close_spectra(ref, [0.0, 1.0]).tolist() == [False, False]
    assert gr.close_spectra(ref, [3e-6, 1.0, 2.0]).tolist() == [False, False]  # atol 1e-6 max(1, 2)


@pytest.mark.parametrize("tol", [0.0, 1e-9])
def test_cluster_labels_exact_ties(tol):
    assert gr.cluster_labels(np.array([2.0, 2.0, 1.0]), tol).tolist() == [1, 1, 0]
