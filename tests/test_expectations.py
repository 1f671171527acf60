"""Two-dimensional Gaussian expectations: closed forms vs quadrature vs Monte Carlo."""

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
