"""The command line: round trips, JSON schema, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

import nearopt as no
from nearopt.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_exit(capsys, *argv):
    """Exit status and stderr, whether the error comes from argparse or from the API."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_teacher_then_spectrum_round_trip(tmp_path, capsys):
    path = tmp_path / "t.npz"
    code, out, _ = run_cli(capsys, "teacher", "--ni", "6", "--nh", "4", "--seed", "3", "--out", str(path))
    assert code == 0 and "P=28" in out
    with np.load(path) as d:
        assert d["W1"].shape == (4, 6) and d["W2"].shape == (1, 4)
    code, out, _ = run_cli(capsys, "spectrum", "-a", "erf", "--teacher", str(path), "--samples", "500", "--data-seed", "2", "--json")
    assert code == 0
    res = json.loads(out)
    for key in ["activation", "N_i", "N_h", "P", "samples", "method", "dtype", "rank", "rank_tolerance", "eigenvalues"]:
        assert key in res
    assert (res["activation"], res["N_i"], res["N_h"], res["P"], res["samples"]) == ("erf", 6, 4, 28, 500)
    assert res["dtype"] == "float64" and res["batch_method"] == "jacobian-svd" and res["method"] == "factor"
    eig = np.array(res["eigenvalues"])
    assert eig.size == 28 and np.all(np.diff(eig) >= 0)
    net = no.TwoLayerNet.load(path, "erf")
    expected = no.batch_spectrum(net, no.sample_inputs(500, 6, seed=2)).eigenvalues
    assert np.allclose(eig, expected, rtol=1e-12, atol=1e-15)


def test_spectrum_summary_and_out_file(tmp_path, capsys):
    out_file = tmp_path / "s.json"
    code, out, _ = run_cli(capsys, "spectrum", "-a", "linear", "--ni", "5", "--nh", "7", "--samples", "100", "--out", str(out_file))
    assert code == 0
    assert "rank           5 of 42" in out and "condition" in out
    assert json.loads(out_file.read_text())["rank"] == 5


def test_inputs_file_and_w2_vector(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", W1=rng.standard_normal((3, 4)), W2=rng.standard_normal(3))
    np.save(tmp_path / "x.npy", rng.standard_normal((50, 4)))
    code, out, _ = run_cli(capsys, "spectrum", "-a", "tanh", "--teacher", str(tmp_path / "t.npz"), "--inputs", str(tmp_path / "x.npy"), "--json", "--method", "autodiff")
    assert code == 0
    res = json.loads(out)
    assert res["samples"] == 50 and res["batch_method"] == "autodiff" and res["rank"] == 15


def _bad_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nan.npz", W1=np.full((2, 3), np.nan), W2=np.ones((1, 2)))
    np.savez(tmp_path / "inf.npz", W1=np.ones((2, 3)), W2=np.array([[np.inf, 1.0]]))
    np.savez(tmp_path / "shape.npz", W1=np.ones((2, 3)), W2=np.ones((1, 5)))
    np.savez(tmp_path / "missing.npz", W1=np.ones((2, 3)))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "good.npz", W1=rng.standard_normal((2, 3)), W2=rng.standard_normal((1, 2)))
    np.save(tmp_path / "wide.npy", np.ones((10, 5)))
    np.save(tmp_path / "nanx.npy", np.full((10, 3), np.nan))
    np.save(tmp_path / "flat.npy", np.ones(10))


BAD = [
    (["spectrum", "-a", "erf", "--ni", "0", "--nh", "3", "--samples", "10"], "--ni"),
    (["spectrum", "-a", "erf", "--ni", "3", "--nh", "-1", "--samples", "10"], "--nh"),
    (["spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--samples", "0"], "--samples"),
    (["spectrum", "-a", "sigmoidal", "--ni", "3", "--nh", "2", "--samples", "10"], "unknown activation"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/absent.npz", "--samples", "10"], "not found"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/nan.npz", "--samples", "10"], "NaN"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/inf.npz", "--samples", "10"], "NaN or infinite"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/shape.npz", "--samples", "10"], "W2 must have shape"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/missing.npz", "--samples", "10"], "lacks"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/garbage.npz", "--samples", "10"], "not a valid .npz"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/good.npz", "--inputs", "{d}/wide.npy"], "width 5"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/good.npz", "--inputs", "{d}/nanx.npy"], "NaN"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/good.npz", "--inputs", "{d}/flat.npy"], "(N, N_i)"),
    (["spectrum", "-a", "erf", "--teacher", "{d}/good.npz", "--inputs", "{d}/absent.npy"], "not found"),
    (["spectrum", "-a", "erf", "--ni", "3", "--nh", "2"], "say which inputs"),
    (["spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--samples", "5", "--inputs", "{d}/wide.npy"], "choose one"),
    (["spectrum", "-a", "erf", "--ni", "3", "--samples", "5"], "--ni and --nh"),
    (["spectrum", "-a", "erf", "--ni", "3", "--nh", "2", "--samples", "5", "--method", "magic"], "not a batch method"),
    (["teacher", "--ni", "3", "--nh", "2", "--out", "{d}/t.txt"], ".npz"),
    (["teacher", "--ni", "3", "--nh", "2", "--seed", "-4", "--out", "{d}/t.npz"], "--seed"),
]


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    _bad_files(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    code, _, err = cli_exit(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_real_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nearopt", "spectrum", "-a", "erf", "--teacher", str(tmp_path / "nope.npz"), "--samples", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"nearopt spectrum: error: teacher file not found: {tmp_path / 'nope.npz'}"


def test_failed_write_keeps_previous_file(tmp_path, capsys):
    path = tmp_path / "t.npz"
    assert run_cli(capsys, "teacher", "--ni", "3", "--nh", "2", "--out", str(path))[0] == 0
    before = path.read_bytes()
    code, _, _ = cli_exit(capsys, "teacher", "--ni", "3", "--nh", "2", "--out", str(tmp_path / "x.txt"))
    assert code == 2 and path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temporary left behind


def test_help_documents_every_option(capsys):
    from nearopt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} lacks help"
