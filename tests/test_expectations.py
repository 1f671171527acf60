"""Two-dimensional Gaussian expectations: closed forms vs quadrature vs Monte Carlo."""

import math

import numpy as np
import pytest

import nearopt as no
from nearopt.errors import NearoptError
from nearopt.gaussian import expectations as G
from nearopt.model.activations import get_activation

SMOOTH_CLOSED = ["linear", "quadratic", "cubic", "monomial:4", "polynomial:0.5,1,-0.3,0.2", "erf", "erf:unit"]


def _pairs(seed=0, n_h=4, n_i=3, scale=1.3):
    """Covariances of all unit pairs of a random first layer (diagonal = collinear pairs included)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_h, n_i)) / np.sqrt(n_i) * scale
    C = W @ W.T
    d = np.diag(C)
    i, j = np.triu_indices(n_h)
    return W, C, (i, j), (d[i], C[i, j], d[j])


def _sub(m, i, j):
    return G.PairMoments(m.gg[i, j], m.b[i, j], m.dd[i, j], m.K[i, j], m.method)


@pytest.mark.parametrize("act", SMOOTH_CLOSED)
def test_closed_form_matches_quadrature(act):
    _, C, (i, j), (c11, c12, c22) = _pairs()
    exact = G.pair_moments(act, C)
    assert exact.method == "closed-form"
    fwd, rev = G.quadrature_moments(act, c11, c12, c22)
    assert fwd.error <= G.QUADRATURE_TOL * 1e3
    for e, q, cov in ((_sub(exact, i, j), fwd, (c11, c12, c22)), (_sub(exact, j, i), rev, (c22, c12, c11))):
        for a, b in zip(e.raw(*cov), q.raw(*cov)):
            scale = max(1.0, np.abs(a).max())
            assert np.abs(a - b).max() <= 1e-11 * scale


def _mc_moments(W, act, a, c, n=400_000, seed=1):
    """Monte-Carlo estimates (mean, standard error) of the three x-space expectations of pair (a, c)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, W.shape[1]))
    Z = X @ W[[a, c]].T
    g, dg = act.numpy(Z), act.numpy_derivative(Z)
    samples = [
        (g[:, 0] * g[:, 1])[:, None],
        (dg[:, 0] * g[:, 1])[:, None] * X,
        ((dg[:, 0] * dg[:, 1])[:, None, None] * X[:, :, None] * X[:, None, :]).reshape(n, -1),
    ]
    return [(s.mean(0), s.std(0) / np.sqrt(n)) for s in samples]


@pytest.mark.parametrize("act", SMOOTH_CLOSED + ["relu"])
def test_closed_form_matches_monte_carlo(act):
    W, C, _, _ = _pairs(scale=1.0)
    g = get_activation(act)
    m = G.pair_moments(g, C)
    for a, c in [(0, 1), (2, 3), (1, 1)]:
        A = W[[a, c]]
        pred = [
            np.array([m.gg[a, c]]),
            A.T @ m.b[a, c],
            (m.dd[a, c] * np.eye(W.shape[1]) + A.T @ m.K[a, c] @ A).ravel(),
        ]
        for p, (mean, se) in zip(pred, _mc_moments(W, g, a, c)):
            assert np.all(np.abs(p - mean) <= 5 * se + 1e-12), (a, c, p, mean, se)


def test_relu_quadrature_converges_to_closed_form():
    """ReLU is not smooth: Gauss–Hermite converges only algebraically, but towards the arc-cosine forms."""
    _, C, (i, j), cov = _pairs()
    exact = _sub(G.pair_moments("relu", C), i, j).raw(*cov)
    errs = []
    for order in (50, 400):
        q, _ = G.quadrature_moments("relu", *cov, order=order)
        errs.append(max(np.abs(a - b).max() for a, b in zip(exact, q.raw(*cov))))
    assert errs[1] < errs[0] / 2 and errs[1] < 2e-2


def test_tanh_quadrature_is_checked_and_matches_monte_carlo():
    W, C, _, _ = _pairs(scale=1.0)
    m = G.pair_moments("tanh", C)
    assert m.method == "quadrature" and m.order in G.QUADRATURE_ORDERS and m.error <= G.QUADRATURE_TOL * max(1.0, np.abs(m.K).max())
    mean, se = _mc_moments(W, get_activation("tanh"), 0, 2)[1]
    assert np.all(np.abs(W[[0, 2]].T @ m.b[0, 2] - mean) <= 5 * se)


