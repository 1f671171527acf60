"""User inputs that used to end in tracebacks or quietly wrong numbers: one ``error:`` line, exit 2, before any work.

One test (or parametrised group) per class: custom activations (``-a MODULE:FUNCTION``
and :class:`~nearopt.CustomActivation`), saved point files, numbers float64 cannot
hold, tiny weights, and experiment settings.
"""

import json

import numpy as np
import pytest
import torch
from _cli import cli

from nearopt.errors import (
    SQUARE_LIMIT,
    NearoptError,
    require_nonneg_finite,
    require_positive_finite,
    require_product_finite,
    require_squarable,
)
from nearopt.model import io
from nearopt.model.activations import CustomActivation, check_activation, get_activation

ACTS = '''
import math
import numpy as np
import torch

softplus = torch.nn.functional.softplus
def detached(z):
    return torch.tanh(z.detach())
def ints(z):
    return (z > 0).long()
def complex_values(z):
    return z.to(torch.complex128) * 1j
def float32(z):
    return torch.tanh(z.float())
def numpy_inside(z):
    return torch.as_tensor(np.tanh(z.numpy()))
def in_place(z):
    return z.tanh_()
def in_place_scaled(z):
    z.mul_(2.0)
    return torch.tanh(z)
def hidden_part(z):
    return torch.round(10 * z) / 10 + z.detach()
def log_of_z(z):
    return torch.log(z)
def wrong_shape(z):
    return torch.tanh(z).sum()
'''


def one_line_error(code, err, needle):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "error:" in lines[0] and needle in lines[0], lines[0]


@pytest.fixture
def acts(tmp_path, monkeypatch):
    """A module ``rel_inputs_acts`` of user activations on ``sys.path``; yields its name."""
    (tmp_path / "rel_inputs_acts.py").write_text(ACTS)
    (tmp_path / "rel_inputs_exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "rel_inputs_raises.py").write_text("raise ValueError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rel_inputs_acts"


@pytest.mark.parametrize(
    ("function", "needle"),
    [
        ("detached", "not differentiable by autograd"),
        ("ints", "torch.int64 values, not float64"),
        ("complex_values", "complex values"),
        ("float32", "torch.float32 values for a float64 input"),
        ("numpy_inside", "calls NumPy"),
        ("in_place", "in place"),
        ("in_place_scaled", "in place"),
        ("hidden_part", "hidden from autograd"),
        ("log_of_z", "NaN or infinite"),
        ("wrong_shape", "elementwise"),
    ],
)
def test_a_custom_activation_that_breaks_a_rule_is_one_line(acts, function, needle):
    code, out, err = cli("spectrum", "-a", f"{acts}:{function}", "--ni", 2, "--nh", 2, "--population")
    one_line_error(code, err, needle)
    assert not out


def test_a_module_that_exits_or_fails_on_import_is_one_line(acts):
    code, _, err = cli("spectrum", "-a", "rel_inputs_exits:f", "--ni", 2, "--nh", 2, "--population")
    one_line_error(code, err, "called sys.exit(3)")
    code, _, err = cli("spectrum", "-a", "rel_inputs_raises:f", "--ni", 2, "--nh", 2, "--population")
    one_line_error(code, err, "ValueError: broken on import")


def test_a_valid_custom_activation_still_runs(acts):
    code, out, err = cli("spectrum", "-a", f"{acts}:softplus", "--ni", 3, "--nh", 2, "--population", "--json")
    assert code == 0, err
    assert json.loads(out)["activation"] == f"{acts}:softplus"


def test_custom_activations_are_probed_on_construction():
    with pytest.raises(NearoptError, match="disagrees with the slope"):
        CustomActivation("wrong-derivative", torch.tanh, derivative=lambda z: 0 * z)
    with pytest.raises(NearoptError, match="float32"):
        CustomActivation("single", lambda z: torch.tanh(z).float())
    with pytest.raises(NearoptError, match="must be functions"):
        CustomActivation("not-a-function", 3)  # type: ignore[arg-type]
    ok = CustomActivation("two-z", lambda z: 2 * z, lambda z: 2 + 0 * z)
    assert check_activation(ok) is ok


def test_autograd_derivatives_work_inside_inference_mode_and_no_grad():
    """The batched descents run under ``torch.inference_mode``: a custom activation's autograd derivative must work there."""
    act = CustomActivation("softplus", torch.nn.functional.softplus)
    z = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)
    s = torch.sigmoid(z)
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            zz = z.clone()
            d = act.derivatives(zz, 2)
            assert torch.allclose(act.derivative(zz), s, atol=1e-15, rtol=0)
        assert torch.allclose(d[1], s, atol=1e-15, rtol=0) and torch.allclose(d[2], s * (1 - s), atol=1e-15, rtol=0)


