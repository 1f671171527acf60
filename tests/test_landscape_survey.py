"""Many-start surveys (nearopt.landscape.survey): batched closed forms vs the library, descent statuses, families."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.gaussian.objective import population_gradient, population_loss
from nearopt.landscape.critical import committee_teacher, isotropy_multiplicities
from nearopt.landscape.descent import SAFRAN_SHAMIR, STATUSES, DescentProtocol, batched_descent, batched_loss_gradient
from nearopt.landscape.families import families
from nearopt.landscape.polish import polish_and_classify
from nearopt.landscape.survey import committee_survey, survey, wilson_interval
from nearopt.landscape.symmetry import merges_into, stabiliser, young_multiplicities
from nearopt.model.activations import get_activation
from nearopt.model.network import TwoLayerNet, sample_teacher
from nearopt.model.problem import Problem


def _reference(T, u, W, v, act):
    a = get_activation(act)
    pr = Problem(TwoLayerNet(T, u[None], a), student=TwoLayerNet(W, v[None], a), trained="both")
    return population_loss(pr), population_gradient(pr)


@pytest.mark.parametrize("act", ["relu", "erf", "erf:unit"])
def test_batched_loss_and_gradient_equal_the_library(act):
    rng = np.random.default_rng(3)
    K, M, d, R = 4, 3, 5, 5
    T, u = rng.normal(size=(M, d)), rng.normal(size=M)
    W, v = rng.normal(size=(R, K, d)), rng.normal(size=(R, K))
    W[0, 1] = W[0, 0]  # duplicated unit
    W[1, 2] = -W[1, 0]  # sign-flipped unit
    W[2, 0] = T[0]  # unit on a teacher unit
    L, gW, gv = batched_loss_gradient(act, *(torch.as_tensor(x) for x in (W, v, T, u)))
    for r in range(R):
        loss, g = _reference(T, u, W[r], v[r], act)
        assert abs(L[r].item() - loss) <= 1e-13 * max(1.0, abs(loss))
        mine = np.concatenate([gW[r].numpy().ravel(), gv[r].numpy()])
        np.testing.assert_allclose(mine, g, rtol=0, atol=1e-13 * max(1.0, np.abs(g).max()))


def test_other_activations_use_the_library_route():
    rng = np.random.default_rng(0)
    t = TwoLayerNet(rng.normal(size=(2, 3)), rng.normal(size=(1, 2)), get_activation("tanh"))
    W0, v0 = rng.normal(size=(2, 2, 3)) * 0.3, rng.normal(size=(2, 2)) * 0.3
    d = batched_descent(t, W0, v0, trained="both", protocol=DescentProtocol(lr=0.1, gtol=1e-3, max_steps=3))
    assert d.status.tolist() == ["unconverged", "unconverged"] and d.steps.tolist() == [3, 3]
    loss, _ = _reference(t.W1, t.W2.ravel(), d.W[0], d.v[0], "tanh")
    assert abs(loss - d.loss[0]) < 1e-12


def test_tiny_survey_finds_the_global_minimum_family():
    s = committee_survey(3, n_starts=6, protocol=SAFRAN_SHAMIR.replace(gtol=1e-7), seed=0)
    out = s.to_dict()
    assert out["starts"] == 6 and out["converged"] + out["unconverged"] + out["diverged"] == 6
    glob = [f for f in out["families"] if f["classification"] == "global minimum"]
    assert glob and glob[0]["count"] >= 1 and abs(glob[0]["loss"]) < 1e-12
    assert glob[0]["lambda_min"] > 0 and sum(f["count"] for f in out["families"]) == 6


def test_diverged_and_unconverged_runs_are_counted_not_dropped():
    t = committee_teacher(3)
    W0 = np.random.default_rng(1).normal(scale=0.5, size=(4, 3, 3))
    v0 = np.ones((4, 3))
    W0[0] *= np.nan  # a non-finite start diverges at once
    d = batched_descent(t, W0, v0, trained="first", protocol=DescentProtocol(lr=0.1, gtol=1e-30, max_steps=5))
    assert d.status.tolist() == ["diverged", "unconverged", "unconverged", "unconverged"]
    big = batched_descent(t, W0[1:2], v0[1:2], trained="first", protocol=DescentProtocol(lr=1e4, gtol=1e-9, max_steps=50))
    assert big.status.tolist() == ["diverged"]
    s = survey(t, n_starts=3, protocol=DescentProtocol(lr=0.1, gtol=1e-30, max_steps=2), seed=0)
    out = s.to_dict()
    assert out["unconverged"] == 3 and out["spurious"] == 0 and out["spurious_fraction"] == 0.0


@settings(max_examples=8, deadline=None)
@given(st.permutations(list(range(4))), st.permutations(list(range(4))))
def test_families_are_invariant_under_unit_and_input_permutations(rows, cols):
    k = 4
    t = committee_teacher(k)
    W = np.random.default_rng(7).normal(scale=0.5, size=(k, k))
    cp = polish_and_classify(t, W, np.ones(k), "first")
    # a permuted copy (units, and inputs with the teacher units) is the same critical point of the loss
    Wp = cp.student.W1[list(rows)][:, list(cols)]
    cq = polish_and_classify(t, Wp, np.ones(k), "first")
    fam = families([cp, cq])
    assert len(fam) == 1 and fam[0].count == 2


def test_stabiliser_and_isotypic_multiplicities():
    k = 6
    W = np.full((k, k), -0.05)
    np.fill_diagonal(W, 0.98)
    W[-1] = 0.2
    W[-1, -1] = -0.6
    st_ = stabiliser(W)
    assert st_["exact"] and st_["cell_sizes"] == [5, 1] and st_["order"] == 120
    assert young_multiplicities([5, 1]) == isotropy_multiplicities(6)
    assert sum(young_multiplicities([4, 2, 1])) == 49 and sum(young_multiplicities([9])) == 81
    assert merges_into([1, 1, 5, 5, 5, 9, 10], [1, 1, 5, 5, 9, 15]) and not merges_into([1, 1, 5, 5, 5, 9, 10], [3, 5, 5, 9, 14])
    W[0, 1] = 0.3  # breaks the S_5 symmetry
    assert stabiliser(W)["order"] != 120


def test_wilson_interval_covers_the_fraction():
    lo, hi = wilson_interval(3, 1000)
    assert lo < 0.003 < hi and 0 < lo and hi < 0.01
    assert np.isnan(wilson_interval(0, 0)[0])


def test_protocol_rejects_bad_values():

    with pytest.raises(NearoptError, match="lr must be"):
        DescentProtocol(lr=-1.0)
    with pytest.raises(NearoptError, match="max_steps"):
        DescentProtocol(max_steps=0)


def test_cli_bad_input_gives_one_line():
    r = subprocess.run([sys.executable, "-m", "nearopt", "landscape", "--committee", "3", "--starts", "0", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr


def test_cli_small_committee_survey(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nearopt", "landscape", "--committee", "3", "--starts", "4", "--gtol", "1e-7",
                        "--save-families", str(tmp_path), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["starts"] == 4 and {"spurious_fraction", "spurious_fraction_ci", "diverged", "unconverged", "families", "seconds"} <= set(out)
    fam = out["families"][0]
    assert {"loss", "count", "classification", "index", "lambda_min", "lambda_max", "multiplicities"} <= set(fam)
    saved = sorted(tmp_path.glob("family_*.npz"))
    assert len(saved) == len(out["families"])
    with np.load(saved[0]) as z:
        assert z["W1"].shape == (3, 3) and z["W2"].shape == (1, 3)


def test_padded_batch_of_several_sizes_equals_separate_surveys():
    from nearopt.landscape.survey import Case, survey_many

    proto = DescentProtocol(lr=0.1, gtol=1e-6, max_steps=4000)
    cases = [Case(committee_teacher(3), 3, 3, seed=1), Case(committee_teacher(4), 5, 2, seed=2), Case(committee_teacher(2, 3), 2, 2, seed=3)]
    many = survey_many(cases, protocol=proto)
    for c, s in zip(cases, many):
        one = survey(c.teacher, width=c.width, n_starts=c.n_starts, protocol=proto, seed=c.seed)
        np.testing.assert_allclose(s.descent.W, one.descent.W, rtol=0, atol=1e-12)
        assert s.descent.steps.tolist() == one.descent.steps.tolist() and s.descent.status.tolist() == one.descent.status.tolist()
        assert [p.classification for p in s.points] == [p.classification for p in one.points]


def test_handover_to_newton_ends_at_the_same_critical_points():
    full = committee_survey(4, n_starts=6, protocol=SAFRAN_SHAMIR.replace(gtol=1e-9), seed=5)
    fast = committee_survey(4, n_starts=6, protocol=SAFRAN_SHAMIR.replace(gtol=1e-9), seed=5, handover=1e-4)
    assert fast.to_dict()["handover"] == 1e-4 and fast.descent.steps.max() <= full.descent.steps.max()
    for a, b in zip(full.points, fast.points):
        assert a.classification == b.classification and abs(a.loss - b.loss) < 1e-10


def test_chunked_evaluation_equals_one_call():
    from nearopt.landscape.descent import chunked_call, loss_gradient_function

    fn = loss_gradient_function(committee_teacher(3))
    W = torch.as_tensor(np.random.default_rng(2).normal(size=(7, 3, 3)))
    v = torch.ones(7, 3, dtype=torch.float64)
    runs = torch.arange(7)
    for a, b in zip(chunked_call(fn, W, v, runs, 3), chunked_call(fn, W, v, runs, None)):
        assert torch.equal(a, b)


def test_balancing_keeps_the_function_and_equalises_the_layers():
    from nearopt.landscape.polish import balanced

    rng = np.random.default_rng(4)
    t = committee_teacher(3)
    net = TwoLayerNet(rng.normal(size=(4, 3)), rng.normal(size=(1, 4)) * 3, t.activation)
    b = balanced(net)
    np.testing.assert_allclose(np.linalg.norm(b.W1, axis=1), np.abs(b.W2.ravel()), rtol=1e-14)
    a, c = Problem(t, student=net), Problem(t, student=b)
    assert abs(population_loss(a) - population_loss(c)) < 1e-12


def _end_points(k, n, R, seed, gtol=1e-4):
    t = committee_teacher(k)
    W0 = np.random.default_rng(seed).normal(scale=k**-0.5, size=(R, n, k))
    d = batched_descent(t, W0, np.ones((R, n)), protocol=SAFRAN_SHAMIR.replace(gtol=gtol))
    return t, d


def test_hessian_product_equals_the_dense_exact_hessian():
    from nearopt.landscape.critical import exact_hessian
    from nearopt.landscape.polish import _Gradient

    rng = np.random.default_rng(11)
    K, M, d = 4, 3, 5
    T, u = rng.normal(size=(M, d)), rng.normal(size=M)
    W, v = rng.normal(size=(2, K, d)), rng.normal(size=(2, K))
    W[1, 1] = 2.0 * W[1, 0]  # a parallel pair: held at angle 0, as the gradient's closed form
    teacher = TwoLayerNet(T, u[None], get_activation("relu"))
    for trained in ("first", "both"):
        g = _Gradient("relu", torch.as_tensor(T), torch.as_tensor(u), torch.as_tensor(W), torch.as_tensor(v), trained)
        th = g.theta(torch.as_tensor(W), torch.as_tensor(v))
        hvp = g.hessian(th, torch.arange(2))
        P = th.shape[1]
        H = torch.stack([hvp(torch.eye(P, dtype=torch.float64)[i].expand(2, -1).contiguous()) for i in range(P)], -1).numpy()
        ref = exact_hessian(Problem(teacher, student=TwoLayerNet(W[0], v[0][None], teacher.activation), trained=trained))
        np.testing.assert_allclose(H[0], ref, rtol=0, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_allclose(H[1], H[1].T, rtol=0, atol=1e-12 * np.abs(H[1]).max())


def test_batched_minres_solves_indefinite_and_singular_systems():
    from nearopt.landscape.polish import batched_minres

    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.normal(size=(3, 12, 12)))[0]
    lam = rng.uniform(0.1, 3.0, size=(3, 12)) * rng.choice([-1.0, 1.0], size=(3, 12))
    lam[2, :3] = 0.0  # singular: the minimum-norm solution of a consistent system
    A = torch.as_tensor(np.einsum("rij,rj,rkj->rik", Q, lam, Q))
    b = torch.as_tensor(rng.normal(size=(3, 12)))
    b[2] = A[2] @ b[2]
    x = batched_minres(lambda y: torch.bmm(A, y[..., None])[..., 0], b, maxiter=60, rtol=1e-12)
    ref = torch.linalg.pinv(A) @ b[..., None]
    np.testing.assert_allclose(x.numpy(), ref[..., 0].numpy(), rtol=0, atol=1e-9)


def test_batched_polish_ends_where_the_one_point_polish_does():
    from nearopt.landscape.critical import newton_polish
    from nearopt.landscape.polish import batched_newton_polish

    t, d = _end_points(5, 5, 6, seed=3)
    bp = batched_newton_polish(t, d.W, d.v)
    assert bp.converged.all()
    for r in range(6):
        end, _ = newton_polish(Problem(t, student=TwoLayerNet(d.W[r], d.v[r][None], t.activation), trained="first"))
        np.testing.assert_allclose(bp.W[r], end.point.W1, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("k", "n", "seed"), [(7, 7, 0), (4, 5, 5)])
def test_grouped_classification_gives_the_per_point_families(k, n, seed):
    from nearopt.landscape.polish import polish_case

    R = 12
    t, d = _end_points(k, n, R, seed=seed)
    grouped, counts = polish_case(t, d.W, d.v, "first")
    single = [polish_and_classify(t, d.W[r], d.v[r], "first") for r in range(R)]
    assert counts["batched"] + counts["one_point"] == R and counts["dense_spectra"] <= R
    assert [p.classification for p in grouped] == [p.classification for p in single]
    np.testing.assert_allclose([p.loss for p in grouped], [p.loss for p in single], rtol=1e-9, atol=1e-13)
    # n = k + 1: the global minima are not isolated (a teacher unit split in two), and the two polishes end at
    # different points of that manifold, with different spectra; every other family is isolated and compared
    isolated = n == k

    def table(points):
        fams = [f.to_dict() for f in families(points)]
        return [f for f in fams if isolated or f["classification"] != "global minimum"]

    a, b = table(grouped), table(single)
    keys = ("count", "classification", "index", "zero_modes", "multiplicities")
    assert [[f[k] for k in keys] for f in a] == [[f[k] for k in keys] for f in b]
    for fa, fb in zip(a, b):
        assert abs(fa["loss"] - fb["loss"]) < 1e-12 and abs(fa["lambda_min"] - fb["lambda_min"]) < 1e-8
        assert abs(fa["lambda_max"] - fb["lambda_max"]) < 1e-8
    if isolated:  # 11 global minima and a spurious one at this seed; members of one family share its spectrum
        assert [f["classification"] for f in a] == ["global minimum", "spurious local minimum"] and counts["dense_spectra"] < R


@pytest.mark.parametrize("trained", ["first", "both", "second"])
def test_compiled_and_torch_engines_take_the_same_steps(trained):
    """The compiled engine (one run per call, :mod:`nearopt.landscape._relu_jit`) against the batched torch loop:
    the same steps, statuses, end points and per-step batch sizes, for every trained block."""
    t = committee_teacher(4)
    rng = np.random.default_rng(8)
    W0 = rng.normal(scale=0.5, size=(6, 5, 4))
    v0 = np.ones((6, 5)) if trained == "first" else rng.normal(size=(6, 5))
    proto = DescentProtocol(lr=0.1, gtol=1e-6, max_steps=3000)
    a, b = (batched_descent(t, W0, v0, trained=trained, protocol=proto, engine=e) for e in ("torch", "compiled"))
    assert b.steps.tolist() == a.steps.tolist() and b.status.tolist() == a.status.tolist()
    np.testing.assert_allclose(b.W, a.W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.v, a.v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.loss, a.loss, rtol=0, atol=1e-13)
    assert b.active.tolist() == a.active.tolist()


def test_compiled_engine_drops_padding_and_reads_any_teacher():
    """Zero-padded runs of two sizes and a non-orthonormal teacher (the general product, not the
    basis shortcut): every run as if descended alone at its own size, padding left exactly zero."""
    from nearopt.landscape.descent import descend, padded_loss_gradient_function

    rng = np.random.default_rng(3)
    teachers = [sample_teacher(3, 3, "relu", seed=1), committee_teacher(4)]
    W0, v0, T, u = np.zeros((4, 5, 4)), np.zeros((4, 5)), np.zeros((4, 4, 4)), np.zeros((4, 4))
    sizes = [(3, 3, 3), (3, 3, 3), (5, 4, 4), (5, 4, 4)]  # (K, M, d) of each run
    for r, ((K, M, d), net) in enumerate(zip(sizes, [teachers[0]] * 2 + [teachers[1]] * 2)):
        W0[r, :K, :d], v0[r, :K] = rng.normal(scale=0.5, size=(K, d)), 1.0
        T[r, :M, :d], u[r, :M] = net.W1, net.W2.ravel()
    proto = DescentProtocol(lr=0.1, gtol=1e-7, max_steps=2000)
    padded = descend(padded_loss_gradient_function("relu", T, u), W0, v0, protocol=proto, engine="compiled")
    for r, ((K, _, d), net) in enumerate(zip(sizes, [teachers[0]] * 2 + [teachers[1]] * 2)):
        alone = batched_descent(net, W0[r : r + 1, :K, :d], v0[r : r + 1, :K], protocol=proto, engine="torch")
        assert padded.steps[r] == alone.steps[0] and padded.status[r] == alone.status[0]
        np.testing.assert_allclose(padded.W[r, :K, :d], alone.W[0], rtol=0, atol=1e-12)
        assert not padded.W[r, K:].any() and not padded.W[r, :, d:].any() and not padded.v[r, K:].any()
        assert abs(padded.loss[r] - alone.loss[0]) < 1e-13


def test_compiled_engine_counts_divergence_and_refuses_what_it_cannot_run():
    t = committee_teacher(2)
    d = batched_descent(t, np.ones((1, 2, 2)), np.ones((1, 2)), protocol=DescentProtocol(lr=50.0, gtol=1e-9, max_steps=10_000), engine="compiled")
    assert d.status.tolist() == ["diverged"]
    with pytest.raises(NearoptError, match="compiled engine takes the ReLU closed form"):
        batched_descent(committee_teacher(2, activation="erf"), np.ones((1, 2, 2)), np.ones((1, 2)), engine="compiled")
    with pytest.raises(NearoptError, match="engine must be one of"):
        batched_descent(t, np.ones((1, 2, 2)), np.ones((1, 2)), engine="jit")


def test_a_status_array_holds_every_status():
    """A resumed run may turn "unconverged" in the status array of a first pass where every run
    converged: the array must hold the longest status, not be cut to "unconverg"."""
    t = committee_teacher(2)
    d = batched_descent(t, np.eye(2)[None] * 1.0, np.ones((1, 2)), protocol=DescentProtocol(lr=0.1, gtol=1e-3, max_steps=10))
    assert d.status.tolist() == ["converged"]
    d.status[0] = "unconverged"
    assert d.count("unconverged") == 1 and set(STATUSES) >= set(d.status.tolist())


def test_split_pattern_counts_parallel_units_and_zero_rows():
    from nearopt.landscape.families import split_pattern

    t = np.eye(3)
    W = np.vstack([0.3 * t[0], 0.7 * t[0], t[1], t[2], np.zeros(3)])
    assert split_pattern(W) == (2, 1, 1, -1)
    assert split_pattern(np.eye(3)) == (1, 1, 1)
    assert split_pattern(np.vstack([t[0], -t[0]])) == (1, 1)  # opposite directions are not a split


def test_non_isolated_global_minima_form_one_family_with_their_spread():
    """At n = k + 1 a teacher unit split between two student units at any ratio is a global minimum
    on a continuum of them: such points make one family per split pattern (not one family per
    ratio), reporting the range of their spectra; each point keeps its own spectrum."""
    from nearopt.landscape.families import split_pattern

    s = committee_survey(4, 5, n_starts=30, seed=1, handover=1e-5)
    fams = s.to_dict()["families"]
    flat = [p for p in s.points if p is not None and p.classification == "global minimum" and p.zero_modes > 0]
    assert flat, "this seed reaches split global minima"
    manifold = [f for f in fams if f["non_isolated"]]
    assert sum(f["count"] for f in manifold) >= len(flat)
    patterns = [{split_pattern(s.points[i].student.W1) for i in f["members"]} for f in manifold]
    assert all(len(p) == 1 for p in patterns) and len({next(iter(p)) for p in patterns}) == len(manifold)
    for f in manifold:
        members = [s.points[i] for i in f["members"]]
        lo = [p.eigenvalues[p.zero_modes + p.index] for p in members]
        hi = [p.eigenvalues[-1] for p in members]
        assert f["spread"]["lambda_nonzero_min"] == [min(lo), max(lo)] and f["spread"]["lambda_max"] == [min(hi), max(hi)]
        assert all(p.classification == "global minimum" for p in members)
    assert all(f["spread"] is None for f in fams if not f["non_isolated"])