def test_gaussian_expectations_wick_and_arcsine():
    C = np.array([[1.3, 0.4], [0.4, 0.7]])
    r = G.gaussian_expectations(lambda u, v: u**2 * v**2, C)
    assert r.mean == pytest.approx(C[0, 0] * C[1, 1] + 2 * C[0, 1] ** 2, rel=1e-13)
    assert np.allclose(r.first, 0.0, atol=1e-13)
    from scipy.special import erf

    r = G.gaussian_expectations(lambda u, v: erf(u / np.sqrt(2)) * erf(v / np.sqrt(2)), C)
    expect = 2 / np.pi * np.arcsin(C[0, 1] / np.sqrt((1 + C[0, 0]) * (1 + C[1, 1])))
    assert abs(r.mean - expect) < 1e-13 and r.error < 1e-12
    # singular covariance (u = 2 v): E[u v] = 2 Var v
    S = np.array([[4.0, 2.0], [2.0, 1.0]])
    r = G.gaussian_expectations(lambda u, v: np.ones_like(u), S)
    assert np.allclose(r.second, S, atol=1e-13)


def test_gaussian_expectations_errors():
    with pytest.raises(NearoptError):
        G.gaussian_expectations(lambda u, v: u, np.array([[1.0, 2.0], [2.0, 1.0]]))  # indefinite
    with pytest.raises(NearoptError):
        G.gaussian_expectations(lambda u, v: u, np.ones(3))
    with pytest.raises(NearoptError, match="did not converge"):
        G.gaussian_expectations(lambda u, v: np.sign(u - 0.3) * np.abs(v) ** 0.5, np.eye(2))
    with pytest.raises(NearoptError):
        G.gaussian_expectations(lambda u, v: u, np.eye(2), order=0)


def test_normal_rule_moments():
    """The trapezoidal rule with the Gaussian weight integrates moments and smooth functions to ~eps."""
    from scipy.special import factorial2

    for n, kmax in ((129, 4), (513, 8)):  # the tail beyond L = 9 (n = 129) still holds ~1e-10 of E[y^16]
        x, w = G.normal_rule(n)
        for k in range(0, kmax + 1):
            assert (w * x ** (2 * k)).sum() == pytest.approx(factorial2(2 * k - 1) if k else 1.0, rel=1e-13)
    tanh2 = [(w * np.tanh(1.3 * x) ** 2).sum() for x, w in map(G.normal_rule, (129, 1025))]
    assert abs(tanh2[0] - tanh2[1]) < 2e-16
    assert all(abs(G.normal_rule(n)[1].sum() - 1) < 2e-15 for n in G.QUADRATURE_ORDERS[3:])  # L >= 8.7: tail < 1e-17


@pytest.mark.parametrize("one_minus_rho2", [1e-4, 1e-8, 1e-11, 1e-14, 0.0])
def test_quadrature_nearly_parallel_units(one_minus_rho2):
    """Nearly parallel units: the derivative (Stein) route keeps full accuracy (erf against its closed form)."""
    c11, c22 = 1.2, 0.8
    c12 = np.sqrt((1 - one_minus_rho2) * c11 * c22)
    fwd, rev = G.quadrature_moments("erf", c11, c12, c22)
    exact = no.get_activation("erf").closed_form_moments(c11, c12, c22)
    exact_rev = no.get_activation("erf").closed_form_moments(c22, c12, c11)
    for e, q, cov in ((exact, fwd, (c11, c12, c22)), (exact_rev, rev, (c22, c12, c11))):
        for a, b in zip(e.raw(*cov), q.raw(*cov)):
            assert np.abs(a - b).max() <= 1e-12


