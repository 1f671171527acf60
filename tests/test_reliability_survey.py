"""The many-start survey and its neighbours say what they measured: the headline from the polished classes,
no crash when nothing reaches the batched polish, exit 1 when nothing was measured, meaningless settings
refused before work, outputs checked first and the results written before the family files."""

import json
import sys
import textwrap

import numpy as np
import pytest
from _cli import cli

import nearopt.resources as res
from nearopt.errors import NearoptError, ResourceError
from nearopt.experiments.base import NOT_APPLICABLE
from nearopt.experiments.landscape import _published_checks, finalize, run_cell
from nearopt.landscape.critical import classify, committee_start, committee_teacher, find_critical_point
from nearopt.landscape.descent import SAFRAN_SHAMIR
from nearopt.landscape.survey import SPURIOUS_CLASSES, Case, committee_survey, survey, survey_many
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


def _one_line(code, err, expected, needle):
    lines = err.strip().splitlines()
    assert code == expected and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert needle in lines[0], lines[0]
    return lines[0]


def _agrees(out: dict, survey_) -> None:
    """The headline counts exactly the converged runs polished to a minimum above the global level."""
    counted = sum(p is not None and st == "converged" and p.classification in SPURIOUS_CLASSES and p.loss >= survey_.protocol.spurious_loss
                  for p, st in zip(survey_.points, survey_.descent.status))
    assert out["spurious"] == counted


# ----------------------------------------------------------------------------- the headline
def test_headline_after_a_coarse_handover_counts_the_polished_classes():
    """A handover at 1e-2 stops the descent where the loss is still >= 1e-3; every run polishes to the global minimum."""
    s = committee_survey(3, n_starts=4, handover=1e-2)
    out = s.to_dict()
    assert out["classes"] == {"global minimum": 4}
    assert out["spurious"] == 0 and out["spurious_fraction"] == 0.0
    _agrees(out, s)


def test_headline_after_a_coarse_gtol_does_not_count_saddles_and_says_so():
    s = committee_survey(3, n_starts=3, protocol=SAFRAN_SHAMIR.replace(gtol=1.0))
    out = s.to_dict()
    _agrees(out, s)
    assert out["spurious"] == 0 and out["unresolved"] == out["classes"].get("saddle", 0) >= 1
    assert any("too coarse" in n for n in out["notes"])


def test_narrow_student_minimum_is_noted_as_out_of_reach_of_zero_loss():
    s = committee_survey(3, 2, n_starts=2, handover=1e-5)
    out = s.to_dict()
    assert any("narrower than the teacher" in n for n in out["notes"])
    cp = classify(Problem(s.teacher, student=s.points[0].student, trained="first"))
    if cp.classification == "spurious local minimum":
        assert "narrower than the teacher" in cp.to_dict()["classification_note"]
    wide = committee_survey(2, 3, n_starts=1, handover=1e-5).to_dict()
    assert not any("narrower" in n for n in wide["notes"])


# ----------------------------------------------------------------------------- nothing reaches the batched polish
@pytest.mark.parametrize("option", [["--gtol", "1e10"], ["--handover", "100"]])
def test_landscape_with_no_point_at_the_batched_polish_finishes(option):
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "--quiet", "--json", *option)
    assert code == 0 and "Traceback" not in err, err
    data = json.loads(out)
    assert sum(data["classes"].values()) == 3 and data["polish"]["one_point"] >= 1


# ----------------------------------------------------------------------------- exit statuses
def test_landscape_with_every_run_diverged_fails_with_one_line():
    code, out, err = cli("landscape", "--committee", "3", "--starts", "3", "--lr", "50", "--quiet")
    _one_line(code, err, 1, "nearopt landscape: failed: none of the 3 runs ended at a minimum (3 diverged")
    assert "3 diverged" in out  # the partial result is still printed


@pytest.mark.parametrize("option", [["--lr", "5"], ["--lr", "0.1", "--noise", "1e300"]])
def test_sgd_with_every_run_diverged_fails_with_one_line(option, tmp_path):
    path = tmp_path / "sgd.json"
    code, out, err = cli("sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--steps", "200", "--runs", "3", "--points", "3", "--quiet",
                         "--out", path, *option)
    _one_line(code, err, 1, "nearopt sgd: failed: training diverged: all 3 runs diverged")
    assert json.loads(path.read_text())["diverged_runs"] == 3


def test_sgd_with_some_runs_finite_still_exits_0():
    code, out, err = cli("sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--lr", "0.1", "--steps", "20", "--runs", "3", "--points", "3", "--quiet")
    assert code == 0, err


# ----------------------------------------------------------------------------- experiment checks with nothing to check
def test_published_checks_without_a_spurious_family_are_not_applicable():
    checks = _published_checks({("relu n=k", 7, 7): {"families": [{"classification": "global minimum"}]}})
    assert len(checks) == 2 and all(c.passed and c.measured == NOT_APPLICABLE for c in checks)