def _point(path, **meta):
    """A saved point (W1 (2, 3), W2 (1, 2), its teacher) with the metadata ``meta``."""
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(2, 3)), rng.normal(size=(1, 2))
    arrays = {"W1": W1, "W2": W2, "teacher_W1": W1, "teacher_W2": W2, **{k: np.asarray(v) for k, v in meta.items()}}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"trained": "middle"}, "entry 'trained' is 'middle'"),
        ({"trained": ["both", "first"]}, "entry 'trained' must be one text value"),
        ({"trained": 3.0}, "entry 'trained' must be one text value"),
        ({"activation": ["erf", "relu"]}, "entry 'activation' must be one text value"),
        ({"index": 1.5}, "entry 'index' must be an integer"),
        ({"loss": [0.1, 0.2]}, "entry 'loss' must be one real number"),
        ({"teacher_W1": "W"}, "entry 'teacher_W1' must be a real array"),
    ],
)
def test_saved_point_metadata_of_the_wrong_kind_is_one_line(tmp_path, meta, needle):
    path = _point(tmp_path / "p.npz", **meta)
    code, out, err = cli("spectrum", "-a", "erf", "--student", path, "--population")
    one_line_error(code, err, needle)
    with pytest.raises(NearoptError, match=needle.replace("(", r"\(")):
        io.load_weights(path, role="student")


def test_spectrum_takes_the_activation_a_saved_point_records(tmp_path):
    path = _point(tmp_path / "p.npz", activation="erf", trained="both")
    code, out, err = cli("spectrum", "--student", path, "--population", "--json")
    assert code == 0, err
    d = json.loads(out)
    code, out2, _ = cli("spectrum", "-a", "erf", "--student", path, "--population", "--json")
    assert code == 0 and d["activation"] == "erf" and json.loads(out2)["largest"] == d["largest"]
    code, _, err = cli("spectrum", "-a", "relu", "--student", path, "--population")
    one_line_error(code, err, "saved for activation 'erf', not 'relu'")
    plain = tmp_path / "plain.npz"
    np.savez(plain, W1=np.ones((2, 3)), W2=np.ones((1, 2)))
    code, _, err = cli("spectrum", "--student", plain, "--ni", 3, "--nh", 2, "--population")
    one_line_error(code, err, "does not record its activation")
    unknown = _point(tmp_path / "u.npz", activation="no-such-activation")
    code, _, err = cli("spectrum", "--student", unknown, "--population")
    one_line_error(code, err, "records activation 'no-such-activation', which cannot be used")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--population", "--sigma2", "1e200"], "argument --sigma2: the value is too large for float64"),
        (["spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--samples", 20, "--sigma1", "1e300"], "argument --sigma1: the value is too large"),
        (["sgd", "-a", "erf", "--ni", 3, "--nh", 2, "--lr", "1e300"], "argument --lr: the value is too large for float64"),
        (["teacher", "--ni", 3, "--nh", 2, "--sigma2", "1e200", "-o", "t.npz"], "the value is too large for float64"),
        (["spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--population", "--sigma2", "nan"], "the value must be a finite number > 0, got nan"),
    ],
)
def test_options_float64_cannot_square_are_refused_by_the_parser(tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*argv)
    one_line_error(code, err, needle)
    assert not out and not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("inputs", [["--population"], ["--samples", 20]])