def test_tanh_small_input_dimension_converges():
    """N_i = 2, N_h = 30: many nearly parallel pairs, whose quadrature still converges."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 2)) / np.sqrt(2)
    m = G.pair_moments("tanh", W @ W.T)
    assert m.error <= G.QUADRATURE_TOL * max(1.0, np.abs(m.K).max())
    # the same activation through the generic autograd derivatives gives the same moments
    import torch

    from nearopt.model.activations import CustomActivation

    generic = G.pair_moments(CustomActivation("my-tanh", torch.tanh), W @ W.T)
    for a, b in ((m.gg, generic.gg), (m.b, generic.b), (m.dd, generic.dd), (m.K, generic.K)):
        assert np.abs(a - b).max() <= 1e-12


def test_activation_derivatives_match_autograd():
    import torch

    from nearopt.model.activations import Activation, CustomActivation

    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    acts = [get_activation(n) for n in ("tanh", "erf", "erf:unit", "cubic", "linear", "polynomial:1,-2,0.5,0.25")]
    acts.append(CustomActivation("softplus", torch.nn.functional.softplus))
    acts.append(CustomActivation("two-z", lambda t: 2 * t, lambda t: 2 + 0 * t))
    for act in acts:
        fast, generic = act.derivatives(z, 3), Activation.derivatives(act, z, 3)
        assert len(fast) == 4
        for a, b in zip(fast, generic):
            assert torch.allclose(a, b, rtol=1e-13, atol=1e-14), act.name
    sp = acts[-2].derivatives(z, 3)
    s = torch.sigmoid(z)
    assert torch.allclose(sp[2], s * (1 - s), rtol=1e-13) and torch.allclose(sp[3], s * (1 - s) * (1 - 2 * s), rtol=1e-12)


def test_kinked_activation_marked_smooth_is_refused():
    """A kink hidden behind smooth=True would make the derivative route converge to a wrong value."""
    import torch

    from nearopt.model.activations import CustomActivation

    _, C, _, _ = _pairs()
    leaky = CustomActivation("leaky", lambda z: torch.where(z > 0, z, 0.9 * z))  # smooth=True by default: wrong
    with pytest.raises(NearoptError, match="marked smooth"):
        G.pair_moments(leaky, C)
    cubic_kink = CustomActivation("z|z|", lambda z: z * z.abs())  # C^1: the jump is in g''
    with pytest.raises(NearoptError, match="marked smooth"):
        G.pair_moments(cubic_kink, C)
    honest = CustomActivation("leaky", lambda z: torch.where(z > 0, z, 0.9 * z), smooth=False)
    q = G.pair_moments(honest, C, order=400)  # the g, g' route: converges (algebraically) to the right value
    relu_part = G.pair_moments("relu", C)
    # leaky(z) = 0.9 z + 0.1 relu(z): E[g(u) g(v)] = 0.81 c12 + 0.09 E[z relu] * 2 + 0.01 E[relu relu]
    expect = 0.81 * C + 0.09 * C + 0.01 * relu_part.gg  # E[u relu(v)] = c12 / 2
    assert np.abs(q.gg - expect).max() < 1e-3


def test_non_smooth_quadrature_needs_an_explicit_order():
    import torch

    from nearopt.model.activations import CustomActivation

    _, C, _, _ = _pairs()
    leaky = CustomActivation("leaky", lambda z: torch.where(z > 0, z, 0.9 * z), smooth=False)
    with pytest.raises(NearoptError, match="not smooth"):
        G.pair_moments(leaky, C)


def test_wide_preactivations_converge():
    """Unit variances ~130 (tanh features of width ~0.1 in y) need the finest levels; still checked to 1e-12."""
    c = np.array([[133.4, 40.0], [40.0, 95.3]])
    fwd, _ = G.quadrature_moments("tanh", c[0, 0], c[0, 1], c[1, 1])
    assert fwd.order > 1237 and fwd.error <= G.QUADRATURE_TOL * max(1.0, np.abs(fwd.K).max())


# --------------------------------------------------------------------------- the one Gauss-Hermite rule
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20, 40, 64, 100])
def test_gauss_hermite_moments_exact_to_degree_2n_minus_1(n):
    """``E[y^2k] = (2k - 1)!!`` for ``2k <= 2n - 1``; the first moment the rule misses, ``y^2n``, is off by exactly ``n!``."""
    from scipy.special import factorial, factorial2

    x, w = G.gauss_hermite(n)
    assert x.shape == w.shape == (n,)
    assert abs(w.sum() - 1.0) <= 4e-16
    for k in range(0, n):
        exact = factorial2(2 * k - 1) if k else 1.0
        assert (w * x ** (2 * k)).sum() == pytest.approx(exact, rel=1e-14)
        assert abs((w * x ** (2 * k + 1)).sum()) <= 1e-15 * np.sqrt(factorial2(4 * k + 1))
    # He_n vanishes on the nodes and E[He_n^2] = n!, He_n^2 = y^2n + lower: the rule misses y^2n by n!
    assert (w * x ** (2 * n)).sum() == pytest.approx(factorial2(2 * n - 1) - factorial(n), rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("n", [2, 7, 48, 64, 160, 300])
def test_gauss_hermite_against_scipy(n):
    from scipy.special import roots_hermitenorm

    xs, ws = roots_hermitenorm(n)
    x, w = G.gauss_hermite(n)
    np.testing.assert_allclose(x, xs, rtol=0, atol=1e-15 * np.abs(xs).max())
    np.testing.assert_allclose(w, ws / np.sqrt(2 * np.pi), rtol=0, atol=2e-14 * w.max())


def test_gauss_hermite_cached_read_only_and_checked():
    x, w = G.gauss_hermite(12)
    assert G.gauss_hermite(12)[0] is x
    with pytest.raises(ValueError):
        x[0] = 0.0
    for bad in (0, -3, 2.5, True, float("nan"), "7"):
        with pytest.raises(NearoptError, match="integer >= 1"):
            G.gauss_hermite(bad)


def _abs_moment(k: int) -> float:
    """``E|y|^k``, ``y ~ N(0, 1)``."""
    return 2.0 ** (k / 2) * math.gamma((k + 1) / 2) / math.sqrt(math.pi)


def test_split_normal_rule_accuracy():
    """The asymptotic law's rule: a step at 0 exactly, |y|^k and a Gaussian bump to the stated relative accuracy."""
    z, w = G.split_normal_rule()
    assert z.size == 2 * G.HALF_NODES and not w.flags.writeable and np.all(w > 0)
    assert np.sum(w) == pytest.approx(1.0, rel=1e-15, abs=0.0)
    assert np.sum(w * (z > 0)) == 0.5
    for k in range(21):
        assert np.sum(w * np.abs(z) ** k) == pytest.approx(_abs_moment(k), rel=4e-14, abs=0.0), k
    for c in (1e-3, 0.1, 0.5, 1.0):
        assert np.sum(w * np.exp(-0.5 * c * z * z)) == pytest.approx((1.0 + c) ** -0.5, rel=2e-14, abs=0.0), c


