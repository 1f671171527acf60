"""Memory and device guards (nearopt.resources).

Byte counts and sizes, the available memory as the smallest of what the system, a cgroup and
``NEAROPT_MEMORY_LIMIT`` allow, the refusal (one line: size, what, the route that fits) and the
warning above half of it, and a dense route that refuses before it allocates.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nearopt.resources as res
from nearopt.curvature import Curvature, PopulationHessian
from nearopt.errors import NearoptError, ResourceError
from nearopt.model.network import sample_teacher

_fast = settings(max_examples=60, deadline=None)


# -- sizes ---------------------------------------------------------------------------------------------
@_fast
@given(value=st.floats(1, 1e6), unit=st.sampled_from(sorted(res._UNITS)), space=st.sampled_from(["", " "]))
def test_sizes_parse_with_every_unit(value, unit, space):
    text = f"{value!r}{space}{unit.upper() if len(unit) == 2 else unit}"
    assert res.parse_bytes(text) == int(value * res._UNITS[unit])


@pytest.mark.parametrize("text", ["abc", "-5GB", "0", "0.5", "8 XB", "nan", "inf GB", "", "1e400"])
def test_a_bad_size_is_refused_naming_the_variable(text):
    with pytest.raises(NearoptError, match=f"{res.ENV_LIMIT} must be a size of at least 1 byte"):
        res.parse_bytes(text)


def test_the_limit_variable_unset_empty_valid_and_invalid(monkeypatch):
    monkeypatch.delenv(res.ENV_LIMIT, raising=False)
    assert res.memory_limit() is None
    monkeypatch.setenv(res.ENV_LIMIT, "  ")
    assert res.memory_limit() is None
    res.check_environment()
    monkeypatch.setenv(res.ENV_LIMIT, "512MiB")
    assert res.memory_limit() == 512 * 2**20
    monkeypatch.setenv(res.ENV_LIMIT, "lots")
    with pytest.raises(NearoptError, match=res.ENV_LIMIT):
        res.check_environment()


@pytest.mark.parametrize("nbytes, text", [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (1_500_000, "1.5 MB"), (8e18, "8e+03 PB"),
                                          (3.2e9, "3.2 GB")])
def test_format_bytes(nbytes, text):
    assert res.format_bytes(nbytes) == text


@_fast
@given(shape=st.lists(st.integers(0, 10**7), min_size=1, max_size=3), dtype=st.sampled_from([np.float64, np.float32, np.int8, torch.float64, torch.float32]),
       copies=st.sampled_from([1.0, 2.0, 0.5, 3.5]))
def test_dense_bytes_is_exact(shape, dtype, copies):
    item = dtype.itemsize if isinstance(dtype, torch.dtype) else np.dtype(dtype).itemsize
    assert res.dense_bytes(tuple(shape), dtype, copies) == math.ceil(math.prod(shape) * item * copies)
    n = shape[0]
    assert res.dense_bytes(n, dtype) == n * n * item


def test_dense_bytes_of_absurd_sizes_and_negative_shapes():
    assert res.dense_bytes(10**9) == 8 * 10**18 and res.dense_bytes(np.int64(10**6)) == 8 * 10**12
    with pytest.raises(NearoptError, match="non-negative"):
        res.dense_bytes((3, -1))


# -- available memory -------------------------------------------------------------------------------------
def test_available_memory_is_the_smallest_allowance(monkeypatch):
    class FakePsutil:
        class virtual_memory:
            available = 9_000

    monkeypatch.setattr(res, "psutil", FakePsutil)
    monkeypatch.setattr(res, "_cgroup_room", lambda: None)
    monkeypatch.delenv(res.ENV_LIMIT, raising=False)
    assert res.available_memory() == 9_000
    monkeypatch.setattr(res, "_cgroup_room", lambda: 4_000)
    assert res.available_memory() == 4_000
    monkeypatch.setenv(res.ENV_LIMIT, "2kB")
    assert res.available_memory() == 2_000
    monkeypatch.setenv(res.ENV_LIMIT, "1GB")
    assert res.available_memory() == 4_000  # the cap only lowers
    monkeypatch.setattr(res, "psutil", None)  # the /proc/meminfo fallback, then nothing known
    monkeypatch.setattr(res, "_meminfo_available", lambda: None)
    monkeypatch.setattr(res, "_cgroup_room", lambda: None)
    monkeypatch.delenv(res.ENV_LIMIT)
    assert res.available_memory() == 2**63 - 1


def test_meminfo_and_cgroup_files(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemFree:   300 kB\nMemAvailable:   700 kB\n")
    assert res._meminfo_available(tmp_path / "meminfo") == 700 * 1024
    (tmp_path / "meminfo").write_text("MemTotal:  1000 kB\nMemFree:   300 kB\n")
    assert res._meminfo_available(tmp_path / "meminfo") == 300 * 1024
    assert res._meminfo_available(tmp_path / "missing") is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    assert res._cgroup_room(v2) is None  # no limit
    (v2 / "memory.max").write_text("1000\n")
    (v2 / "memory.current").write_text("1200\n")
    assert res._cgroup_room(v2) == 0  # over the limit: no room, never negative
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert res._cgroup_room(v1) is None  # v1's "no limit"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("5000")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("1000")
    assert res._cgroup_room(v1) == 4000


# -- refusals and warnings ----------------------------------------------------------------------------------
def test_require_memory_refuses_warns_or_passes(monkeypatch):
    monkeypatch.setenv(res.ENV_LIMIT, "1000")
    with pytest.raises(ResourceError, match=r"^a big matrix needs 1 kB but only 1 kB is available; instead use route A or route B$"):
        res.require_memory(1001, "a big matrix", ["route A", "route B"])
    with pytest.raises(ResourceError, match=r"needs 2 kB but only 1 kB is available$"):
        res.require_memory(2000, "x")
    with pytest.warns(res.MemoryPressureWarning, match="a matrix takes 600 B of the 1 kB available"):
        assert res.require_memory(600, "a matrix") == 600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert res.require_memory(500, "a matrix") == 500  # half exactly: no warning
    assert issubclass(ResourceError, NearoptError)


class _ProductOnly(Curvature):
    """A curvature with only a product (the identity): its dense matrix comes from the generic route."""

    def torch_matmat(self, V):
        return V.clone()


def test_dense_routes_refuse_before_allocating(monkeypatch):
    net = sample_teacher(30, 20, "erf", seed=0)  # P = 620: 3.1 MB dense
    monkeypatch.setenv(res.ENV_LIMIT, "1MB")
    for op in (_ProductOnly(net), PopulationHessian(net)):
        with pytest.raises(ResourceError, match="dense 620 x 620") as info:
            op.to_dense()
        assert "instead use" in str(info.value)
    monkeypatch.setenv(res.ENV_LIMIT, "1GB")
    np.testing.assert_array_equal(_ProductOnly(net).to_dense(), np.eye(620))


# -- devices -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, want", [(None, "auto"), ("auto", "auto"), ("cpu", "cpu"), (" CPU ", "cpu"), ("cpu:0", "cpu:0"),
                                          (torch.device("cpu"), "cpu")])
def test_device_names_normalise(device, want):
    assert res.check_device(device) == want


@pytest.mark.parametrize("device, match", [("tpu", "unknown device 'tpu'"), ("cpu:1", "unknown device 'cpu:1'"), (3, "device must be one of"),
                                           ("cuda:x", "unknown device")])
def test_unknown_devices_are_refused(device, match):
    with pytest.raises(NearoptError, match=match):
        res.check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_error():
    with pytest.raises(NearoptError, match="torch sees no CUDA GPU; use --device cpu"):
        res.check_device("cuda:0")
