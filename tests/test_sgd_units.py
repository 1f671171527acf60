"""The exact SGD moments through at most four units (sgd_units) against the tensor rule in the row space."""

import numpy as np
import pytest

import nearopt as no
from nearopt.dynamics import sgd_predict as sp
from nearopt.dynamics.sgd_units import axis_order, unit_fourth_moments, unit_layout, unit_second_moments, unit_work
from nearopt.errors import NearoptError
from nearopt.model.problem import Problem


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) if b.size else 0.0


def _both(problem, tensor_order, unit_order):
    """``(H_A, E[cc], M4)`` by the tensor rule and by units, in the tensor route's eigen-coordinates."""
    rj = sp.reduced_jacobian(problem)
    HA, M = sp._second_moments(rj, tensor_order, 8192)
    (_, UA), (_, UC) = sp._ranges((HA, M), sp.RANGE_RTOL)
    m4 = sp._fourth_moments(rj, UA, UC, tensor_order, 8192)
    HU, MU = unit_second_moments(rj.activation, rj.Wr, rj.v, rj.first, rj.second, rj.size_c > 0, unit_order)
    m4u = unit_fourth_moments(rj.activation, rj.Wr, rj.v, rj.first, rj.second, rj.m, UA, UC, unit_order)
    return (HA, M, m4), (HU, MU, m4u)


@pytest.mark.parametrize("ni, nh, trained", [(3, 2, "both"), (4, 3, "both"), (3, 2, "first"), (3, 2, "second"), (2, 3, "both"), (4, 3, "first")])
def test_polynomial_exact_both_routes(ni, nh, trained):
    """Quadratic activation: both rules are exact, the routes agree to rounding (r <= 3, dependent units for N_h > N_i)."""
    pr = Problem(no.sample_teacher(ni, nh, "quadratic", seed=2), trained=trained)
    t, u = _both(pr, 5, 5)
    for a, b in zip(u, t):
        assert a.shape == b.shape and _rel(a, b) < 1e-12


@pytest.mark.parametrize("ni, nh, tensor_order, tol", [(3, 2, 96, 1e-10), (2, 3, 96, 1e-8), (4, 3, 64, 3e-8)])
def test_erf_routes_agree_to_the_tensor_rule_accuracy(ni, nh, tensor_order, tol):
    """erf: the unit route at 32 nodes against a fine tensor rule (whose own error, against a finer one, is below ``tol``)."""
    pr = Problem(no.sample_teacher(ni, nh, "erf", seed=1))
    t, u = _both(pr, tensor_order, 32)
    for a, b in zip(u, t):
        assert _rel(a, b) < tol


def test_relu_routes_agree_to_the_rules_accuracy():
    """ReLU: the kinks limit both rules to about 1e-3; the routes agree to that level."""
    pr = Problem(no.sample_teacher(3, 2, "relu", seed=1))
    t, u = _both(pr, 48, 48)
    assert _rel(u[2], t[2]) < 5e-3 and _rel(u[0], t[0]) < 2e-2


def test_exact_model_by_units_equals_tensor_route():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    a = sp.exact_model(net, route="tensor", order=64)
    b = sp.exact_model(net, route="units", order=32)
    assert a.info["route"] == "tensor" and b.info["route"] == "units"
    assert b.info["quadrature_error"] < 1e-9
    assert np.allclose(b.eigenvalues, a.eigenvalues, rtol=1e-9)
    assert b.critical_lr(1) == pytest.approx(a.critical_lr(1), rel=1e-8)
    assert b.curve(0.2, 2, [10, 100], sigma0=0.01, noise=0.1) == pytest.approx(a.curve(0.2, 2, [10, 100], sigma0=0.01, noise=0.1), rel=1e-8)
    with pytest.raises(NearoptError, match="unknown exact-moment route"):
        sp.exact_model(net, route="cubature")


def test_auto_route_and_what_it_reaches():
    """auto picks the cheaper route; ReLU N_i = 20, N_h = 6 and 8 fit the budget by units, N_h = 10 is refused for its coordinates."""
    for nh, want in ((2, "tensor"), (6, "units"), (8, "units")):
        rj = sp.reduced_jacobian(Problem(no.sample_teacher(20, nh, "relu", seed=0)))
        bound = rj.size_a * (rj.size_a + 1) // 2 + rj.size_c * (rj.size_c + 1) // 2
        route, n, work = sp._plan(rj, "auto", None, 48, False, True, bound)
        assert route == want and work <= sp.MAX_QUADRATURE_WORK and n >= 16
    with pytest.raises(NearoptError, match="6160 coordinates"):
        sp.exact_model(no.sample_teacher(20, 10, "relu", seed=0))


def test_layout_and_work():
    assert list(unit_layout(2, 2, True, True)) == [0, 1, 3, 4, 2, 5]
    assert list(unit_layout(2, 2, False, True)) == [2, 5]
    assert axis_order(48, 4) == 48 and axis_order(48, 1) == 192 and axis_order(24, 2) == 96
    # polynomial in N_h: C(N_h + 3, 4) multisets, not 24^10 nodes
    assert unit_work(10, 10, 24, 0, 0) < 1e12 < 24.0**10



@pytest.mark.parametrize("act, batch", [("erf", 1), ("erf", 8), ("relu", 1), ("quadratic", 2), ("erf", 1000)])
def test_pencil_critical_rate_equals_the_radius_bisection(act, batch):
    """One symmetric eigenproblem gives the critical rate the radius bisection finds (the +1 crossing comes first)."""
    model = sp.exact_model(no.sample_teacher(3, 2, act, seed=1), route="tensor", order=24 if act != "quadratic" else None, check=False)
    radius = model.critical_lr(batch, method="radius")
    pencil = model.critical_lr(batch, method="pencil")
    assert pencil == pytest.approx(radius, rel=1e-9)
    assert model.spectral_radius(pencil * (1 - 1e-6), batch) < 1.0 <= model.spectral_radius(pencil * (1 + 1e-6), batch)


def test_check_auto_builds_the_rule_alone_when_its_check_is_over_the_budget(monkeypatch):
    net = no.sample_teacher(3, 2, "erf", seed=0)
    monkeypatch.setattr(sp, "MAX_QUADRATURE_WORK", 3e5)  # the 16-node rule fits, not with its 22-node check
    with pytest.raises(NearoptError, match="without the check rule it fits"):
        sp.exact_model(net, route="tensor")
    model = sp.exact_model(net, route="tensor", check="auto")
    assert model.info["order"] == 16 and model.info["quadrature_error"] is None and "over the budget" in model.info["check_skipped"]
    monkeypatch.setattr(sp, "MAX_QUADRATURE_WORK", 1.5e11)
    full = sp.exact_model(net, route="tensor", check="auto")
    assert "check_skipped" not in full.info and full.info["quadrature_error"] < 1e-5
    with pytest.raises(NearoptError, match="check must be"):
        sp.exact_model(net, check="sometimes")
