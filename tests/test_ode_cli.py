"""``nearopt ode``: the command-line contract, equal to the Python API, and its refusals."""

import json

import numpy as np
import pytest
from _cli import cli

import nearopt as no
from nearopt.dynamics.plateau import run_ode

BREAK = np.array([[1.0, -1.0], [-1.0, 1.0]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An orthonormal committee teacher (N_i = 6) and a nearly symmetric student (Q = 0.2 I + ..., R = 0.01 + 1e-3 BREAK)."""
    d = tmp_path_factory.mktemp("ode")
    W = np.zeros((2, 6))
    W[:, :2] = 0.01 + 1e-3 * BREAK
    W[0, 2] = W[1, 3] = np.sqrt(0.2)
    np.savez(d / "T.npz", W1=np.eye(2, 6), W2=np.ones((1, 2)))
    np.savez(d / "S.npz", W1=W, W2=np.ones((1, 2)))
    np.savez(d / "Sb.npz", W1=W, W2=np.ones((1, 2)), b1=np.zeros(2))
    np.savez(d / "S5.npz", W1=W[:, :5], W2=np.ones((1, 2)))
    return d


def _args(d, *extra):
    return ("ode", "-a", "erf", "--teacher", d / "T.npz", "--student", d / "S.npz", "--lr", 0.5, *extra)


def test_json_equals_the_api_and_carries_the_contract_keys(files):
    code, out, err = cli(*_args(files, "--trained", "first", "--alpha", 400, "--points", 101, "--target", 1e-3, "--json"))
    assert code == 0, err
    d = json.loads(out)
    for key in ("alpha", "eps", "Q", "R", "v", "plateau", "alpha_target"):
        assert key in d
    assert len(d["alpha"]) == len(d["eps"]) == len(d["Q"]) == len(d["R"]) == len(d["v"]) == 101
    teacher = no.TwoLayerNet(np.eye(2, 6), np.ones((1, 2)), no.get_activation("erf"))
    student = no.TwoLayerNet.load(files / "S.npz", no.get_activation("erf"))
    api = run_ode(teacher, student, lr=0.5, alpha=400.0, points=101, trained="first", target=1e-3).to_dict()
    for key in ("alpha", "eps", "Q", "R", "v"):
        np.testing.assert_allclose(np.array(d[key]), api[key], rtol=0, atol=0)
    assert d["plateau"]["eps"] == api["plateau"]["eps"] and d["plateau"]["unstable_rate"] == api["plateau"]["unstable_rate"]
    assert d["plateau"]["eps"] == pytest.approx(0.014645, abs=1e-6) and d["plateau"]["unstable_rate"] > 0
    assert d["alpha_target"] == api["alpha_target"] and 200 < d["alpha_target"] < 400
    np.testing.assert_allclose(d["Q"][0], [[0.200202, 0.000198], [0.000198, 0.200202]], atol=1e-12)  # W1 W1^T, the weights' own scale


def test_text_output_names_the_plateau_and_no_plateau_near_the_teacher(files, tmp_path):
    code, out, _ = cli(*_args(files, "--trained", "first", "--alpha", 400, "--points", 101))
    assert code == 0 and "plateau: eps 0.0146448" in out and "unstable rate" in out
    np.savez(tmp_path / "near.npz", W1=np.eye(2, 6) + 0.01, W2=np.ones((1, 2)))
    code, out, _ = cli("ode", "-a", "erf", "--teacher", files / "T.npz", "--student", tmp_path / "near.npz", "--lr", 0.5, "--alpha", 50, "--points", 21,
                       "--json")
    assert code == 0 and json.loads(out)["plateau"] is None


@pytest.mark.parametrize("extra, message", [
    (("-a", "nosuch"), "unknown activation"),
    (("--points", 1), "--points"),
    (("--student", "Sb.npz"), "no biases"),
    (("--student", "S5.npz"), "N_i"),
    (("--lr", -1), "--lr"),
    (("--trained", "second"), "--trained"),
    (("--noise", -0.1), "--noise"),
    (("--target", 0), "--target"),
    (("--teacher", "missing.npz"), "not found"),
])
def test_bad_inputs_give_one_error_line_and_status_2(files, extra, message):
    extra = tuple(files / e if isinstance(e, str) and e.endswith(".npz") else e for e in extra)
    code, out, err = cli(*_args(files, "--alpha", 10, "--points", 5), *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0]


def test_track_follows_the_hessian_through_the_escape_and_equals_the_api(files):
    """--track K: the curvature at weights rebuilt from (Q, R, v); on the plateau the Hessian has a negative
    eigenvalue, near the teacher at the end none: lambda_min crosses zero at the escape."""
    code, out, err = cli(*_args(files, "--trained", "first", "--alpha", 400, "--points", 21, "--track", 2, "--json"))
    assert code == 0, err
    d = json.loads(out)
    curv = d["curvature"]
    teacher = no.TwoLayerNet(np.eye(2, 6), np.ones((1, 2)), no.get_activation("erf"))
    student = no.TwoLayerNet.load(files / "S.npz", no.get_activation("erf"))
    api = run_ode(teacher, student, lr=0.5, alpha=400.0, points=21, trained="first", track=2)
    np.testing.assert_allclose(np.array(curv["smallest"]), api.curvature.smallest, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.array(curv["loss"]), api.trajectory.eps, rtol=1e-9, atol=1e-15)  # the Hessian's point is the ODE's
    lam_min = np.array(curv["smallest"])[:, 0]
    alpha = np.array(d["alpha"])
    on = (alpha > d["plateau"]["alpha_start"]) & (alpha < d["plateau"]["alpha_end"])
    assert np.all(lam_min[on] < 0) and lam_min[-1] > 0
    code, _, err = cli(*_args(files, "--trained", "first", "--alpha", 10, "--track", 12))
    assert code == 2 and err.count("\n") == 1 and "k" in err
