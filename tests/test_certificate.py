"""Certificates of strict local minima (nearopt.landscape.certificate; nearopt critical/landscape --certify)."""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
from _cli import cli
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.experiments.landscape import published_k7
from nearopt.landscape.certificate import Certificate, _kernel_constants, _Reference, certify, cholesky_lower_bound, hessian_lipschitz_bound
from nearopt.landscape.critical import at_parameters, committee_teacher, exact_hessian, loss_and_gradient, newton_polish, trained_parameters
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


@pytest.fixture(scope="module")
def k7_minimum() -> Problem:
    """The published k = n = 7 spurious minimum (10-digit entries), Newton-polished."""
    T = committee_teacher(7)
    end, _ = newton_polish(Problem(T, student=TwoLayerNet(published_k7(), np.ones((1, 7)), T.activation), trained="first"))
    return end


def test_certifies_the_published_k7_spurious_minimum(k7_minimum):
    c = certify(k7_minimum)
    assert isinstance(c, Certificate) and c.certified, c.reason
    assert abs(c.lambda_min_float - 0.014059) < 1e-6 and 0 < c.lambda_min_float - c.mu < 1e-11
    assert c.h < 1e-9 and c.radius < 1e-12 and c.radius <= 2 * c.eta and c.margin > 0.014
    assert c.isolation > 0 and c.radius < c.ball_radius < c.smallest_unit_norm and c.unique_radius == c.ball_radius
    lo, hi = c.loss_interval
    assert lo <= c.loss <= hi and abs(c.loss - 0.0232027149) < 1e-10
    d = c.to_dict()
    assert json.loads(json.dumps(d))["certified"] is True and d["dtype"] == "float64" and "interval" in d["arithmetic"]
    fast = certify(k7_minimum, interval=False)  # plain 50-digit reference: the same conclusion
    assert fast.certified and abs(fast.mu - c.mu) < 1e-15 and "not enclosed" in fast.arithmetic


@pytest.mark.parametrize("act,trained", [("relu", "first"), ("relu", "both"), ("erf", "both"), ("erf:unit", "first"), ("erf", "second")])
def test_high_precision_reference_agrees_with_the_library(act, trained):
    """The certificate's 50-digit closed forms (loss, gradient, central-difference Hessian), plain and as
    interval enclosures, against the library's float64."""
    rng = np.random.default_rng(3)
    T = TwoLayerNet(rng.normal(size=(2, 3)), rng.normal(size=(1, 2)), act)
    S = TwoLayerNet(rng.normal(size=(3, 3)), rng.normal(size=(1, 3)), act)
    S = TwoLayerNet(np.vstack([S.W1[:2], 0.7 * T.W1[:1]]), S.W2, act)  # one student unit parallel to a teacher unit
    pr = Problem(T, student=S, trained=trained)
    loss, g = loss_and_gradient(pr)
    H = exact_hessian(pr)
    L3 = hessian_lipschitz_bound(pr, 1e-20)
    for interval in (False, True):
        ref = _Reference(pr, interval=interval)
        L, grad = ref.loss_gradient()
        assert ref.lower(L) - 1e-13 <= loss <= ref.upper(L) + 1e-13
        assert not interval or (float(L.delta) < 1e-40 and max(float(x.delta) for x in grad) < 1e-40)  # tight enclosures
        for gi, x in zip(g, (grad[int(p)] for p in pr.trained_indices)):
            assert ref.lower(x) - 1e-13 <= gi <= ref.upper(x) + 1e-13
        err = ref.hessian_error(H, pr.trained_indices, L3)
        assert err < 1e-12
        E = 1e-6 * np.random.default_rng(4).normal(size=H.shape)
        assert ref.hessian_error(H + E, pr.trained_indices, L3) >= np.linalg.norm(E) - err  # a bound, not an estimate