def test_a_teacher_whose_hessian_overflows_is_refused_before_work(tmp_path, inputs):
    teacher = tmp_path / "t.npz"
    np.savez(teacher, W1=np.eye(2, 3), W2=np.full((1, 2), 1e200))
    code, out, err = cli("spectrum", "-a", "erf", "--teacher", teacher, *inputs)
    one_line_error(code, err, "overflow float64: they reach about 1e40")
    assert "max |W2| = 1e+200" in err


def test_validators_for_numbers_float64_cannot_hold():
    assert require_squarable(1e150, "x") == 1e150 and require_nonneg_finite(0, "x") == 0.0
    with pytest.raises(NearoptError, match=r"x is too large for float64 \(1e\+200"):
        require_squarable(1e200, "x")
    assert SQUARE_LIMIT ** 2 < np.inf
    for bad in (-1.0, np.nan, np.inf, "1", None, True, 1j):
        with pytest.raises(NearoptError, match="x must be a finite number >= 0"):
            require_nonneg_finite(bad, "x")
    with pytest.raises(NearoptError, match="x must be a finite number > 0"):
        require_positive_finite(0.0, "x")
    require_product_finite({"a": 1e150, "b": 1e150}, "q", "advice")
    with pytest.raises(NearoptError, match=r"q overflow float64: they reach about 1e400 \(a = 1e\+200, b = 1e\+200\); advice"):
        require_product_finite({"a": 1e200, "b": 1e200}, "q", "advice")
    with pytest.raises(NearoptError, match="about 1e320"):
        require_product_finite({"a": 1e160}, "q", "advice", power=2)


def test_tiny_relu_weights_get_a_message_that_names_the_cause(tmp_path):
    # variances of 1e-200: the pair terms are formed from unit rows and norms, so the population route answers
    code, out, err = cli("spectrum", "-a", "relu", "--ni", 3, "--nh", 2, "--population", "--sigma1", "1e-100", "--json")
    assert code == 0, err
    pop = json.loads(out)
    code, out, err = cli("spectrum", "-a", "relu", "--ni", 3, "--nh", 2, "--population", "--json")
    assert json.loads(out)["eigenvalues"][3] == pytest.approx(pop["eigenvalues"][3], rel=1e-12)  # the first-layer block ignores the scale
    teacher = tmp_path / "t.npz"
    rng = np.random.default_rng(0)
    np.savez(teacher, W1=1e-170 * rng.normal(size=(2, 3)), W2=rng.normal(size=(1, 2)))
    code, _, err = cli("spectrum", "-a", "relu", "--teacher", teacher, "--population")
    one_line_error(code, err, "first-layer row 0 has norm")
    assert "zero to float64" not in err
    # inputs need no variance: the batch route answers at both scales
    for scale in ("1e-100", "1e-170"):
        code, out, err = cli("spectrum", "-a", "relu", "--ni", 3, "--nh", 2, "--samples", 30, "--sigma1", scale, "--json")
        assert code == 0, err
        assert json.loads(out)["largest"] > 0.1  # the first-layer block does not shrink with W1


@pytest.mark.parametrize("activation", ["linear", "polynomial:1,2"])
def test_asymptotic_law_refuses_an_affine_activation_up_front(tmp_path, activation):
    code, out, err = cli("experiment", "asymptotic-law", "--set", f'activations=["{activation}"]', "--out", tmp_path, "--jobs", 1, "--quiet")
    one_line_error(code, err, f"activation {activation!r} is affine")
    assert not (tmp_path / "asymptotic-law").exists()


def test_an_affine_check_leaves_nonlinear_polynomials_alone():
    from nearopt.experiments.asymptotic_law import _known_activation

    for ok in ("quadratic", "polynomial:0,1,0.5", "erf", "relu"):
        _known_activation(ok)
    assert get_activation("polynomial:0,1,0").polynomial_coefficients is not None
    with pytest.raises(NearoptError, match="affine"):
        _known_activation("polynomial:0,1,0")


def test_a_function_that_exits_while_probed_is_one_line():
    def leave(z):
        raise SystemExit(4)

    with pytest.raises(NearoptError, match=r"g\(z\) called sys.exit\(4\)"):
        CustomActivation("leaves", leave)
