"""Declared experiment settings: every ``--set`` value is checked (type, range, relations, memory) before any cell runs.

A ``hypothesis`` fuzz drives ``nearopt experiment NAME --set key=value`` for every
setting of every experiment with values its :class:`Setting` must refuse: exit 2,
one line, no traceback, well under a second, and no cell started. A second fuzz
feeds arbitrary JSON through :func:`make_config`: a refusal is one line, an
accepted configuration lists its cells. Two tiny valid configurations run end to
end (exit 0, a valid ``result.json``).
"""

import json
import math
import string
import time
from unittest import mock

import pytest
from _cli import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.experiments.base import Check, ExperimentResult, Setting
from nearopt.pipeline import get, make_config, study, study_experiments
from nearopt.pipeline.runner import cell_memory

EXPERIMENTS = study_experiments() + [get("selftest")]
BY_NAME = {e.name: e for e in EXPERIMENTS}
#: (experiment, key) of every declared setting
KEYS = [(e.name, s.name) for e in EXPERIMENTS for s in e.settings]
for _exp in EXPERIMENTS:  # load data sets and imports once, so that the timed refusals below time the checks only
    make_config(_exp, "quick")


def _no_run(*args, **kwargs):
    raise AssertionError("a run started although its settings should have been refused")


def refused(tmp_path, name, *sets):
    """Run ``nearopt experiment NAME --set ...`` with running forbidden; return (status, stderr, seconds)."""
    argv = ["experiment", name, "--out", tmp_path / "out", "--jobs", "1"]
    for s in sets:
        argv += ["--set", s]
    t0 = time.perf_counter()
    with mock.patch.object(study, "run_experiments", _no_run):
        code, out, err = cli(*argv)
    return code, out, err, time.perf_counter() - t0


def assert_refused(code, out, err, seconds):
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nearopt experiment: error: "), err
    assert "Traceback" not in err and out == ""
    # before any cell: run_experiments is replaced by a failing stub; the bound only catches a hang
    assert seconds < 30.0, f"refused after {seconds:.2f} s"


# -- the declarations ----------------------------------------------------------


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_every_setting_is_declared_and_the_defaults_pass(exp):
    declared = [s.name for s in exp.settings]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(exp.quick) == set(exp.full), "every key of quick/full needs a Setting"
    for size in ("quick", "full"):
        config = make_config(exp, size)
        need = cell_memory(exp, config)
        assert exp.memory is not None and 0 < need < 64e9 and math.isfinite(need)


def test_a_result_without_checks_does_not_pass():
    assert not ExperimentResult("x", []).passed
    assert ExperimentResult("x", [Check("c", 1, 1, "exact", True)]).passed


def test_setting_messages_name_the_value():
    s = Setting("sizes", list, nonempty=True, unique=True, item=Setting("size", int, low=1, high=10))
    for value, needle in [([], "must not be empty"), ([1, 1], "repeats an entry"), ([1, 11], "e.sizes[1] = 11 must be <= 10"),
                          ([0], "e.sizes[0] = 0 must be >= 1"), ([1.5], "has the wrong type"), ("1", "has the wrong type")]:
        with pytest.raises(NearoptError, match=None) as info:
            s.validate(value, "e.sizes")
        assert needle in str(info.value)
    s.validate([1, 2, 10], "e.sizes")


# -- values every Setting must refuse --------------------------------------------

_NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
_UNKNOWN = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6).map(lambda t: f"no-such-{t}")


def invalid(setting: Setting, default):
    """A strategy of values ``setting`` must refuse (``default``: a valid value, to vary one part of)."""
    options = []
    if setting.type is int:
        options += [st.floats(allow_nan=True), st.text(max_size=4), st.booleans(), _NONFINITE]
        if setting.low is not None:
            options.append(st.integers(max_value=math.ceil(setting.low) - 1))
        if setting.high is not None:
            options.append(st.integers(min_value=math.floor(setting.high) + 1))
    elif setting.type is float:
        options += [_NONFINITE, st.text(max_size=4), st.booleans(), st.lists(st.floats(), max_size=2)]
        if setting.low is not None:
            options.append(st.floats(max_value=setting.low, exclude_max=not setting.low_open, allow_nan=False))
        if setting.high is not None:
            options.append(st.floats(min_value=setting.high, exclude_min=True, allow_nan=False, allow_infinity=False))
    elif setting.type is bool:
        options += [st.integers(), st.text(max_size=4), st.floats()]
    elif setting.type is str:
        options += [st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2)]
        if setting.choices:
            options.append(st.text(max_size=8).filter(lambda t: t not in setting.choices))
        elif setting.check is not None:
            options.append(_UNKNOWN)
    elif setting.type is list:
        options += [st.text(max_size=4), st.integers(), st.floats()]
        if setting.nonempty:
            options.append(st.just([]))
        if setting.length is not None and default:
            options.append(st.just(list(default) + list(default)[:1]))
        if setting.item is not None and default:
            rest = list(default)[1:]
            options.append(invalid(setting.item, list(default)[0]).map(lambda v: [v, *rest]))
    elif setting.type is dict:
        options += [st.text(max_size=4), st.integers(), st.lists(st.integers(), max_size=2)]
        if setting.fields:
            options += [st.just({**default, "no_such_entry": 1}), st.just(dict(list(default.items())[1:]))]
            for f in setting.fields:
                options.append(invalid(f, default[f.name]).map(lambda v, k=f.name: {**default, k: v}))
        elif setting.item is not None:
            options.append(invalid(setting.item, next(iter(default.values()), None) or [0]).map(lambda v: {"6": v}))
    elif setting.check is not None:  # any type, refused by its check
        options += [_UNKNOWN, st.floats(), st.booleans()]
    if not setting.optional and setting.type is not object:
        options.append(st.none())
    return st.one_of(options) if options else st.nothing()


