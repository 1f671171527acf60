"""Honest statuses and inputs checked before work: exit 1 with one line for a result that is not what was
asked, strict JSON, a closed pipe, and one-line refusals of environment values, weight files, split
ratios, huge students and ill-posed API arguments (exit statuses: ``nearopt.cli``)."""

import argparse
import json
import math
import os
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from _cli import cli
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.sparse.linalg import aslinearoperator

import nearopt.resources as res
from nearopt.cli import cmd_critical, cmd_spectrum, cmd_teacher
from nearopt.dynamics.predict import check_eigenvalues, predict_draw_loss, predict_mean_loss
from nearopt.errors import NearoptError, ResourceError, real_array
from nearopt.landscape import manifold
from nearopt.landscape.critical import classify
from nearopt.model.network import TwoLayerNet, io, sample_teacher
from nearopt.model.problem import Problem
from nearopt.spectra.density import spectral_density


def one_line(code, err, expected_code, needle=None):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    if needle is not None:
        assert needle in lines[0], lines[0]
    return lines[0]


def _reject(token):
    raise ValueError(f"non-standard JSON token {token}")


def strict_loads(text):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` as strict parsers (RFC 8259) do."""
    return json.loads(text, parse_constant=_reject)


def _forbid(monkeypatch, module, name):
    def boom(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran before the input was checked")

    monkeypatch.setattr(module, name, boom)


# -- exit status 1: results that are not what was asked -----------------------------------------------

DIVERGING = ["dynamics", "-a", "monomial:3", "--ni", "3", "--nh", "2", "--samples", "50", "--draws", "2", "--points", "6", "--steps", "200", "--sigma0", "1"]


def test_diverged_dynamics_exits_1_with_one_line_and_keeps_the_table():
    code, out, err = cli(*DIVERGING)
    line = one_line(code, err, 1, "nearopt dynamics: failed: training diverged after t = ")
    assert "--sigma0" in line
    assert "(training diverged before this time)" in out and "nan" not in out.lower()


def test_diverged_dynamics_json_is_strict_and_complete(tmp_path):
    out_file = tmp_path / "d.json"
    code, out, err = cli(*DIVERGING, "--json", "--out", out_file)
    one_line(code, err, 1, "training diverged")
    printed, written = strict_loads(out), strict_loads(out_file.read_text())
    assert printed == written and printed["diverged"] is True
    # the curves end where training stopped; each null says what it stands for
    assert printed["loss_mean"][-1] is None and printed["non_finite"]["/loss_mean/5"] == "nan"
    assert all(v in ("nan", "inf", "-inf") for v in printed["non_finite"].values())
    restored = io.restore_non_finite(strict_loads(out))
    assert math.isnan(restored["loss_mean"][-1]) and "non_finite" not in restored


def _not_converged(problem, **kwargs):
    return classify(problem)  # the random start itself: no descent, so its gradient is far from zero


def test_critical_not_converged_exits_1_after_the_json(monkeypatch):
    monkeypatch.setattr(cmd_critical, "find_critical_point", _not_converged)
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "3")
    one_line(code, err, 1, "nearopt critical: failed: not converged: gradient norm")
    data = strict_loads(out)
    assert data["classification"] == "not converged" and data["converged"] is False


@pytest.mark.parametrize("gtol", ["1e10", "1"])
def test_critical_refuses_a_gtol_that_calls_any_point_critical(monkeypatch, gtol):
    _forbid(monkeypatch, cmd_critical, "find_critical_point")
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "3", "--gtol", gtol)
    one_line(code, err, 2, "--gtol")
    assert out == ""


def test_critical_loose_gtol_is_flagged_in_the_result():
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "3", "--gtol", "1e-4", "--max-steps", "200")
    assert code == 0, err
    data = strict_loads(out)
    assert data["converged"] and "rounding-level tolerance" in data["classification_note"]
    assert err.startswith("nearopt: warning: accepted at gradient norm") and len(err.strip().splitlines()) == 1


def test_critical_default_gtol_has_no_note():
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "3", "--max-steps", "200", "--quiet")
    assert code == 0 and err == "", err
    data = strict_loads(out)
    assert data["converged"] and "classification_note" not in data


# -- strict JSON ----------------------------------------------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, math.inf, -math.inf])
LEAVES = FLOATS | st.integers(-(10**6), 10**6) | st.booleans() | st.none() | st.text(max_size=4)
KEYS = st.text(alphabet="ab/~_.", min_size=1, max_size=4)
TREES = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=4), max_leaves=20)


def same(a, b):
    """Equality with NaN equal to itself."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(tree=st.dictionaries(KEYS.filter(lambda k: k != "non_finite"), TREES, max_size=5))
def test_strict_json_parses_strictly_and_round_trips(tree):
    text = io.to_json(tree, strict=True)
    parsed = strict_loads(text)
    listed = parsed.get("non_finite", {})
    n_non_finite = text.count("null") - json.dumps(tree, allow_nan=True).count("null")
    assert len(listed) == n_non_finite
    assert same(io.restore_non_finite(parsed), tree)


def test_strict_json_takes_numpy_and_names_each_value(tmp_path):
    data = {"a": np.array([[1.0, np.nan], [np.inf, 2.0]]), "b": np.float64(-np.inf), "c": np.arange(3), "d": {"x/y": float("nan")}, "ok": 1.5}
    path = io.write_json(tmp_path / "x.json", data)
    parsed = strict_loads(path.read_text())
    assert parsed["a"] == [[1.0, None], [None, 2.0]] and parsed["b"] is None and parsed["c"] == [0, 1, 2] and parsed["ok"] == 1.5
    assert parsed["non_finite"] == {"/a/0/1": "nan", "/a/1/0": "inf", "/b": "-inf", "/d/x~1y": "nan"}
    back = io.read_json(path)
    assert math.isnan(back["a"][0][1]) and back["a"][1][0] == math.inf and back["b"] == -math.inf and math.isnan(back["d"]["x/y"])
    assert strict_loads(io.to_json({"all": [1.0, 2.0]}, strict=True)) == {"all": [1.0, 2.0]}  # no "non_finite" key when nothing is
    # the non-strict form keeps Python's tokens for exact in-memory round trips
    assert "NaN" in io.to_json({"x": float("nan")})


def test_restore_refuses_a_list_that_does_not_match():
    with pytest.raises(NearoptError, match="does not match"):
        io.restore_non_finite({"a": [1.0], "non_finite": {"/a/5": "nan"}})


def test_one_sample_dynamics_json_names_its_infinite_rate():
    code, out, err = cli("dynamics", "-a", "erf", "--ni", "2", "--nh", "2", "--samples", "1", "--draws", "1", "--points", "3", "--steps", "20", "--json")
    assert code == 0, err
    data = strict_loads(out)
    assert data["late_time"]["rate_exact"] is None and data["non_finite"]["/late_time/rate_exact"] == "inf"


# -- a closed pipe ----------------------------------------------------------------------------------------

def test_closed_stdout_exits_141_without_a_traceback(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`nearopt ... | head` after head quit)
    try:
        proc = subprocess.run([sys.executable, "-m", "nearopt", "teacher", "--ni", "3", "--nh", "2", "-o", str(tmp_path / "t.npz")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


# -- environment, weight files, split ratios, student sizes ----------------------------------------------

@pytest.mark.parametrize("value", ["abc", "-5GB", "0", "1e400", "5 gigabytes", "0.5"])
def test_invalid_memory_limit_is_one_line_even_where_unused(monkeypatch, tmp_path, value):
    monkeypatch.setenv(res.ENV_LIMIT, value)
    code, out, err = cli("teacher", "--ni", "3", "--nh", "2", "-o", tmp_path / "t.npz")
    one_line(code, err, 2, f"nearopt teacher: error: {res.ENV_LIMIT} must be a size")
    assert not (tmp_path / "t.npz").exists()
    with pytest.raises(NearoptError, match=res.ENV_LIMIT):
        res.available_memory()


@pytest.mark.parametrize("value, expected", [("8GB", 8 * 10**9), ("512 MiB", 512 * 2**20), ("1e9", 10**9), ("", None), ("  ", None)])
def test_valid_memory_limits(monkeypatch, value, expected):
    monkeypatch.setenv(res.ENV_LIMIT, value)
    assert res.memory_limit() == expected


def _weights(path, **extra):
    rng = np.random.default_rng(0)
    np.savez(path, W1=rng.standard_normal((2, 3)), W2=rng.standard_normal((1, 2)), **extra)
    return path


@pytest.mark.parametrize("extra", [{"bias": np.zeros(1)}, {"W2_extra": np.zeros(1)}])
def test_weight_files_with_unmodelled_arrays_are_refused(tmp_path, extra):
    path = _weights(tmp_path / "t.npz", **extra)
    code, out, err = cli("spectrum", "-a", "erf", "--teacher", path, "--population")
    line = one_line(code, err, 2, f"teacher file {path} has array(s) {next(iter(extra))}")
    assert "two layers" in line and "biases optional" in line
    with pytest.raises(NearoptError, match=r"^student file .* has array\(s\)"):
        io.load_weights(path, role="student")


def test_student_file_errors_name_a_student_file(tmp_path):
    with pytest.raises(NearoptError, match="^student file not found"):
        io.load_weights(tmp_path / "nope.npz", role="student")
    np.savez(tmp_path / "s.npz", W1=np.ones((2, 3)))
    with pytest.raises(NearoptError, match="^student file .* lacks array"):
        io.load_weights(tmp_path / "s.npz", role="student")


def test_a_saved_critical_point_is_still_a_weight_file(tmp_path):
    teacher = sample_teacher(3, 2, "erf", seed=0)
    cp = classify(Problem(teacher, student=manifold.random_student(teacher, 3, seed=2)))
    cp.save(tmp_path / "p.npz")
    arrays = io.load_weights(tmp_path / "p.npz", role="student")
    W1, W2 = arrays["W1"], arrays["W2"]
    assert np.array_equal(W1, cp.student.W1) and np.array_equal(W2, cp.student.W2)


@pytest.mark.parametrize("ratios, needle", [
    ("1e308,-1e308,1", "too large"), ("1e10,-9999999999", "too large"), ("nan,1", "finite"), ("inf,-inf", "finite"),
    ("0.5,0.4", "sum to 1"), ("0.3,0.3", "sum to 1"),
])
def test_split_ratios_are_checked_before_any_work(monkeypatch, ratios, needle):
    code, out, err = cli("spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--population", "--split", f"0:{ratios}")
    one_line(code, err, 2, needle)
    _forbid(monkeypatch, cmd_critical, "find_critical_point")
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--split", f"0:{ratios}")
    one_line(code, err, 2, needle)


@settings(max_examples=60, deadline=None)
@given(r=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=4))
def test_split_unit_gives_a_finite_point_or_one_error(r):
    teacher = TwoLayerNet(np.eye(2, 3), np.ones((1, 2)), "erf")
    try:
        S = manifold.split_unit(teacher, 0, r)
    except NearoptError as exc:
        assert "\n" not in str(exc)
        return
    assert np.all(np.isfinite(S.W2)) and abs(S.W2.ravel()[[0, 2, 3, 4][: len(r)]].sum() - 1.0) <= 1e-9 * max(1.0, sum(map(abs, r)))


def test_huge_students_are_refused_before_allocating(monkeypatch):
    monkeypatch.setenv(res.ENV_LIMIT, "100MB")
    teacher = sample_teacher(3, 2, "erf", seed=0)
    tracemalloc.start()
    try:
        with pytest.raises(ResourceError, match="K = 100000002 units"):
            manifold.add_dead_units(teacher, 10**8)
        with pytest.raises(ResourceError, match="a random student"):
            manifold.random_student(teacher, 10**8)
        with pytest.raises(ResourceError, match="split"):
            manifold.split_unit(teacher, 0, [1.0] + [0.0] * (2 * 10**6))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 10**6, peak  # the ratios list itself; never the student


def test_random_student_is_the_cli_student():
    """Same draws as ``--student-width K --student-seed S``, so the command can build its student with it."""
    teacher = sample_teacher(4, 3, "erf", seed=0)
    args = argparse.Namespace(student=None, student_width=6, student_seed=5, split=[], dead=0, activation=None)
    expected = cmd_spectrum.student_from_args(args, teacher)
    S = manifold.random_student(teacher, 6, seed=5)
    assert np.array_equal(S.W1, expected.W1) and np.array_equal(S.W2, expected.W2) and S.activation is teacher.activation


# -- the Python API: complex, NaN and negative inputs -------------------------------------------------------

@pytest.mark.parametrize("lam, needle", [
    (np.array([1.0, np.nan]), "NaN or infinite"), (np.array([np.inf, 1.0]), "NaN or infinite"),
    (np.array([1.0, -0.1]), "must be >= 0"), (np.array([1.0 + 0j, 2.0]), "complex"), (np.array([[1.0]]), "1-D"),
    (np.array(["1", "2"]), "real numbers"), (np.array([True, False]), "real numbers"),
])
def test_predictions_refuse_ill_posed_eigenvalues(lam, needle):
    with pytest.raises(NearoptError, match=needle):
        predict_mean_loss(lam, 1.0, 0.1, np.arange(3))
    with pytest.raises(NearoptError, match=needle):
        predict_draw_loss(lam, np.ones((2, lam.size if lam.ndim == 1 else 1)), 0.1, np.arange(3))


def test_predictions_accept_rounding_negatives_and_check_the_rest():
    lam = np.array([-1e-17, 0.5, 1.0])  # an eigensolver's zero
    np.testing.assert_allclose(predict_mean_loss(lam, 2.0, 0.1, np.array([0.0])), [0.5 * 2.0 * 1.5 - 1e-17])
    assert check_eigenvalues([0.0, 0.0]).tolist() == [0.0, 0.0]
    for kwargs, needle in [({"mode_variance": -1.0}, "variances"), ({"mode_variance": np.ones(2)}, "one per eigenvalue"),
                           ({"lr": float("nan")}, "learning rate"), ({"lr": 0.0}, "learning rate"), ({"times": np.array([-1.0])}, "times"),
                           ({"mode_variance": 1j}, "complex")]:
        call = {"eigenvalues": lam, "mode_variance": 1.0, "lr": 0.1, "times": np.arange(3.0), **kwargs}
        with pytest.raises(NearoptError, match=needle):
            predict_mean_loss(**call)


def test_real_array_refuses_complex_even_with_zero_imaginary_part():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: a refusal, not a cut
        with pytest.raises(NearoptError, match="complex"):
            real_array(np.array([1.0, 2.0], dtype=complex), "x")
    with pytest.raises(NearoptError, match="real numbers"):
        real_array([[1.0], [1.0, 2.0]], "x")
    assert real_array([1, 2], "x").dtype == np.float64


@pytest.mark.parametrize("scale", [1.0, 0.0, 5.0, 1e-20, -3.0])
def test_density_of_a_multiple_of_the_identity_is_a_point_mass(scale):
    d = spectral_density(aslinearoperator(scale * np.eye(3)), n_vectors=2, steps=3)
    assert np.all(np.isfinite(d["nodes"])) and np.all(np.isfinite(d["grid"])) and np.all(np.isfinite(d["density"]))
    assert d["point_mass"] == pytest.approx(scale, abs=1e-15)
    assert integrate.trapezoid(d["density"], d["grid"]) == pytest.approx(1.0, abs=1e-5)  # (np.trapezoid needs NumPy 2)
    assert d["grid"][0] < scale < d["grid"][-1]


def test_density_of_a_spread_spectrum_has_no_point_mass():
    d = spectral_density(aslinearoperator(np.diag([1.0, 2.0, 3.0])), n_vectors=2, steps=3)
    assert d["point_mass"] is None and d["nodes"].shape == (2, 3) and np.all(np.isfinite(d["nodes"]))


# -- messages ---------------------------------------------------------------------------------------------

def test_unknown_options_name_the_command():
    code, out, err = cli("spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--population", "--bogus", "1")
    one_line(code, err, 2, "nearopt spectrum: error: unrecognized arguments: --bogus 1")


def test_unknown_inputs_name_lists_the_bundled_data_sets():
    code, out, err = cli("spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--inputs", "nosuchset")
    line = one_line(code, err, 2, "inputs file not found: nosuchset, nor is it a bundled data set")
    assert "digits" in line and "iris" in line


def _warn_then(exc):
    def fake(*args, **kwargs):
        warnings.warn("overflow encountered in reduce", RuntimeWarning, stacklevel=1)
        warnings.warn("overflow encountered in reduce", RuntimeWarning, stacklevel=1)
        if exc is not None:
            raise exc
        return sample_teacher(3, 2, "linear", seed=0)

    return fake


def test_warnings_never_precede_an_error_line(monkeypatch, tmp_path):
    monkeypatch.setattr(cmd_teacher, "sample_teacher", _warn_then(NearoptError("bad")))
    code, out, err = cli("teacher", "--ni", "3", "--nh", "2", "-o", tmp_path / "t.npz")
    assert one_line(code, err, 2) == "nearopt teacher: error: bad"


def test_warnings_follow_a_successful_command_once(monkeypatch, tmp_path):
    monkeypatch.setattr(cmd_teacher, "sample_teacher", _warn_then(None))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # both warnings reach the CLI: it counts them
        code, out, err = cli("teacher", "--ni", "3", "--nh", "2", "-o", tmp_path / "t.npz")
    assert code == 0 and out.startswith("wrote teacher")
    assert err == "nearopt: warning: overflow encountered in reduce (2 times)\n"


@pytest.mark.parametrize("argv, has_method", [(["teacher", "--ni", "3", "--nh", "2", "-o", "T"], False),
                                              (["spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--population"], True)])
def test_out_of_memory_hint_names_only_options_the_command_has(monkeypatch, tmp_path, argv, has_method):
    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(cmd_teacher, "sample_teacher", oom)
    monkeypatch.setattr(cmd_spectrum, "compute", oom)
    code, out, err = cli(*[str(tmp_path / "t.npz") if a == "T" else a for a in argv])
    line = one_line(code, err, 2, "out of memory")
    assert ("--method" in line) == has_method


def test_huge_teacher_is_refused_before_sampling(monkeypatch, tmp_path):
    _forbid(monkeypatch, cmd_teacher, "sample_teacher")
    code, out, err = cli("teacher", "--ni", "100000000", "--nh", "100000", "-o", tmp_path / "t.npz")
    one_line(code, err, 2, "a teacher of N_h = 100000, N_i = 100000000 needs")


def test_load_student_names_a_student_file_and_checks_its_width(tmp_path):
    teacher = sample_teacher(3, 2, "erf", seed=0)
    S = manifold.load_student(_weights(tmp_path / "s.npz"), teacher)
    assert S.W1.shape == (2, 3) and S.activation is teacher.activation
    np.savez(tmp_path / "w.npz", W1=np.ones((2, 4)), W2=np.ones(2))
    with pytest.raises(NearoptError, match="^student file .* has N_i = 4"):
        manifold.load_student(tmp_path / "w.npz", teacher)
    with pytest.raises(NearoptError, match="^student file .* b1 must have 2 entries"):
        manifold.load_student(_weights(tmp_path / "b.npz", b1=np.zeros(3)), teacher)
    biased = manifold.load_student(_weights(tmp_path / "c.npz", b1=np.zeros(2)), teacher)
    assert biased.b1 is not None and not biased.is_plain