@pytest.mark.parametrize("c", [1.5, 10.0, 1e6, 1e12, 1e100])
def test_graded_normal_rule_accuracy(c):
    """A bump of width 1/sqrt(c), which the split rule misses at large c, and the moments of y."""
    z, w = G.graded_normal_rule(math.sqrt(c))
    assert np.sum(w * np.exp(-0.5 * c * z * z)) == pytest.approx((1.0 + c) ** -0.5, rel=2e-15, abs=0.0)
    for k in range(21):
        assert np.sum(w * np.abs(z) ** k) == pytest.approx(_abs_moment(k), rel=2e-15, abs=0.0), k
    if c >= 1e6:
        zs, ws = G.split_normal_rule()
        assert abs(np.sum(ws * np.exp(-0.5 * c * zs * zs)) * math.sqrt(1.0 + c) - 1.0) > 0.1


def test_variance_rules_pick_the_rule_per_variance():
    Y, W = G.variance_rules([0.5, 1.0, 100.0])
    z, w = G.split_normal_rule()
    zg, wg = G.graded_normal_rule(10.0)
    assert Y.shape == W.shape == (3, max(z.size, zg.size))
    for i in range(2):
        assert np.array_equal(Y[i, : z.size], z) and np.array_equal(W[i, : z.size], w) and not W[i, z.size :].any()
    assert np.array_equal(Y[2, : zg.size], zg) and np.array_equal(W[2, : zg.size], wg)


# --------------------------------------------------------------------------- the pair kernel and the output power
def _erf_kernel(c11, c12, c22, scale=2.0**0.5):
    """Textbook arcsine kernel of ``erf(z / scale)`` (Williams 1997)."""
    k = 2.0 / scale**2
    return 2 / np.pi * np.arcsin(k * c12 / np.sqrt((1 + k * c11) * (1 + k * c22)))


def _relu_kernel(c11, c12, c22):
    """Textbook arc-cosine kernel of order 1 (Cho & Saul 2009)."""
    s = np.sqrt(c11 * c22)
    th = np.arccos(np.clip(c12 / s, -1, 1))
    return s / (2 * np.pi) * (np.sin(th) + (np.pi - th) * np.cos(th))


def _gh2(fn, c11, c12, c22, n=600):
    """``E[fn(u) fn(v)]`` by a 2-D Gauss-Hermite rule of scipy's nodes (independent of nearopt)."""
    from scipy.special import roots_hermitenorm

    x, w = roots_hermitenorm(n)
    w = w / np.sqrt(2 * np.pi)
    a = np.sqrt(c11)
    b = c12 / a
    c = np.sqrt(max(c22 - b * b, 0.0))
    return float(w @ (fn(a * x) * (fn(b * x[:, None] + c * x[None, :]) @ w)))


