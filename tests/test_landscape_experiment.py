"""Experiment ``landscape``: configuration, the two-sample comparison, the published k = 7 minimum, a small run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.experiments.base import get_experiment
from nearopt.experiments.landscape import (
    SS2018_GTOL,
    VARIANT_LABELS,
    VARIANTS,
    _extra_unit_check,
    _published_checks,
    _spectrum,
    cells,
    finalize,
    group_text,
    newcombe_interval,
    published_k7,
    run_cell,
)
from nearopt.landscape.critical import classify, committee_teacher, newton_polish
from nearopt.landscape.families import families
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


def test_newcombe_interval_matches_the_published_example():
    """Newcombe (1998), Stat. Med. 17, 873, Table II, example (a): 56/70 - 48/80, method 10 (hybrid score), 95 %: 0.0524 to 0.3339."""
    lo, hi = newcombe_interval(56, 70, 48, 80, 0.95)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(n1=st.integers(1, 2000), n2=st.integers(1, 2000), f1=st.floats(0, 1), f2=st.floats(0, 1))
def test_newcombe_interval_holds_the_difference_and_is_antisymmetric(n1, n2, f1, f2):
    x1, x2 = round(f1 * n1), round(f2 * n2)
    lo, hi = newcombe_interval(x1, n1, x2, n2, 0.99)
    d = x1 / n1 - x2 / n2
    assert -1 - 1e-12 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1 + 1e-12
    lo2, hi2 = newcombe_interval(x2, n2, x1, n1, 0.99)
    assert lo2 == pytest.approx(-hi, abs=1e-12) and hi2 == pytest.approx(-lo, abs=1e-12)
    lo95, hi95 = newcombe_interval(x1, n1, x2, n2, 0.95)
    assert lo <= lo95 + 1e-12 and hi95 <= hi + 1e-12


def test_cells_carry_the_authors_threshold_and_distinct_seeds():
    exp = get_experiment("landscape")
    cfg = exp.config("quick")
    cl = cells(cfg)
    assert [c["variant"] for c in cl] == ["relu n=k", "relu n=k+1"]  # both widths of the paper's table
    for cell, extra in zip(cl, (0, 1)):
        assert [c[0] for c in cell["cases"]] == [6, 7, 8, 9]
        assert all(c[1] == c[0] + extra and c[2] == cfg["starts"] for c in cell["cases"])
        assert len({c[3] for c in cell["cases"]}) == 4
        assert cell["gtol"] == pytest.approx(1e-9 / (2 * math.pi))
    full = exp.config("full")
    sizes = {(c["variant"], k, n) for c in cells(full) for k, n, _, _ in c["cases"]}
    assert ("relu n=k+1", 20, 21) in sizes and ("relu n=k", 6, 6) in sizes and len(sizes) == 5 * 15


def test_settings_refuse_an_unknown_variant():
    exp = get_experiment("landscape")
    with pytest.raises(NearoptError, match="variants"):
        exp.validate(exp.config("quick", {"variants": ["relu n=k+3"]}))


def test_labels_name_the_variants_in_words():
    assert set(VARIANT_LABELS) == set(VARIANTS)
    for label in VARIANT_LABELS.values():
        assert "n=k" not in label and label.split(",")[0] in ("ReLU", "erf")
    assert group_text("S_12 x S_1") == "S₁₂ × S₁"


def _published_family() -> tuple[dict, float]:
    """The published point, polished and classified, as a family row of the experiment (with its loss)."""
    T = committee_teacher(7)
    pr = Problem(T, student=TwoLayerNet(published_k7(), np.ones((1, 7)), T.activation), trained="first")
    cp = classify(newton_polish(pr)[0])
    row = families([cp])[0].to_dict()
    row["W1"], row["W2"] = cp.student.W1.tolist(), cp.student.W2.tolist()
    return row, cp.loss


def test_published_k7_point_is_a_strict_spurious_minimum_of_our_loss():
    """The README's 10-digit entries are a critical point of our closed-form loss; Newton polishes them to a strict minimum."""
    T = committee_teacher(7)
    raw = classify(Problem(T, student=TwoLayerNet(published_k7(), np.ones((1, 7)), T.activation), trained="first"), gtol=1e-8)
    assert raw.gradient_norm < 1e-9
    row, loss = _published_family()
    assert row["classification"] == "spurious local minimum" and row["zero_modes"] == 0
    assert loss == pytest.approx(0.0232027149, abs=1e-9)
    assert row["lambda_min"] == pytest.approx(0.014059, abs=2e-6) and row["lambda_max"] == pytest.approx(2.29549, abs=2e-5)
    assert sorted(row["multiplicities"]) == [1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 9, 10]
    assert _spectrum(row).shape == (49,)


def test_published_check_finds_the_family_and_rejects_a_different_one():
    row, _ = _published_family()
    moved = {**row, "loss": row["loss"] * (1 + 1e-6)}
    for fams, found in (([{**row, "count": 3}], True), ([{**moved, "count": 3}], False)):
        checks = _published_checks({("relu n=k", 7, 7): {"families": fams}})
        assert [c.passed for c in checks] == [found, found]
    assert _published_checks({}) == []


def test_extra_unit_check_compares_the_two_widths_at_each_k():
    def survey(sp, starts):
        return {"spurious": sp, "starts": starts, "spurious_fraction": sp / starts}

    by = {("relu n=k", 8, 8): survey(120, 1000), ("relu n=k+1", 8, 9): survey(0, 1000), ("relu n=k", 6, 6): survey(0, 1000),
          ("relu n=k+1", 6, 7): survey(3, 1000)}
    check = _extra_unit_check(by)
    assert check is not None and check.passed and "k=8" in check.detail and "k=6" not in check.detail
    by[("relu n=k+1", 8, 9)] = survey(110, 1000)
    assert not _extra_unit_check(by).passed
    assert _extra_unit_check({("relu n=k", 8, 8): survey(120, 1000)}) is None


def test_small_run_end_to_end(tmp_path):
    """k = n = 6 (6 starts) and 7 (8 starts, a seed whose starts include a spurious end point): every check passes, figures written."""
    cell = {"variant": "relu n=k", "cases": [[6, 6, 6, 1], [7, 7, 8, 4]], "handover": 1e-5, "max_steps": 200_000, "gtol": SS2018_GTOL}
    res = finalize({}, [cell], [run_cell(cell)], tmp_path)
    names = [c.name for c in res.checks]
    assert any("Newcombe" in n for n in names) and any("published k = n = 7" in n for n in names)
    assert res.passed, [(c.name, c.measured, c.detail) for c in res.checks if not c.passed]
    assert {p.name for p in res.figures} == {"landscape_fractions.png", "landscape_family_losses.png", "landscape_spectrum.png"}
    assert all(p.exists() for p in res.figures) and (tmp_path / "landscape.json").exists()
    assert "ReLU, n = k (student width = teacher width)" in res.summary
