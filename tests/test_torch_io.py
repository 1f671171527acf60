"""Networks from PyTorch: modules, state dicts and ``.pt`` files give the network PyTorch computes, or one error line."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _cli import cli
from torch import nn

from nearopt.errors import NearoptError
from nearopt.model import io
from nearopt.model.activations import CustomActivation
from nearopt.model.deep_linear import DeepLinearNet, deep_linear_depth
from nearopt.model.network import TwoLayerNet
from nearopt.model.torch_io import from_torch, load_torch_file
from nearopt.model.torch_state import read_torch_weights


def _module(*layers, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*layers).to(dtype)


def _torch_out(module, X):
    """The module's outputs ``(N, M)`` on ``X`` in the module's precision, as float64."""
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        return module(torch.as_tensor(X, dtype=dtype)).to(torch.float64).numpy()


def _X(n_inputs, n=64, seed=1):
    return np.random.default_rng(seed).standard_normal((n, n_inputs))


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


# -- modules ---------------------------------------------------------------------------------------


def test_the_user_case_loads_and_computes_what_pytorch_computes():
    module = _module(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3))
    net = from_torch(module)
    assert isinstance(net, TwoLayerNet) and net.activation.name == "tanh"
    assert (net.n_inputs, net.n_hidden, net.n_outputs) == (10, 20, 3) and net.b1 is not None and net.b2 is not None
    np.testing.assert_array_equal(net.W1, module[0].weight.detach().numpy())  # (out, in) is nearopt's (N_h, N_i): no transpose
    X = _X(10)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X), rtol=0, atol=1e-12)


def test_a_float32_module_becomes_float64_with_its_values_exact():
    module = _module(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3), dtype=torch.float32)
    net = from_torch(module)
    assert net.W1.dtype == np.float64 and net.activation.name == "relu"
    np.testing.assert_array_equal(net.W2, module[2].weight.detach().numpy().astype(np.float64))
    X = _X(10)
    ref = _torch_out(module, X)  # computed in float32
    err = np.abs(net.forward(X) - ref).max()
    assert 0 < err < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("middle, name", [((), "linear"), ((nn.Identity(),), "linear"), ((nn.ReLU(inplace=True),), "relu")])
def test_no_biases_one_output_and_the_linear_gap(middle, name):
    module = _module(nn.Linear(6, 4, bias=False), *middle, nn.Linear(4, 1, bias=False))
    net = from_torch(module)
    assert net.is_plain and net.activation.name == name and net.n_params == 6 * 4 + 4
    X = _X(6)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X)[:, 0], rtol=0, atol=1e-12)


def test_one_bias_of_two():
    module = _module(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2, bias=False))
    net = from_torch(module)
    assert net.b1 is not None and net.b2 is None and list(net.blocks()) == ["W1", "b1", "W2"]
    X = _X(5)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X), rtol=0, atol=1e-12)


class _Erf(nn.Module):
    """erf(z / sqrt 2): what nearopt calls "erf"; PyTorch has no module for it."""

    def forward(self, z):
        return torch.erf(z / math.sqrt(2.0))


def test_an_erf_module_is_named_by_the_activation_argument_and_checked():
    module = _module(nn.Linear(7, 5), _Erf(), nn.Linear(5, 2))
    net = from_torch(module, activation="erf")
    assert net.activation.name == "erf"
    X = _X(7)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X), rtol=0, atol=1e-12)
    with pytest.raises(NearoptError, match="not an activation nearopt models") as exc:
        from_torch(module)  # a custom module needs activation=
    assert "_Erf" in _one_line(exc)
    with pytest.raises(NearoptError, match="'erf:unit' differs from module '1'") as exc:
        from_torch(module, activation="erf:unit")  # erf(z) is not erf(z / sqrt 2)
    _one_line(exc)
    with pytest.raises(NearoptError, match="differs from the module .no activation") as exc:
        from_torch(_module(nn.Linear(3, 2), nn.Linear(2, 1)), activation="tanh")
    _one_line(exc)


def test_a_sigmoid_through_a_custom_activation():
    module = _module(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1))
    with pytest.raises(NearoptError, match=r"nn.Sigmoid\) is not an activation nearopt models"):
        from_torch(module)
    net = from_torch(module, activation=CustomActivation("sigmoid", torch.sigmoid))
    X = _X(4)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X)[:, 0], rtol=0, atol=1e-12)


def test_a_stack_of_bias_free_layers_is_a_deep_linear_network():
    module = _module(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False), nn.Identity(), nn.Linear(4, 2, bias=False))
    net = from_torch(module)
    assert isinstance(net, DeepLinearNet) and net.widths == (6, 5, 4, 2)
    X = _X(6)
    np.testing.assert_allclose(net.forward(X), _torch_out(module, X), rtol=0, atol=1e-12)
    one = from_torch(nn.Linear(3, 2, bias=False).double())
    assert isinstance(one, DeepLinearNet) and one.widths == (3, 2)
    nested = from_torch(nn.Sequential(nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)), nn.Linear(3, 1, bias=False)))
    assert isinstance(nested, DeepLinearNet) and nested.depth == 3


@pytest.mark.parametrize("module, activation, needle", [
    (nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 1)), None, "(nn.GELU) is not an activation nearopt models: nearopt recognises nn.Tanh"),
    (nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1)), None, "(nn.Dropout) is a dropout or normalisation layer"),
    (nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 1)).eval(), "linear", "(nn.Dropout) is a dropout or normalisation layer"),
    (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)), None, "(nn.BatchNorm1d) is a dropout or normalisation layer"),
    (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Tanh(), nn.Linear(4, 1)), None, "nearopt models one activation there"),
    (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)), None, "a stack of 3 Linear layers with modules between them"),
    (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)), None, "3 Linear layer(s) with biases ('0', '1', '2')"),
    (nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False), nn.Linear(1, 1, bias=False)), "tanh", "a deep linear network, which has no activation"),
    (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(5, 1)), None, "nn.Linear '2' takes 5 inputs but '0' gives 4"),
    (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Tanh()), None, "comes after the last Linear layer"),
    (nn.Sequential(nn.Tanh(), nn.Linear(3, 1)), None, "comes before the first Linear layer"),
    (nn.Sequential(nn.Tanh()), None, "the module has no nn.Linear layer"),
    (nn.Tanh(), None, "from_torch reads an nn.Sequential or nn.Linear, got Tanh"),
])
def test_every_refused_module_is_one_line(module, activation, needle):
    with pytest.raises(NearoptError) as exc:
        from_torch(module, activation)
    assert needle in _one_line(exc)


def test_nan_weights_are_one_line():
    module = _module(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        module[2].weight[0, 1] = float("nan")
    with pytest.raises(NearoptError, match=r"entry '2.weight' contains NaN or infinite values") as exc:
        from_torch(module)
    _one_line(exc)
    with pytest.raises(NearoptError, match=r"entry '2.weight' contains NaN") as exc:
        from_torch(module.state_dict(), "tanh")
    _one_line(exc)


# -- state dicts and files -------------------------------------------------------------------------


def test_a_state_dict_needs_its_activation_and_gives_the_same_network():
    module = _module(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3))
    state = module.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(NearoptError, match="no activation .a state dict records none.: give activation=") as exc:
        from_torch(state)
    _one_line(exc)
    net = from_torch(state, "tanh")
    np.testing.assert_array_equal(net.parameters(), from_torch(module).parameters())


def test_a_state_dict_round_trip_through_a_pt_file(tmp_path):
    module = _module(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3), dtype=torch.float32)
    torch.save(module.state_dict(), tmp_path / "t.pt")
    net = load_torch_file(tmp_path / "t.pt", "tanh")
    X = _X(10)
    assert np.abs(net.forward(X) - _torch_out(module, X)).max() < 1e-5
    np.testing.assert_array_equal(net.parameters(), from_torch(module).parameters())
    # every weight-file reader of nearopt reads it: the same arrays as the network's own .npz
    net.save(tmp_path / "t.npz")
    for a, b in ((io.load_weights(tmp_path / "t.pt"), io.load_weights(tmp_path / "t.npz")),):
        assert list(a) == list(b) == ["W1", "b1", "W2", "b2"] and all(np.array_equal(a[k], b[k]) for k in a)
    assert io.saved_activation(tmp_path / "t.pt") is None and deep_linear_depth(tmp_path / "t.pt") is None


def test_a_deep_state_dict_file_is_a_deep_linear_file(tmp_path):
    module = _module(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    torch.save(module.state_dict(), tmp_path / "d.pth")
    assert deep_linear_depth(tmp_path / "d.pth") == 3
    loaded = DeepLinearNet.load(tmp_path / "d.pth")
    net = load_torch_file(tmp_path / "d.pth")
    assert isinstance(net, DeepLinearNet) and net.widths == loaded.widths == (5, 4, 3, 2)
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, loaded.weights, strict=True))


def _bad_states():
    w = torch.ones
    return [
        (OrderedDict([("0.weight", w(4, 3)), ("0.bias", w(3)), ("2.weight", w(1, 4))]), "bias '0.bias' has 3 entries but weight '0.weight' (4, 3) has 4 outputs"),
        (OrderedDict([("0.weight", w(4, 3)), ("2.weight", w(1, 5))]), "weight '2.weight' of shape (1, 5) does not take the 4 outputs of '0.weight'"),
        (OrderedDict([("0.bias", w(4)), ("0.weight", w(4, 3))]), "entry '0.bias' of shape (4,) is not the bias of a Linear weight right before it"),
        (OrderedDict([("0.weight", w(4, 3)), ("1.running_mean", w(4)), ("2.weight", w(1, 4))]), "belongs to a normalisation layer"),
        (OrderedDict([("conv.weight", w(2, 1, 3, 3))]), "entry 'conv.weight' has shape (2, 1, 3, 3)"),
        (OrderedDict([("0.weight", torch.ones(4, 3, dtype=torch.int64)), ("2.weight", w(1, 4))]), "entry '0.weight' is torch.int64"),
        (OrderedDict([("0.weight", w(4, 3)), ("0.bias", w(4)), ("1.weight", w(4, 4)), ("2.weight", w(1, 4))]), "3 Linear layer(s) with biases ('0.weight')"),
        (OrderedDict([("0.weight", w(4, 3)), ("0.bias", torch.tensor([1.0, float("inf"), 0.0, 0.0])), ("2.weight", w(1, 4))]), "entry '0.bias' contains NaN or infinite"),
    ]


@pytest.mark.parametrize("state, needle", _bad_states())
def test_every_refused_state_dict_is_one_line(state, needle):
    with pytest.raises(NearoptError) as exc:
        from_torch(state, "tanh")
    assert needle in _one_line(exc)


@pytest.mark.parametrize("content, needle", [
    ("module", "holds pickled objects (a whole module?) that nearopt does not unpickle; save the weights with torch.save(model.state_dict(), path)"),
    ("checkpoint", "is not a state dict of tensors (entries 'model', 'epoch' are not tensors: a checkpoint?)"),
    ("tensor", "holds one tensor of shape (3,), not a state dict of tensors"),
    ("text", "not a PyTorch file"),
    (None, "teacher file not found"),
])
def test_every_refused_file_is_one_line(tmp_path, content, needle):
    path = tmp_path / "w.pt"
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    if content == "module":
        torch.save(module, path)
    elif content == "checkpoint":
        torch.save({"model": module.state_dict(), "epoch": 3}, path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "text":
        path.write_text("not a torch file")
    with pytest.raises(NearoptError) as exc:
        load_torch_file(path, "tanh")
    assert needle in _one_line(exc)
    with pytest.raises(NearoptError) as exc:
        read_torch_weights(path, "teacher file")
    assert needle in _one_line(exc)


# -- the command line ------------------------------------------------------------------------------


def test_the_command_line_reads_a_pt_teacher_as_its_npz(tmp_path):
    module = _module(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    torch.save(module.state_dict(), tmp_path / "t.pt")
    from_torch(module).save(tmp_path / "t.npz")
    results = []
    for name in ("t.pt", "t.npz"):
        code, out, err = cli("spectrum", "--population", "--teacher", tmp_path / name, "-a", "tanh", "--json")
        assert code == 0 and not err
        results.append(json.loads(out))
    assert results[0]["P"] == 4 * 5 + 5 + 5 * 2 + 2
    assert results[0]["eigenvalues"] == results[1]["eigenvalues"] and results[0]["loss"] == results[1]["loss"]


def test_the_command_line_reads_a_pt_student(tmp_path):
    teacher = _module(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    student = _module(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), seed=2)
    for name, module in (("t", teacher), ("s", student)):
        torch.save(module.state_dict(), tmp_path / f"{name}.pt")
        from_torch(module).save(tmp_path / f"{name}.npz")
    results = []
    for ext in ("pt", "npz"):
        code, out, err = cli("spectrum", "--population", "--teacher", tmp_path / f"t.{ext}", "--student", tmp_path / f"s.{ext}", "-a", "tanh", "--json")
        assert code == 0 and not err
        results.append(json.loads(out))
    assert results[0]["P"] == 4 * 3 + 3 + 3 * 2 + 2 and results[0]["loss"] > 0
    assert results[0]["eigenvalues"] == results[1]["eigenvalues"] and results[0]["loss"] == results[1]["loss"]


def test_the_command_line_refuses_a_pickled_module_in_one_line(tmp_path):
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), tmp_path / "m.pt")
    code, out, err = cli("spectrum", "--population", "--teacher", tmp_path / "m.pt", "-a", "tanh", "--json")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "torch.save(model.state_dict(), path)" in err
