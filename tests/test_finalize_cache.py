"""The final step of each experiment (tests, figures) is cached like its cells.

An unchanged rerun calls no ``run_cell`` and no ``finalize`` and says so in its
timings; changed settings, or an output file that was removed or edited, run the
final step again for that experiment only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nearopt.experiments import base as experiments_base
from nearopt.pipeline import get, reproduce
from nearopt.pipeline.cache import CellCache, finalize_key

SELFTEST = get("selftest")
SMALL = {"sizes": [100, 1000], "seeds": 3}


@pytest.fixture
def counted(monkeypatch):
    """The selftest experiment with its ``run_cell`` and ``finalize`` calls counted (same name and version)."""
    calls = {"cells": 0, "finalize": 0}

    def run_cell(cell):
        calls["cells"] += 1
        return SELFTEST.run_cell(cell)

    def finalize(*args):
        calls["finalize"] += 1
        return SELFTEST.finalize(*args)

    monkeypatch.setitem(experiments_base._REGISTRY, "selftest", dataclasses.replace(SELFTEST, run_cell=run_cell, finalize=finalize))
    return calls


def _run(out: Path, **settings):
    return reproduce(["selftest"], overrides={"selftest": {**SMALL, **settings}}, out=out, jobs=1, quiet=True)


def _timings(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["experiments"][0]["timings"]


def test_cached_rerun_recomputes_nothing_and_gives_the_same_report(tmp_path, counted):
    first = _run(tmp_path)
    assert counted == {"cells": 6, "finalize": 1} and _timings(tmp_path)["finalize_cached"] is False
    checks = [c.to_dict() for c in first.runs[0].checks]
    figure = (tmp_path / "selftest" / "selftest.png").read_bytes()

    second = _run(tmp_path)
    assert counted == {"cells": 6, "finalize": 1}  # neither a cell nor the final step ran again
    t = _timings(tmp_path)
    assert t["computed"] == 0 and t["cached"] == 6 and t["finalize_cached"] is True
    assert [c.to_dict() for c in second.runs[0].checks] == json.loads(json.dumps(checks))
    assert second.runs[0].result.summary == first.runs[0].result.summary
    assert (tmp_path / "selftest" / "selftest.png").read_bytes() == figure
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_changed_settings_or_outputs_run_the_final_step_again(tmp_path, counted):
    _run(tmp_path)
    _run(tmp_path, shift=0.0, sizes=[100, 1000, 2000])  # new cells: a new final step
    assert counted["finalize"] == 2
    (tmp_path / "selftest" / "selftest.png").unlink()  # a removed figure is drawn again
    _run(tmp_path, sizes=[100, 1000, 2000])
    assert counted["finalize"] == 3 and (tmp_path / "selftest" / "selftest.png").is_file()
    (tmp_path / "selftest" / "cells.csv").write_text("edited\n")  # so is an edited data file
    _run(tmp_path, sizes=[100, 1000, 2000])
    assert counted["finalize"] == 4 and (tmp_path / "selftest" / "cells.csv").read_text() != "edited\n"
    _run(tmp_path, sizes=[100, 1000, 2000])
    assert counted["finalize"] == 4


def test_fresh_and_no_cache_runs_finalize_every_time(tmp_path, counted):
    _run(tmp_path)
    reproduce(["selftest"], overrides={"selftest": SMALL}, out=tmp_path, jobs=1, quiet=True, fresh=True)
    reproduce(["selftest"], overrides={"selftest": SMALL}, out=tmp_path, jobs=1, quiet=True, cache=False)
    assert counted["finalize"] == 3


def test_a_damaged_final_entry_warns_and_is_recomputed(tmp_path, counted):
    run = _run(tmp_path).runs[0]
    key = finalize_key(SELFTEST, run.config, run.keys)
    path = CellCache(tmp_path / "cache").final_path("selftest", key)
    entry = json.loads(path.read_text())
    entry["result"]["summary"] = "edited by hand"
    path.write_text(json.dumps(entry))
    with pytest.warns(UserWarning, match="does not match its digest"):
        again = _run(tmp_path)
    assert counted["finalize"] == 2 and again.runs[0].result.summary != "edited by hand"


def test_finalize_key_changes_with_settings_and_cells():
    config = SELFTEST.config("quick")
    key = finalize_key(SELFTEST, config, ["a", "b"])
    assert finalize_key(SELFTEST, dict(config), ["a", "b"]) == key
    assert finalize_key(SELFTEST, config, ["b", "a"]) != key  # the results come in cell order
    assert finalize_key(SELFTEST, dict(config, seeds=config["seeds"] + 1), ["a", "b"]) != key
    assert finalize_key(dataclasses.replace(SELFTEST, version="other"), config, ["a", "b"]) != key


def test_a_report_beside_the_outputs_does_not_spoil_the_cache(tmp_path, counted):
    """``nearopt experiment`` writes its report into the experiment's folder after the final step."""
    for sizes in ([100, 1000], [100, 2000], [100, 2000]):  # the second final step runs with a report there
        reproduce(["selftest"], overrides={"selftest": {**SMALL, "sizes": sizes}}, out=tmp_path, jobs=1, quiet=True, report_root=tmp_path / "selftest")
    assert counted["finalize"] == 2 and (tmp_path / "selftest" / "report.html").is_file()


def test_non_finite_numbers_survive_the_cache(tmp_path, recwarn):
    """Entries are strict JSON (NaN and infinities listed apart); reading them back restores the values."""
    cache = CellCache(tmp_path)
    cell = {"seed": 1}
    result = {"gap": float("inf"), "first_dropped": float("nan"), "low": -float("inf"), "rank": 3}
    cache.put("exp", "k", cell, result, 0.5)
    entry = cache.get("exp", "k", cell)
    assert not recwarn.list and entry is not None
    got = entry["result"]
    assert got["gap"] == float("inf") and got["low"] == -float("inf") and got["first_dropped"] != got["first_dropped"] and got["rank"] == 3