def test_experiment_without_spurious_minima_passes_its_not_applicable_checks(tmp_path):
    cell = {"variant": "relu n=k", "cases": [[3, 3, 2, 1]], "handover": 1e-5, "max_steps": 20_000, "gtol": SAFRAN_SHAMIR.gtol}
    result = finalize({}, [cell], [run_cell(cell)], tmp_path)
    na = [c for c in result.checks if c.measured == NOT_APPLICABLE]
    assert any("isotypic" in c.name for c in na)
    assert result.passed, [(c.name, c.measured, c.expected) for c in result.checks if not c.passed]


# ----------------------------------------------------------------------------- meaningless settings
def test_meaningless_tolerances_and_seeds_are_refused():
    T = committee_teacher(2)
    start = committee_start(T, seed=3)
    for call in (lambda: classify(start, gtol=float("nan")), lambda: find_critical_point(start, gtol=float("inf")),
                 lambda: find_critical_point(start, gtol=-1.0), lambda: classify(start, gtol=1e3)):
        with pytest.raises(NearoptError, match="gtol"):
            call()
    with pytest.raises(NearoptError, match="seed"):
        survey(T, n_starts=2, seed=-1)
    with pytest.raises(NearoptError, match="seed"):
        Case(T, 2, 2, seed=1.5)


def test_a_teacher_too_small_to_divide_by_is_refused(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, W1=np.eye(2) * 1e-170, W2=np.ones((1, 2)) * 1e-170)
    code, _, err = cli("critical", "--teacher", path, "--student-width", "2", "--quiet")
    _one_line(code, err, 2, "E[f_t^2]")
    tiny = TwoLayerNet(np.eye(2) * 1e-170, np.ones((1, 2)) * 1e-170, committee_teacher(2).activation)
    with pytest.raises(NearoptError, match="E\\[f_t\\^2\\]"):
        classify(Problem(tiny, student=TwoLayerNet(np.eye(2), np.ones((1, 2)), tiny.activation), trained="first"))
    with pytest.raises(NearoptError, match="E\\[f_t\\^2\\]"):
        survey(tiny, n_starts=1)


# ----------------------------------------------------------------------------- checks before work, outputs
def test_survey_memory_is_checked_before_anything_is_drawn(monkeypatch):
    monkeypatch.setenv(res.ENV_LIMIT, "50MB")
    code, _, err = cli("landscape", "--committee", "3", "--starts", "3000000", "--quiet")
    line = _one_line(code, err, 2, "the survey's arrays (3000000 starts")
    assert "--starts" in line and "structured route" not in line
    with pytest.raises(ResourceError, match="--student-width"):
        survey_many([Case(committee_teacher(3), 2000, 1)], trained="first")


def test_classification_memory_is_checked_before_the_descent(monkeypatch):
    monkeypatch.setenv(res.ENV_LIMIT, "1GB")
    code, _, err = cli("critical", "--committee", "300", "--quiet")
    line = _one_line(code, err, 2, "dense 90000 x 90000 Hessian")
    assert "--committee" in line and "structured route" not in line
    code, _, err = cli("landscape", "--committee", "3", "--student-width", "5000", "--starts", "1", "--quiet")
    line = _one_line(code, err, 2, "dense 15000 x 15000 Hessian")
    assert "--student-width" in line and "one end" not in line


def test_family_folder_of_an_earlier_run_is_refused_before_work(tmp_path):
    fam = tmp_path / "fam"
    fam.mkdir()
    (fam / "family_07.npz").write_bytes(b"")
    code, out, err = cli("landscape", "--committee", "3", "--starts", "2", "--quiet", "--save-families", fam)
    _one_line(code, err, 2, "family file(s)")
    assert out == ""


def test_results_are_written_before_the_family_files(tmp_path, monkeypatch):
    """A family write that fails after the survey leaves the --out JSON written."""
    from nearopt.landscape import survey as ls

    def broken(self, folder):
        raise NearoptError("cannot write the family files (disk full)")

    monkeypatch.setattr(ls.Survey, "save_families", broken)
    path = tmp_path / "out.json"
    code, _, err = cli("landscape", "--committee", "3", "--starts", "2", "--quiet", "--handover", "1e-5", "--out", path, "--save-families",
                       tmp_path / "fam")
    _one_line(code, err, 2, "disk full")
    assert json.loads(path.read_text())["starts"] == 2


# ----------------------------------------------------------------------------- custom activations
def test_landscape_with_a_custom_activation_runs_the_library_path(tmp_path, monkeypatch):
    (tmp_path / "my_softplus.py").write_text(textwrap.dedent("""
        import torch

        def softplus(x):
            return torch.nn.functional.softplus(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_softplus", raising=False)
    code, out, err = cli("landscape", "--committee", "2", "--starts", "1", "-a", "my_softplus:softplus", "--max-steps", "3", "--quiet", "--json")
    assert code in (0, 1) and "Traceback" not in err, err
    data = json.loads(out)
    assert data["activation"] == "my_softplus:softplus" and sum(data["classes"].values()) == 1
