"""Global-minimum manifold of overparameterized students (nearopt.landscape.manifold)."""

import json

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import nearopt as no
from nearopt.cli import main
from nearopt.curvature.population import PopulationHessian
from nearopt.errors import NearoptError
from nearopt.gaussian.objective import population_loss
from nearopt.landscape.manifold import (
    add_dead_units,
    compact_point,
    flip_signs,
    is_odd,
    is_positively_homogeneous,
    manifold_report,
    on_manifold,
    permute_units,
    predict_zero_modes,
    predicted_nonzero_spectrum,
    rescale_units,
    split_unit,
    unit_groups,
)
from nearopt.model.problem import Problem


def test_activation_properties():
    assert is_odd(no.sample_teacher(2, 1, "erf").activation) and is_odd(no.sample_teacher(2, 1, "cubic").activation)
    assert not is_odd(no.sample_teacher(2, 1, "relu").activation) and not is_odd(no.sample_teacher(2, 1, "quadratic").activation)
    assert is_positively_homogeneous(no.sample_teacher(2, 1, "relu").activation)
    assert not is_positively_homogeneous(no.sample_teacher(2, 1, "tanh").activation)


@pytest.mark.parametrize("act", ["erf", "relu", "cubic"])
def test_constructors_keep_the_function(act):
    T = no.sample_teacher(4, 3, act, seed=0)
    pts = [split_unit(T, 1, [0.2, 0.5, 0.3]), split_unit(T, 0, [2.0, -1.0]), add_dead_units(T, 3, seed=1), permute_units(T, [2, 0, 1])]
    pts.append(flip_signs(split_unit(T, 0, [0.4, 0.6]), [3]) if act != "relu" else rescale_units(split_unit(T, 0, [0.4, 0.6]), [0, 3], [0.5, 3.0]))
    X = no.sample_inputs(50, 4, seed=2)
    for S in pts:
        ok, loss = on_manifold(T, S)
        assert ok, loss
        assert np.allclose(S.forward(X), T.forward(X), atol=1e-13)
    off = split_unit(T, 0, [0.4, 0.6])
    off = off.with_parameters(off.parameters() + 1e-3)
    assert not on_manifold(T, off)[0]


def test_constructor_errors():
    T = no.sample_teacher(3, 2, "relu", seed=0)
    with pytest.raises(NearoptError, match="sum to 1"):
        split_unit(T, 0, [0.5, 0.4])
    with pytest.raises(NearoptError, match="odd"):
        flip_signs(T, [0])
    with pytest.raises(NearoptError, match="homogeneous"):
        rescale_units(no.sample_teacher(3, 2, "erf", seed=0), [0], [2.0])
    with pytest.raises(NearoptError, match="permutation"):
        permute_units(T, [0, 0])
    with pytest.raises(NearoptError, match="unit"):
        split_unit(T, 5, [1.0])
    with pytest.raises(NearoptError):
        add_dead_units(T, 2, incoming=np.zeros((3, 3)))


def test_groups():
    T = no.sample_teacher(3, 2, "erf", seed=0)
    S = flip_signs(split_unit(add_dead_units(T, 1, seed=3), 0, [0.3, 0.7]), [3])
    groups = unit_groups(S)
    sizes = sorted((g.size, g.live) for g in groups)
    assert sizes == [(1, False), (1, True), (2, True)]
    big = next(g for g in groups if g.size == 2)
    assert sorted(big.coefficients) == [-1.0, 1.0] and abs(big.outgoing - T.W2[0, 0]) < 1e-15
    compact, _ = compact_point(S)
    assert compact.n_hidden == 3 and on_manifold(T, compact)[0]


def _random_point(T, draw, odd):
    S = T
    for _ in range(draw(st.integers(0, 2))):
        unit = draw(st.integers(0, S.n_hidden - 1))
        k = draw(st.integers(2, 3))
        r = np.array(draw(st.lists(st.floats(0.1, 2.0), min_size=k, max_size=k)))
        S = split_unit(S, unit, r / r.sum())
    n_dead = draw(st.integers(0, 2))
    if n_dead:
        S = add_dead_units(S, n_dead, seed=draw(st.integers(0, 100)))
    if odd and draw(st.booleans()):
        S = flip_signs(S, [draw(st.integers(0, S.n_hidden - 1))])
    perm = np.random.default_rng(draw(st.integers(0, 100))).permutation(S.n_hidden)
    return permute_units(S, perm)