def test_kernel_against_textbook_forms_and_independent_quadrature():
    _, _, _, (c11, c12, c22) = _pairs(seed=4, n_h=5, scale=1.7)
    np.testing.assert_allclose(G.kernel("erf", c11, c12, c22), _erf_kernel(c11, c12, c22), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(G.kernel("erf:unit", c11, c12, c22), _erf_kernel(c11, c12, c22, 1.0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(G.kernel("relu", c11, c12, c22), _relu_kernel(c11, c12, c22), rtol=1e-12, atol=1e-15)
    tanh = G.kernel("tanh", c11, c12, c22)
    ref = [_gh2(np.tanh, *c) for c in zip(c11, c12, c22)]
    np.testing.assert_allclose(tanh, ref, rtol=0, atol=1e-13)
    assert G.kernel("tanh", c11, c12, c22).shape == c11.shape


def test_kernel_quadrature_equals_closed_form_when_forced():
    """A closed-form activation in disguise goes through the checked quadrature and lands on the closed form."""
    import torch

    from nearopt.model.activations import CustomActivation

    _, _, _, (c11, c12, c22) = _pairs(seed=5, n_h=4, scale=1.2)
    disguised = CustomActivation("my-erf", lambda t: torch.erf(t / np.sqrt(2.0)))
    np.testing.assert_allclose(G.kernel(disguised, c11, c12, c22), G.kernel("erf", c11, c12, c22), rtol=0, atol=1e-12)
    kinked = CustomActivation("my-relu", lambda t: torch.clamp(t, min=0.0), smooth=False)
    with pytest.raises(NearoptError, match="not smooth"):
        G.kernel(kinked, c11, c12, c22)
    rough = G.kernel(kinked, c11, c12, c22, order=801)
    np.testing.assert_allclose(rough, _relu_kernel(c11, c12, c22), rtol=0, atol=1e-3)


def test_output_power_linear_under_covariance_is_the_quadratic_form():
    from nearopt.model.problem import GaussianInputs

    rng = np.random.default_rng(6)
    net = no.sample_teacher(4, 3, "linear", seed=6)
    a = net.W2 @ net.W1  # (1, N_i): f(x) = a x
    assert G.output_power(net) == pytest.approx((a @ a.T).item(), rel=1e-14)
    S = rng.standard_normal((4, 4))
    S = S @ S.T + 0.1 * np.eye(4)
    assert G.output_power(net, GaussianInputs(covariance=S)) == pytest.approx((a @ S @ a.T).item(), rel=1e-13)


@pytest.mark.parametrize("act", ["erf", "relu", "tanh"])
def test_output_power_against_independent_pair_sums(act):
    """``E[f^2] = sum_ij v_i v_j E[g(u_i) g(u_j)]`` with textbook kernels or scipy's 2-D rule, and ``2 L(zero student)``."""
    from nearopt.gaussian.objective import population_loss
    from nearopt.model.problem import Problem

    net = no.sample_teacher(3, 4, act, seed=7)
    C = net.W1 @ net.W1.T
    v = net.W2.ravel()
    if act == "tanh":
        Phi = np.array([[_gh2(np.tanh, C[i, i], C[i, j], C[j, j]) for j in range(4)] for i in range(4)])
    else:
        d = np.diag(C)
        Phi = (_erf_kernel if act == "erf" else _relu_kernel)(d[:, None], C, d[None, :])
    got = G.output_power(net)
    assert got == pytest.approx(float(v @ Phi @ v), rel=1e-11)
    zero = no.TwoLayerNet(net.W1[:1], np.zeros((1, 1)), net.activation)
    assert got == pytest.approx(2 * population_loss(Problem(net, student=zero)), rel=1e-12)


def test_product_expectation_isserlis():
    """``E[u^2 v^2] = c11 c22 + 2 c12^2`` and ``E[u^3 v] = 3 c11 c12`` (Isserlis), parallel pairs included."""
    _, _, _, (c11, c12, c22) = _pairs(seed=8, n_h=4, scale=1.1)
    sq, cube = (lambda t: t * t), (lambda t: t**3)
    got = G.product_expectation(sq, sq, c11, c12, c22)
    np.testing.assert_allclose(got, c11 * c22 + 2 * c12**2, rtol=1e-13)
    got = G.product_expectation(cube, lambda t: t, c11, c12, c22)
    np.testing.assert_allclose(got, 3 * c11 * c12, rtol=1e-12, atol=1e-14)