def _kappa(name: str, a: list, b: list):
    """The pair kernel in mpmath, written independently of the module: arc-cosine (ReLU) or arcsine (erf)."""
    na2, nb2, ab = mpmath.fdot(a, a), mpmath.fdot(b, b), mpmath.fdot(a, b)
    if name == "relu":
        S = mpmath.sqrt(max(na2 * nb2 - ab * ab, 0))
        th = mpmath.atan2(S, ab)
        return (S + (mpmath.pi - th) * ab) / (2 * mpmath.pi)
    c = 1 if name == "erf" else 2
    return 2 / mpmath.pi * mpmath.asin(c * ab / mpmath.sqrt((1 + c * na2) * (1 + c * nb2)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["relu", "erf", "erf:unit"]),
       mode=st.sampled_from(["generic", "parallel", "antiparallel", "along"]), teacher=st.booleans())
def test_pair_kernel_bounds_dominate_high_precision_derivatives(seed, name, mode, teacher):
    """First, second and third derivatives of ``kappa(a + tp, b + tq)`` at ``t = 0`` by 60-digit finite
    differences, against the derived bounds of docs/certificate.md section 2 (``teacher``: ``q = 0``)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=4) * rng.uniform(0.2, 3), rng.normal(size=4) * rng.uniform(0.2, 3)
    p, q = rng.normal(size=4), (0.0 if teacher else 1.0) * rng.normal(size=4)
    if mode == "parallel":
        b = a * rng.uniform(0.3, 2) + 1e-6 * rng.normal(size=4)
    elif mode == "antiparallel":
        b = -a * rng.uniform(0.3, 2) + 1e-6 * rng.normal(size=4)
    elif mode == "along":
        p = 0.5 * a / np.linalg.norm(a) + 0.43 * rng.normal(size=4)
    P, Q, na, nb = (float(np.linalg.norm(x)) for x in (p, q, a, b))
    c = {k: float(v[0]) for k, v in _kernel_constants(name, np.array([na]), np.array([na]), np.array([nb]), np.array([nb])).items()}
    with mpmath.workdps(60):
        h = mpmath.mpf("1e-12")

        def f(t):
            return _kappa(name, [mpmath.mpf(float(x)) + t * float(y) for x, y in zip(a, p)],
                          [mpmath.mpf(float(x)) + t * float(y) for x, y in zip(b, q)])

        fm2, fm1, f0, f1, f2 = (f(k * h) for k in (-2, -1, 0, 1, 2))
        d1, d2, d3 = (float(x) for x in ((f1 - fm1) / (2 * h), (f1 - 2 * f0 + fm1) / h**2, (f2 - 2 * f1 + 2 * fm1 - fm2) / (2 * h**3)))
    assert abs(d1) <= (c["c1a"] * P + c["c1b"] * Q) * (1 + 1e-6)
    assert abs(d2) <= (c["c2a"] * P**2 + c["c2b"] * Q**2 + c["c11"] * P * Q) * (1 + 1e-6)
    assert abs(d3) <= (c["c3a"] * P**3 + c["c3b"] * Q**3 + c["c21"] * P**2 * Q + c["c12"] * P * Q**2) * (1 + 1e-6)


def _sampled_lipschitz(pr: Problem, rho: float, rng: np.random.Generator, n: int = 6, eps: float = 1e-5) -> float:
    """Largest ``|H(x) - H(x + eps d)| / eps`` over random ``x`` in ``B(x0, rho)`` and unit ``d`` (half of them on one unit)."""
    th0 = trained_parameters(pr)
    P, K, d = th0.size, pr.point.n_hidden, pr.point.n_inputs
    best = 0.0
    for i in range(n):
        u = rng.normal(size=P)
        x = th0 + rho * rng.uniform() ** (1 / P) * u / np.linalg.norm(u)
        v = rng.normal(size=P)
        if i % 2 and pr.trained != "second":
            a, mask = int(rng.integers(K)), np.zeros(P)
            mask[a * d:(a + 1) * d] = 1.0
            v *= mask
        v /= np.linalg.norm(v)
        best = max(best, float(np.linalg.norm(exact_hessian(at_parameters(pr, x)) - exact_hessian(at_parameters(pr, x + eps * v)), 2)) / eps)
    return best


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), act=st.sampled_from(["relu", "erf", "erf:unit"]), trained=st.sampled_from(["first", "both"]),
       special=st.sampled_from(["generic", "duplicate", "teacher-parallel", "antiparallel"]), frac=st.floats(0.05, 0.6))
def test_lipschitz_bound_dominates_sampled_hessian_differences(seed, act, trained, special, frac):
    """The derived ``L3`` bounds ``|H(x) - H(y)| / |x - y|`` sampled in the ball, also across parallel pairs."""
    rng = np.random.default_rng(seed)
    T = TwoLayerNet(rng.normal(size=(2, 3)), rng.normal(size=(1, 2)), act)
    W = rng.normal(size=(3, 3))
    if special == "duplicate":
        W[1] = 1.5 * W[0]
    elif special == "teacher-parallel":
        W[0] = 0.8 * T.W1[0]
    elif special == "antiparallel":
        W[1] = -0.6 * W[0]
    pr = Problem(T, student=TwoLayerNet(W, rng.normal(size=(1, 3)), act), trained=trained)
    rho = frac * float(np.linalg.norm(W, axis=1).min())
    bound = hessian_lipschitz_bound(pr, rho)
    sampled = _sampled_lipschitz(pr, rho, rng)
    assert sampled <= bound * (1 + 1e-6) + 1e-6, (sampled, bound)
    assert bound <= 2000 * max(sampled, 1e-3)  # not absurdly loose (measured ratios: docs/certificate.md)


def test_lipschitz_bound_reaches_zero_units_only_for_relu():
    rng = np.random.default_rng(0)
    for act in ("relu", "erf"):
        T = TwoLayerNet(rng.normal(size=(2, 3)), np.ones((1, 2)), act)
        W = rng.normal(size=(2, 3))
        pr = Problem(T, student=TwoLayerNet(W, np.ones((1, 2)), act), trained="first")
        big = 1.01 * float(np.linalg.norm(W, axis=1).min())
        assert np.isinf(hessian_lipschitz_bound(pr, big)) == (act == "relu")
        assert hessian_lipschitz_bound(pr.replace(trained="second"), big) == 0.0  # L is quadratic in the second layer


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), shift=st.floats(-0.5, 1.5))
def test_cholesky_lower_bound_is_below_lambda_min(seed, n, shift):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    lam = np.sort(rng.uniform(1e-3, 2.0, size=n))
    H = (Q * lam) @ Q.T
    H = 0.5 * (H + H.T)
    s = lam[0] * shift
    b = cholesky_lower_bound(H, s)
    if s > lam[0] * (1 + 1e-8):
        assert b is None
    if b is not None:
        assert b <= lam[0] + 1e-12 and b >= s - 1e-10 * n * lam[-1]


def _saddle_problem() -> Problem:
    """``w = 0, v = 0`` for one erf unit against an erf teacher: a saddle with ``H = [[0, rho], [rho^T, 0]]`` (docs/students.md §4)."""
    rng = np.random.default_rng(1)
    T = TwoLayerNet(rng.normal(size=(1, 3)), np.ones((1, 1)), "erf")
    return Problem(T, student=TwoLayerNet(np.zeros((1, 3)), np.zeros((1, 1)), "erf"), trained="both")


def test_refuses_a_saddle_a_degenerate_point_and_an_unpolished_point(k7_minimum):
    pr = _saddle_problem()
    assert np.linalg.norm(loss_and_gradient(pr)[1]) < 1e-15
    c = certify(pr)
    assert not c.certified and "not positive definite" in c.reason and "saddle" in c.reason
    # over-parameterized global minimum: a teacher unit split in two parallel copies, a line of minima
    T = committee_teacher(3)
    W = np.vstack([np.eye(3), np.eye(3)[2:]])
    W[2], W[3] = 0.3 * W[2], 0.7 * W[3]
    c = certify(Problem(T, student=TwoLayerNet(W, np.ones((1, 4)), T.activation), trained="first"))
    assert not c.certified and "positive definite" in c.reason
    # not polished: a 1e-3 step off the k = 7 minimum
    th = trained_parameters(k7_minimum) + 1e-3 * np.random.default_rng(0).normal(size=49) / 7
    c = certify(at_parameters(k7_minimum, th))
    assert not c.certified and "Kantorovich condition fails" in c.reason and c.h > 0.5


def test_refuses_zero_units_and_a_ball_reaching_one(k7_minimum):
    T = committee_teacher(3)
    W = np.eye(3)
    W[2] = 0.0
    c = certify(Problem(T, student=TwoLayerNet(W, np.ones((1, 3)), T.activation), trained="first"))
    assert not c.certified and "zero ReLU unit" in c.reason
    c = certify(k7_minimum, radius=0.9)
    assert not c.certified and "meets a zero unit" in c.reason
    c = certify(k7_minimum, radius=1e-6)
    assert c.certified and c.ball_radius == 1e-6 and c.lipschitz < hessian_lipschitz_bound(k7_minimum, 0.5)
    c = certify(k7_minimum, radius=0.5)  # certified, but the ball is too large to be convex or free of other critical points
    assert c.certified and c.isolation < 0 and c.unique_radius < 0.5


def test_certifies_an_erf_minimum_with_both_layers_trained():
    rng = np.random.default_rng(2)
    T = TwoLayerNet(rng.normal(size=(2, 3)), rng.normal(size=(1, 2)), "erf")
    c = certify(Problem(T, student=T, trained="both"))  # the global minimum, student = teacher
    assert c.certified, c.reason
    assert c.loss_interval[0] == 0.0 and c.loss < 1e-15 and 0 < c.radius < 1e-30  # g = 0 to the reference's level


def test_bad_input():
    T = committee_teacher(2, activation="tanh")
    with pytest.raises(NearoptError, match="no derived third-derivative bound"):
        certify(Problem(T, student=T, trained="first"))
    T = committee_teacher(2)
    with pytest.raises(NearoptError, match="radius must be"):
        certify(Problem(T, student=T, trained="first"), radius=-1.0)


def test_cli_critical_certify():
    code, out, err = cli("critical", "--committee", "3", "--student-seed", "1", "--certify", "--quiet")
    assert code == 0, err
    d = json.loads(out)
    assert d["classification"] == "global minimum" and d["certificate"]["certified"] is True
    assert abs(d["certificate"]["mu"] - (0.25 - 1 / (2 * np.pi))) < 1e-10  # lambda_min at W = I (docs/students.md §4)
    code, out, err = cli("critical", "--committee", "3", "-a", "tanh", "--certify", "--quiet")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--certify: no derived third-derivative bound for activation 'tanh'" in err


def test_cli_landscape_certify():
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "--gtol", "1e-7", "--certify", "--json", "--quiet")
    assert code == 0, err
    fams = json.loads(out)["families"]
    assert fams and all("certificate" in f for f in fams)
    assert all(f["certificate"]["certified"] == (f["classification"] in ("global minimum", "spurious local minimum")) for f in fams)
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "-a", "tanh", "--certify", "--json", "--quiet")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--certify" in err
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "--gtol", "1e-7", "--certify", "--quiet")
    assert code == 0 and "certified strict minimum" in out


def test_without_mpmath_certificates_name_the_extra_and_the_rest_works(monkeypatch, tmp_path):
    """mpmath is the optional ``certify`` extra: without it ``certify`` and both ``--certify`` options stop
    with one error line naming ``pip install nearopt[certify]`` (the CLI before any descent or file), and
    ``import nearopt`` with a spectrum works in a fresh interpreter."""
    import subprocess
    import sys

    monkeypatch.setitem(sys.modules, "mpmath", None)  # `import mpmath` raises ImportError
    T = committee_teacher(2)
    with pytest.raises(NearoptError, match=r"^certify: .*mpmath.*pip install nearopt\[certify\]$"):
        certify(Problem(T, student=T, trained="first"))
    saved = tmp_path / "student.npz"
    code, out, err = cli("critical", "--committee", "3", "--certify", "--quiet", "--save-student", saved)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "--certify" in err and "pip install nearopt[certify]" in err and not saved.exists()
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "--certify", "--json", "--quiet")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "pip install nearopt[certify]" in err
    script = ("import sys; sys.modules['mpmath'] = None\n"
              "import nearopt as no, nearopt.landscape.certificate, nearopt.cli\n"
              "s = no.PopulationHessian(no.sample_teacher(3, 2, 'erf', seed=0)).spectrum('dense')\n"
              "print(s.eigenvalues.size)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.split() == ["8"], proc.stderr[-2000:]