@settings(max_examples=12, deadline=None)
@given(data=st.data(), trained=st.sampled_from(["both", "first", "second"]), act=st.sampled_from(["erf", "relu"]))
def test_zero_modes_and_nonzero_spectrum_match_prediction(data, trained, act):
    """Measured rank (one rank rule) = predicted; nonzero spectrum = D^(1/2) H_compact D^(1/2) to rounding."""
    T = no.sample_teacher(4, 2, act, seed=data.draw(st.integers(0, 50)))
    S = _random_point(T, data.draw, act == "erf")
    rep = manifold_report(T, S, trained)
    assert rep["on_manifold"]
    assert rep["rank_measured"] == rep["rank_predicted"], rep
    assert rep["zero_modes_measured"] == rep["zero_modes_predicted"] >= rep["tangent_dimension"]
    assert rep["negative_eigenvalues"] == 0
    assert rep["nonzero_spectrum_error"] < 1e-11


def test_split_counts_and_ostrowski_bound():
    """Even k-way split (erf): zero modes (k-1)(N_i+1), tangent k-1, and lambda_min^+ within [min D, max D] x compact."""
    T = no.sample_teacher(5, 2, "erf", seed=4)
    n = 5
    Hc_full = PopulationHessian(Problem(T)).to_dense()
    lam_c = scipy.linalg.eigvalsh(Hc_full)[0]
    for k in (2, 3, 4):
        S = split_unit(T, 0, np.full(k, 1.0 / k))
        pred = predict_zero_modes(S)
        assert pred.zero_modes == (k - 1) * (n + 1) and pred.tangent == k - 1 and pred.flat_off_manifold == (k - 1) * n
        rep = manifold_report(T, S)
        assert rep["rank_measured"] == pred.rank
        lo, hi = rep["D_range"]
        assert lo == pytest.approx(1.0 / k) and hi == pytest.approx(k)
        assert lo * lam_c * (1 - 1e-10) <= rep["lambda_min_nonzero"] <= hi * lam_c * (1 + 1e-10)


def test_tanh_point_and_polynomial_prediction():
    T = no.sample_teacher(3, 2, "tanh", seed=5)
    S = add_dead_units(split_unit(T, 1, [0.25, 0.75]), 1, seed=1)
    rep = manifold_report(T, S)
    assert rep["on_manifold"] and rep["rank_measured"] == rep["rank_predicted"] == 2 * 4 + 1
    assert rep["nonzero_spectrum_error"] < 1e-11
    P = no.sample_teacher(3, 2, "cubic", seed=5)
    pred = predict_zero_modes(split_unit(P, 0, [0.5, 0.5]))
    assert pred.rank is None and "polynomial" in pred.symmetries
    eig, D = predicted_nonzero_spectrum(split_unit(P, 0, [0.5, 0.5]))
    meas = PopulationHessian(Problem(P, student=split_unit(P, 0, [0.5, 0.5]))).spectrum("dense")
    assert np.allclose(eig, meas.nonzero[-eig.size :], rtol=1e-10, atol=1e-13 * meas.largest)


def test_loss_is_quartic_along_flat_off_manifold_directions():
    """Moving two copies apart with v_1 dw_1 + v_2 dw_2 = 0: a Hessian zero mode, but the loss grows like eps^4."""
    T = no.sample_teacher(4, 2, "erf", seed=6)
    S = split_unit(T, 0, [0.3, 0.7])
    v = S.W2.ravel()
    d = np.random.default_rng(0).standard_normal(4)
    direction = np.zeros(S.n_params)
    direction[0:4] = d / v[0]
    direction[2 * 4 : 3 * 4] = -d / v[2]
    H = PopulationHessian(Problem(T, student=S)).to_dense()
    assert abs(direction @ H @ direction) < 1e-13 * np.abs(H).max() * direction @ direction
    losses = [population_loss(Problem(T, student=S.with_parameters(S.parameters() + e * direction))) for e in (1e-2, 2e-2)]
    assert losses[1] / losses[0] == pytest.approx(16.0, rel=0.05)


def test_cli_student_points(tmp_path, capsys):
    """nearopt spectrum at manifold points / students of another width / fixed layers; one-line errors."""
    s = tmp_path / "s.npz"
    assert main(["spectrum", "-a", "erf", "--ni", "4", "--nh", "2", "--population", "--split", "0:0.5,0.5", "--dead", "1", "--save-student", str(s)]) == 0
    capsys.readouterr()
    assert main(["spectrum", "-a", "erf", "--ni", "4", "--nh", "2", "--population", "--student", str(s), "--train", "W1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["P"] == 16 and d["rank"] == 8 and d["trained"] == "first" and abs(d["loss"]) < 1e-15 and d["gradient_norm"] < 1e-14
    assert main(["spectrum", "-a", "erf", "--ni", "4", "--nh", "2", "--samples", "500", "--student-width", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["P"] == 15 and d["loss"] > 0 and d["gradient_norm"] > 0
    assert main(["spectrum", "-a", "erf", "--ni", "5", "--nh", "2", "--population", "--student", str(s)]) == 2
    assert "N_i = 4" in capsys.readouterr().err
    assert main(["spectrum", "-a", "erf", "--ni", "4", "--nh", "2", "--population", "--split", "0:0.5,0.4"]) == 2
    assert "sum to 1" in capsys.readouterr().err
