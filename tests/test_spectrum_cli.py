"""``nearopt spectrum`` as a researcher meets it: honest summaries, saved points, comparisons, figures, custom activations."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nearopt as no
from nearopt.cli import main


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_saved_critical_point_round_trips_with_its_teacher_and_blocks(tmp_path, capsys):
    point = tmp_path / "p.npz"
    code, out, _ = run(capsys, "critical", "-a", "relu", "--committee", "3", "--student-width", "3", "--save-point", str(point))
    saved = json.loads(out)
    assert code == 0 and saved["trained"] == "first"
    code, out, _ = run(capsys, "spectrum", "-a", "relu", "--student", str(point), "--population", "--json")
    spec = json.loads(out)
    assert code == 0 and spec["trained"] == "first" and spec["P"] == saved["P"]
    assert spec["smallest_nonzero"] == pytest.approx(saved["lambda_min"], rel=1e-8)
    code, _, err = run(capsys, "spectrum", "-a", "relu", "--student", str(point), "--population", "--ni", "3", "--nh", "3")
    assert code == 2 and "carries its teacher" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.npz"
    no.sample_teacher(3, 3, "relu", seed=9).save(other)
    code, _, err = run(capsys, "spectrum", "-a", "relu", "--student", str(point), "--population", "--teacher", str(other))
    assert code == 2 and "differs" in err
    code, _, err = run(capsys, "spectrum", "-a", "erf", "--student", str(point), "--population")
    assert code == 2 and "relu" in err


def test_the_summary_at_a_saddle_shows_the_point_and_its_inertia(capsys):
    code, out, _ = run(capsys, "spectrum", "-a", "erf", "--ni", "5", "--nh", "3", "--population", "--student-width", "4", "--which", "smallest", "--k", "3")
    assert code == 0
    assert "loss" in out and "gradient norm" in out and "negative" in out and "saddle" in out
    code, out, _ = run(capsys, "spectrum", "-a", "erf", "--ni", "5", "--nh", "3", "--population", "--student-width", "4", "--json")
    d = json.loads(out)
    assert d["inertia"]["negative"] > 0 and d["rank"] == d["inertia"]["negative"] + d["inertia"]["positive"]
    assert d["loss"] > 0 and d["gradient_norm"] > 0


@pytest.mark.parametrize("extra, needle", [
    (["--which", "largest", "--k", "99"], "exceeds P"),
    (["--probes", "3"], "probes"),
    (["--tol", "1e-8"], "--tol"),
    (["--k", "3"], "--k"),
    (["--method", "lanczos", "--which", "all"], "one end"),
    (["--method", "structured", "--vectors", "v.npz"], "eigenvectors"),
    (["--plot", "f.gif"], "suffix"),
    (["--compare-population"], "--compare-population"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(capsys, tmp_path, extra, needle):
    extra = [str(tmp_path / x) if x.endswith((".npz", ".gif")) else x for x in extra]
    code, out, err = run(capsys, "spectrum", "-a", "erf", "--ni", "4", "--nh", "3", "--population", *extra)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and not out


def test_batch_against_population_and_the_figure(tmp_path, capsys):
    fig = tmp_path / "s.svg"
    code, out, _ = run(capsys, "spectrum", "-a", "erf", "--ni", "6", "--nh", "4", "--samples", "3000", "--compare-population", "--plot", str(fig), "--json")
    d = json.loads(out)
    c = d["comparison"]
    assert code == 0 and c["samples"] == 3000 and 0.0 <= c["ks_distance"] <= 1.0
    pop = no.population_spectrum(no.sample_teacher(6, 4, "erf", seed=0))
    assert c["population_largest"] == pytest.approx(pop.largest, rel=1e-12)
    assert c["largest_relative_error"] == pytest.approx(abs(d["largest"] - pop.largest) / pop.largest, rel=1e-9)
    assert c["largest_relative_error"] < 0.2  # N = 3000 >> P = 28
    assert fig.exists() and fig.read_text().lstrip().startswith("<?xml") and d["plot_file"] == str(fig)
    png = tmp_path / "p.png"
    code, _, _ = run(capsys, "spectrum", "-a", "erf", "--ni", "6", "--nh", "4", "--population", "--method", "slq", "--probes", "2", "--steps", "10", "--plot", str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_a_custom_activation_from_a_module(tmp_path, monkeypatch, capsys):
    (tmp_path / "acts_for_nearopt.py").write_text("import torch\nsoftplus = torch.nn.functional.softplus\nbroken = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run(capsys, "spectrum", "-a", "acts_for_nearopt:softplus", "--ni", "4", "--nh", "3", "--population", "--json")
    d = json.loads(out)
    assert code == 0 and d["activation"] == "acts_for_nearopt:softplus" and d["rank"] == 15
    for bad, needle in (("acts_for_nearopt:missing", "no attribute"), ("acts_for_nearopt:broken", "neither"), ("no_such_module_x:f", "cannot import")):
        code, _, err = run(capsys, "spectrum", "-a", bad, "--ni", "4", "--nh", "3", "--population")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_a_run_that_does_not_converge_exits_1_with_its_result(capsys):
    code, out, err = run(capsys, "spectrum", "-a", "erf", "--ni", "30", "--nh", "30", "--population", "--method", "lanczos",
                         "--which", "smallest", "--k", "4", "--maxiter", "2", "--json", "--quiet")
    d = json.loads(out)
    assert code == 1 and d["converged"] is False and "did not reach" in err and len(err.strip().splitlines()) == 1


def test_spectrum_repr_is_short_and_summary_names_the_route():
    spec = no.PopulationHessian(no.sample_teacher(5, 3, "erf", seed=0)).spectrum(which="largest", k=2)
    assert len(repr(spec)) < 120 and "largest" in repr(spec) and "rank" in repr(spec)
    assert "largest 2 by" in spec.summary()
    lz = no.PopulationHessian(no.sample_teacher(20, 10, "erf", seed=0)).spectrum("lanczos", k=2)
    assert "rank" not in repr(lz) and lz.exact is False and np.isnan(lz.smallest_nonzero)
    with pytest.raises(no.NearoptError, match="not known"):
        _ = lz.rank