@st.composite
def invalid_override(draw):
    name, key = draw(st.sampled_from(KEYS))
    exp = BY_NAME[name]
    setting = next(s for s in exp.settings if s.name == key)
    return name, key, draw(invalid(setting, exp.quick[key]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=invalid_override())
def test_fuzz_invalid_set_values_are_refused_in_one_line_before_any_cell(tmp_path, case):
    name, key, value = case
    assert_refused(*refused(tmp_path, name, f"{key}={json.dumps(value)}"))
    assert not (tmp_path / "out" / "cache").exists()


# -- relations, cell counts and memory -------------------------------------------


@pytest.mark.parametrize(
    "name, sets, needle",
    [
        ("breakdown", ["sigma0_min=1.0", "sigma0_max=0.01"], "sigma0_min < sigma0_max"),
        ("breakdown", ["flow_for=[\"tanh\"]"], "every flow_for activation is in activations"),
        ("breakdown", ["activations=[]"], "breakdown.activations = [] must not be empty"),
        ("breakdown", ["sigma0_min=1e-300"], "breakdown.sigma0_min = 1e-300 must be >= 1e-08"),
        ("breakdown", ["activations=[\"erf\", \"erf\"]"], "repeats an entry"),
        ("breakdown", ["samples=100000000"], "needs about"),
        ("non-gaussian", ["distributions=[\"cauchy\"]"], "is not one of gaussian"),
        ("non-gaussian", ["dynamics_activation=\"tanh\""], "dynamics_activation is one of activations"),
        ("committee", ["starts=[10, 10]"], "len(starts) = len(ks)"),
        ("committee", ["known={\"x\": [1]}"], "student widths"),
        ("committee", ["ks=[]", "starts=[]", "known={}"], "the search needs starts"),
        ("dynamics", ["edge={\"n_inputs\": 900, \"n_hidden\": 800, \"t_units\": 300.0, \"points\": 60, \"window\": [1.0, 30.0]}"], "edge.n_inputs < edge.n_hidden"),
        ("asymptotic-law", ["activations=[\"nosuch\"]"], "unknown activation"),
        ("rank", ["defective=[[4, 3, 1]]"], "N_h >= 2"),
        ("real-inputs", ["n_inputs=[1000]"], "give no cells"),
        ("real-inputs", ["datasets=[\"mnist\"]"], "is not one of"),
        ("overparameterized", ["alphas=[1.0]"], "other than 0 and 1"),
        ("selftest", ["log_dir=\"/no/such/folder\""], "no such folder"),
        ("selftest", ["sizes=[1]"], "at least 2 samples"),
        ("selftest", ["seeds=100000000"], "cells, more than"),
        ("selftest", ["sizes=[10000000000]"], "needs about"),
        ("selftest", ["seed=1e400"], "has the wrong type"),
        ("selftest", ["shift=Infinity"], "must be a finite number"),
    ],
)
def test_relations_cell_counts_and_memory_are_checked_before_any_cell(tmp_path, name, sets, needle):
    code, out, err, seconds = refused(tmp_path, name, *sets)
    assert_refused(code, out, err, seconds)
    assert needle in err


def test_reproduce_set_values_are_checked_the_same_way(tmp_path):
    argv = ["reproduce", "--only", "breakdown", "selftest", "--out", tmp_path, "--set", "selftest.seeds=2", "--set", "breakdown.activations=[]"]
    t0 = time.perf_counter()
    with mock.patch.object(study, "run_experiments", _no_run):
        code, out, err = cli(*argv)
    assert code == 2 and err.strip() == "nearopt reproduce: error: breakdown.activations = [] must not be empty" and out == ""
    assert time.perf_counter() - t0 < 1.0


# -- arbitrary JSON through make_config --------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**12), max_value=10**12) | st.floats() | st.text(max_size=6)
    | st.sampled_from(["erf", "relu", "linear", "gaussian", "digits", "auto", "monomial:3"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(KEYS), value=_JSON)
def test_fuzz_any_json_value_is_refused_in_one_line_or_gives_cells(key, value):
    name, setting = key
    exp = BY_NAME[name]
    try:
        config = make_config(exp, "quick", {setting: value})
    except NearoptError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    cells = exp.cells(config)
    assert 0 < len(cells) and math.isfinite(cell_memory(exp, config))


# -- valid tiny configurations run end to end ------------------------------------------


@pytest.mark.parametrize(
    "name, sets",
    [
        ("selftest", ["sizes=[100, 1000]", "seeds=3"]),
        ("committee", ["global_ks=[4]", "ks=[4]", "starts=[2]", "known={}"]),
    ],
)
def test_valid_tiny_configurations_run_and_give_a_valid_result(tmp_path, name, sets):
    argv = ["experiment", name, "--out", tmp_path, "--jobs", "1", "-q", "--json"]
    for s in sets:
        argv += ["--set", s]
    code, out, err = cli(*argv)
    assert code == 0, err
    data = json.loads(out)
    (record,) = data["experiments"]
    assert data["passed"] and record["passed"] and record["checks"]
    assert json.loads((tmp_path / name / "result.json").read_text())["passed"]
