"""Atomic writing and validated loading (nearopt.model.io).

Round trips of JSON (non-finite numbers included, through a strict parser), text and
``.npz``; a writer that fails half-way leaves neither a partial file nor a temporary one,
and keeps the previous file; output paths are checked before any work; weight and
input files are refused with one line for each kind of bad content.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.model.network import io

_fast = settings(max_examples=60, deadline=None)

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=5))
keys = st.text(max_size=6)  # "/", "~" and "" included: JSON Pointer escapes
documents = st.dictionaries(keys, st.recursive(numbers, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                                                max_leaves=20), max_size=5)


def _strict_loads(text: str):
    """``json.loads`` that refuses ``NaN``/``Infinity`` tokens, as RFC 8259 parsers do."""
    def refuse(token):
        raise ValueError(f"non-standard token {token}")
    return json.loads(text, parse_constant=refuse)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _has_non_finite(x) -> bool:
    if isinstance(x, float):
        return not math.isfinite(x)
    values = x.values() if isinstance(x, dict) else x if isinstance(x, list) else []
    return any(_has_non_finite(v) for v in values)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@_fast
@given(doc=documents)
def test_json_round_trips_through_a_strict_parser(doc, tmp_path_factory):
    if io.NON_FINITE_KEY in doc:
        return
    path = tmp_path_factory.mktemp("json") / "d.json"
    io.write_json(path, doc)
    text = path.read_text()
    parsed = _strict_loads(text)  # valid strict JSON: no NaN or Infinity tokens
    assert (io.NON_FINITE_KEY in parsed) == _has_non_finite(doc)
    assert _same(io.read_json(path), doc)
    assert _same(json.loads(io.to_json(doc)), doc)  # the non-strict form keeps the tokens


def test_non_finite_numbers_are_listed_by_json_pointer():
    data = {"a/b": [1.0, math.inf], "c~d": {"x": math.nan}, "ok": np.array([1.0, -math.inf]), "n": np.float64(2.5)}
    out = io.strict_jsonable(data)
    assert out[io.NON_FINITE_KEY] == {"/a~1b/1": "inf", "/c~0d/x": "nan", "/ok/1": "-inf"}
    assert out["a/b"] == [1.0, None] and out["ok"] == [1.0, None] and out["n"] == 2.5
    assert "non_finite" not in io.strict_jsonable({"a": [1.0, 2.0]})
    back = io.restore_non_finite(json.loads(json.dumps(out)))
    assert back["a/b"][1] == math.inf and math.isnan(back["c~d"]["x"]) and back["ok"][1] == -math.inf
    with pytest.raises(NearoptError, match="does not match the data"):
        io.restore_non_finite({"a": 1, io.NON_FINITE_KEY: {"/b/0": "inf"}})


def test_atomic_writes_replace_the_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "dir" / "out.txt"  # missing parents are created
    io.write_text(path, "one")
    io.write_text(path, "two")
    assert path.read_text() == "two" and _leftovers(path.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_writer_failing_half_way_leaves_no_partial_file(tmp_path, monkeypatch):
    """The temporary file is written, then the writer raises: the target keeps its previous content,
    no temporary file is left, and a new target is not created."""
    old = tmp_path / "keep.npz"
    io.write_npz(old, W1=np.ones((2, 3)))
    before = old.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    for target in (old, tmp_path / "new.npz"):
        with pytest.raises(NearoptError, match="cannot write .*No space left on device"):
            io.write_npz(target, W1=np.zeros(3))
    assert old.read_bytes() == before and not (tmp_path / "new.npz").exists()
    assert _leftovers(tmp_path) == []
    with pytest.raises(TypeError), io.atomic_path(tmp_path / "t.txt") as tmp:  # any error: same clean-up
        tmp.write_text("partial")
        raise TypeError("bug in the writer")
    assert not (tmp_path / "t.txt").exists() and _leftovers(tmp_path) == []


def test_npz_round_trip_and_suffix(tmp_path):
    arrays = {"W1": np.arange(6.0).reshape(2, 3), "W2": np.array([[1.0, -2.0]])}
    path = io.write_npz(tmp_path / "w.npz", **arrays)
    with np.load(path) as data:
        assert sorted(data.files) == ["W1", "W2"]
        for k, v in arrays.items():
            np.testing.assert_array_equal(data[k], v)
    with pytest.raises(NearoptError, match=r"must end in \.npz"):
        io.write_npz(tmp_path / "w.npy", **arrays)


def test_writing_under_a_file_is_one_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NearoptError, match="cannot write"):
        io.write_text(tmp_path / "f" / "out.txt", "y")


def test_output_paths_are_checked_without_creating_anything(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    assert io.check_output_path(tmp_path / "a" / "b" / "out.npz", suffix=".npz") == tmp_path / "a" / "b" / "out.npz"
    assert io.check_output_path(tmp_path / "new", directory=True) == tmp_path / "new"
    for kwargs, match in [
        (dict(path=tmp_path / "folder"), "is a folder"),
        (dict(path=tmp_path / "file.txt", directory=True), "is a file"),
        (dict(path=tmp_path / "file.txt" / "out.json"), "is a file, not a folder"),
        (dict(path=tmp_path / "out.json", suffix=".npz"), r"must end in \.npz"),
        (dict(path=""), "not a file name"),
    ]:
        with pytest.raises(NearoptError, match=match):
            io.check_output_path(**kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]


def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    """The permission check itself (as root every folder is writable, so ``os.access`` is made to say no)."""
    monkeypatch.setattr(io.os, "access", lambda path, mode: False)
    with pytest.raises(NearoptError, match=f"folder {tmp_path} is not writable"):
        io.check_output_path(tmp_path / "x" / "out.json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user (permissions)")
def test_a_read_only_folder_is_refused_before_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(NearoptError, match="not writable"):
            io.check_output_path(ro / "x" / "out.json")
        with pytest.raises(NearoptError, match="cannot write"):
            io.write_text(ro / "out.json", "{}")
    finally:
        ro.chmod(0o700)


# -- loading -------------------------------------------------------------------------------------------
def _npz(tmp_path, **arrays):
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    return path


def test_weights_load_as_float64_with_W2_as_a_row(tmp_path):
    W1 = np.arange(6, dtype=np.int32).reshape(3, 2)
    for W2 in (np.ones(3, dtype=np.float32), np.ones((1, 3))):
        got = io.load_weights(_npz(tmp_path, W1=W1, W2=W2))
        got1, got2 = got["W1"], got["W2"]
        assert got1.dtype == got2.dtype == np.float64 and got2.shape == (1, 3)
        np.testing.assert_array_equal(got1, W1)
    point = _npz(tmp_path, W1=W1, W2=np.ones(3), loss=np.array(0.1), classification=np.array("saddle"))
    assert io.load_weights(point)["W1"].shape == (3, 2)  # a saved critical point is a weight file too


def test_weight_files_with_biases_and_outputs_load_in_parameter_order(tmp_path):
    arrays = io.load_weights(_npz(tmp_path, W1=np.ones((3, 2)), b1=np.arange(3), W2=np.ones((2, 3)), b2=np.array([[1.0, 2.0]])))
    assert list(arrays) == ["W1", "b1", "W2", "b2"] and arrays["b2"].shape == (2,) and arrays["W2"].shape == (2, 3)
    assert all(a.dtype == np.float64 for a in arrays.values())


@pytest.mark.parametrize("arrays, match", [
    (dict(W1=np.ones((2, 3))), "lacks array"),
    (dict(W1=np.ones((2, 3)), W2=np.ones(2), W3=np.ones(2)), r"holds a deep linear network \(W1, W2, W3\): this command takes two-layer"),
    (dict(W1=np.ones((2, 3)), W2=np.ones(2), extra=np.ones(2)), "extra that nearopt does not model"),
    (dict(W1=np.ones((2, 3)), W2=np.ones(2), b1=np.ones(3)), "b1 must have 2 entries"),
    (dict(W1=np.ones((2, 3)), W2=np.ones((2, 2)), b2=np.ones(3)), "b2 must have 2 entries"),
    (dict(W1=np.ones((2, 3)), W2=np.ones(2), b1=np.array([1.0, np.nan])), "b1 contains NaN"),
    (dict(W1=np.ones((2, 3)), W2=np.ones(3)), r"W2 must have shape \(M, 2\)"),
    (dict(W1=np.ones(3), W2=np.ones(3)), r"W1 must have shape \(N_h, N_i\)"),
    (dict(W1=np.ones((2, 3)) * 1j, W2=np.ones(2)), "real numeric"),
    (dict(W1=np.array([["a", "b"]]), W2=np.ones(1)), "real numeric"),
    (dict(W1=np.full((2, 3), np.nan), W2=np.ones(2)), "W1 contains NaN"),
    (dict(W1=np.ones((2, 3)), W2=np.array([1.0, np.inf])), "W2 contains NaN"),
])
def test_bad_weight_files_are_refused_with_one_line(tmp_path, arrays, match):
    with pytest.raises(NearoptError, match=match) as info:
        io.load_weights(_npz(tmp_path, **arrays), role="student")
    assert "student file" in str(info.value) and "\n" not in str(info.value)


def test_missing_and_damaged_files_are_refused(tmp_path):
    with pytest.raises(NearoptError, match="teacher file not found"):
        io.load_weights(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(NearoptError, match=r"not a valid \.npz"):
        io.load_weights(tmp_path / "bad.npz")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(NearoptError, match=r"not a valid \.npy"):
        io.load_inputs(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NearoptError, match=r"not a valid \.npy"):  # pickles are never loaded
        io.load_real_array(tmp_path / "obj.npy", "inputs")
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    with pytest.raises(NearoptError, match="must hold a real numeric array, got dtype <U1"):
        io.load_real_array(tmp_path / "str.npy", "covariance")
    with pytest.raises(NearoptError, match="inputs file not found"):
        io.load_inputs(tmp_path / "none.npy")


def test_inputs_load_with_their_shape_checked(tmp_path):
    X = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "x.npy", X)
    got = io.load_inputs(tmp_path / "x.npy", n_inputs=3)
    assert got.dtype == np.float64 and np.array_equal(got, X)
    with pytest.raises(NearoptError, match="width 3 but the network has N_i = 5"):
        io.load_inputs(tmp_path / "x.npy", n_inputs=5)
    for bad, match in [(np.ones(3), r"\(N, N_i\) array"), (np.ones((0, 3)), r"\(N, N_i\) array"), (np.full((2, 2), np.nan), "NaN")]:
        np.save(tmp_path / "b.npy", bad)
        with pytest.raises(NearoptError, match=match):
            io.load_inputs(tmp_path / "b.npy")
