"""Networks from PyTorch: an ``nn.Sequential``, a state dict or a ``.pt``/``.pth`` file as a nearopt network.

Example::

    import torch
    from nearopt.model.torch_io import from_torch
    module = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))
    net = from_torch(module)            # TwoLayerNet: W1 (20, 10), b1 (20,), W2 (3, 20), b2 (3,), tanh

PyTorch's ``nn.Linear`` stores its weight as ``(out_features, in_features)``: exactly nearopt's
``W1`` ``(N_h, N_i)`` and ``W2`` ``(M, N_h)``, so the arrays are taken as they are. Weights of
any floating type become float64 (exact). What is read, and how a state dict is split into
layers: :mod:`nearopt.model.torch_state`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NearoptError
from .activations import Activation, get_activation
from .deep_linear import DeepLinearNet
from .network import TwoLayerNet
from .torch_state import LAYERS_SCOPE, Layer, layer_arrays, read_torch_state, state_layers

__all__ = ["from_torch", "load_torch_file", "MODULE_ACTIVATIONS"]

#: activation modules nearopt models, by class (``nn.Identity`` is no activation: linear)
MODULE_ACTIVATIONS: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Identity: "linear"}
#: layers that are no activation, refused even with ``activation=`` (an eval-mode dropout would pass the comparison)
_NOT_ACTIVATIONS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.BatchNorm1d,
                    nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
#: where an ``activation=`` argument is compared with the module it stands for
_PROBE = torch.linspace(-4.0, 4.0, 161, dtype=torch.float64)
_PROBE_TOL = 1e-6


def _modelled() -> str:
    names = ", ".join(f"nn.{cls.__name__}" for cls in MODULE_ACTIVATIONS)
    return (f"nearopt recognises {names}; for another activation (erf has no nn module) give activation= a nearopt name "
            "or Activation that computes it; dropout and normalisation layers are not modelled")


def _flatten(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of a (possibly nested) ``nn.Sequential``, with their dotted names."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            out.extend((f"{name}.{sub}", leaf) for sub, leaf in _flatten(child))
        else:
            out.append((name, child))
    return out


def _linear(name: str, module: nn.Linear) -> Layer:
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    state = {f"{name}.weight": weight} | ({} if bias is None else {f"{name}.bias": bias})
    return state_layers(state, f"nn.Linear {name!r}")[0]._replace(name=name)


def _split(module: nn.Module) -> tuple[list[Layer], list[list[tuple[str, nn.Module]]]]:
    """The Linear layers of ``module`` and the modules in each gap between them (``len(layers) - 1`` gaps).

    Modules before the first or after the last Linear layer are refused, except ``nn.Identity``.
    """
    if isinstance(module, nn.Linear):
        return [_linear("0", module)], []
    if not isinstance(module, nn.Sequential):
        raise NearoptError(f"from_torch reads an nn.Sequential or nn.Linear, got {type(module).__name__}: its forward order is unknown to nearopt; "
                           "pass model.state_dict() with activation= instead")
    layers: list[Layer] = []
    gaps: list[list[tuple[str, nn.Module]]] = [[]]
    for name, leaf in _flatten(module):
        if isinstance(leaf, nn.Linear):
            layers.append(_linear(name, leaf))
            gaps.append([])
        elif not isinstance(leaf, nn.Identity):
            gaps[-1].append((name, leaf))
    if not layers:
        raise NearoptError(f"the module has no nn.Linear layer; {LAYERS_SCOPE}")
    for edge, where in ((gaps[0], "before the first"), (gaps[-1], "after the last")):
        if edge:
            raise NearoptError(f"module {edge[0][0]!r} (nn.{type(edge[0][1]).__name__}) comes {where} Linear layer; {LAYERS_SCOPE}")
    for prev, nxt in zip(layers[:-1], layers[1:], strict=True):
        if nxt.weight.shape[1] != prev.weight.shape[0]:
            raise NearoptError(f"nn.Linear {nxt.name!r} takes {nxt.weight.shape[1]} inputs but {prev.name!r} gives {prev.weight.shape[0]}")
    return layers, gaps[1:-1]


def _checked(activation: str | Activation, gap: list[tuple[str, nn.Module]]) -> Activation:
    """``activation``, once it computes what the module in ``gap`` (none: the identity) computes on ``[-4, 4]``."""
    act = get_activation(activation)
    what = f"module {gap[0][0]!r} (nn.{type(gap[0][1]).__name__})" if gap else "the module (no activation between its layers: linear)"
    try:
        with torch.no_grad():
            expected = gap[0][1](_PROBE.clone()).to(torch.float64) if gap else _PROBE
    except Exception as exc:  # a user's module: any failure is one line
        raise NearoptError(f"cannot evaluate {what} on a float64 tensor to compare it with activation {act.name!r}: {type(exc).__name__}: {exc}") from None
    got = act(_PROBE.clone()).detach()
    if expected.shape != got.shape or not torch.all(torch.abs(expected - got) <= _PROBE_TOL * (1.0 + torch.abs(got))):
        raise NearoptError(f"activation {act.name!r} differs from {what} on [-4, 4]; give the activation the module computes "
                           "(or build the network and change it with net.with_activation(...))")
    return act


def _gap_activation(gap: list[tuple[str, nn.Module]], activation: str | Activation | None) -> Activation:
    """The activation between two Linear layers: the argument (checked against the module) or the module's own."""
    if len(gap) > 1:
        names = ", ".join(f"{n!r} (nn.{type(m).__name__})" for n, m in gap)
        raise NearoptError(f"modules {names} lie between the two Linear layers: nearopt models one activation there; {_modelled()}")
    if gap and isinstance(gap[0][1], _NOT_ACTIVATIONS):
        raise NearoptError(f"module {gap[0][0]!r} (nn.{type(gap[0][1]).__name__}) is a dropout or normalisation layer, which nearopt does not model; "
                           f"{LAYERS_SCOPE}")
    if activation is not None:
        return _checked(activation, gap)
    if not gap:
        return get_activation("linear")
    name, leaf = gap[0]
    known = MODULE_ACTIVATIONS.get(type(leaf))
    if known is None:
        raise NearoptError(f"module {name!r} (nn.{type(leaf).__name__}) is not an activation nearopt models: {_modelled()}")
    return get_activation(known)


def _from_module(module: nn.Module, activation: str | Activation | None) -> TwoLayerNet | DeepLinearNet:
    layers, gaps = _split(module)
    if len(layers) == 2:
        arrays = layer_arrays(layers, "the module")
        return TwoLayerNet(arrays["W1"], arrays["W2"], _gap_activation(gaps[0], activation), arrays.get("b1"), arrays.get("b2"))
    between = [f"{n!r} (nn.{type(m).__name__})" for gap in gaps for n, m in gap]
    if between:
        raise NearoptError(f"a stack of {len(layers)} Linear layers with modules between them ({', '.join(between)}): {LAYERS_SCOPE}")
    return _deep(layer_arrays(layers, "the module"), activation, len(layers))


def _deep(arrays: dict[str, np.ndarray], activation: str | Activation | None, depth: int) -> DeepLinearNet:
    if activation is not None and get_activation(activation).name != get_activation("linear").name:
        raise NearoptError(f"{depth} bias-free Linear layer(s) form a deep linear network, which has no activation; "
                           f"got activation {get_activation(activation).name!r} (it applies to two layers only)")
    return DeepLinearNet(tuple(arrays[f"W{ell}"] for ell in range(1, depth + 1)))


def _from_state(state: Mapping[str, Any], activation: str | Activation | None, where: str) -> TwoLayerNet | DeepLinearNet:
    layers = state_layers(state, where)
    arrays = layer_arrays(layers, where)
    if len(layers) != 2:
        return _deep(arrays, activation, len(layers))
    if activation is None:
        raise NearoptError(f"{where} holds two Linear layers but no activation (a state dict records none): give activation= "
                           "(e.g. 'tanh', 'erf', or 'linear')")
    return TwoLayerNet(arrays["W1"], arrays["W2"], get_activation(activation), arrays.get("b1"), arrays.get("b2"))


def from_torch(module_or_state_dict: nn.Module | Mapping[str, Any], activation: str | Activation | None = None) -> TwoLayerNet | DeepLinearNet:
    """The nearopt network of a PyTorch module or state dict.

    Parameters
    ----------
    module_or_state_dict : nn.Sequential, nn.Linear or mapping of names to tensors
        ``nn.Sequential(nn.Linear(N_i, N_h), ACT, nn.Linear(N_h, M))`` (biases optional, ``ACT``
        optional) gives a :class:`~nearopt.model.network.TwoLayerNet` with ``W1`` ``(N_h, N_i)``,
        ``W2`` ``(M, N_h)`` and the biases it has; ``ACT`` is recognised by the table of
        modules, ``MODULE_ACTIVATIONS`` (``nn.Tanh`` -> tanh, ``nn.ReLU`` -> relu, ``nn.Identity``
        or none -> linear). A stack of bias-free Linear layers with nothing between them (one, or
        three and more) gives a :class:`~nearopt.model.deep_linear.DeepLinearNet`. A state dict
        (``model.state_dict()``) is split into layers by the order and shapes of its entries
        (:func:`nearopt.model.torch_state.state_layers`). Weights become float64.
    activation : str or Activation, optional
        The activation between two layers. Required for a state dict (it records none). For a
        module it replaces the recognised one and must compute what the module computes there
        (compared on ``[-4, 4]`` to ``1e-6`` relative): the way to load an erf network, whose
        activation is a custom module. A deep linear network takes none (or ``"linear"``).

    Raises
    ------
    NearoptError
        One line for anything else: an activation nearopt does not model (``nn.GELU``,
        ``nn.Sigmoid``, a custom module without ``activation=``), dropout or normalisation
        layers, activations or biases in a stack of more than two layers, shapes that do not
        chain, NaN or infinite weights.
    """
    if isinstance(module_or_state_dict, nn.Module):
        return _from_module(module_or_state_dict, activation)
    if isinstance(module_or_state_dict, Mapping):
        return _from_state(module_or_state_dict, activation, "state dict")
    raise NearoptError(f"from_torch takes an nn.Sequential or a state dict (model.state_dict()), got {type(module_or_state_dict).__name__}")


def load_torch_file(path: str | os.PathLike, activation: str | Activation | None = None, role: str = "teacher") -> TwoLayerNet | DeepLinearNet:
    """The network of a state dict saved with ``torch.save(model.state_dict(), path)`` (``.pt``/``.pth``).

    Read with ``torch.load(path, map_location="cpu", weights_only=True)``: a file of pickled
    objects (a whole module saved with ``torch.save(model, path)``) is refused, never unpickled.
    ``activation`` as for a state dict in :func:`from_torch` (required for two layers).
    ``role`` names the file in messages (``"teacher"``, ``"student"``).
    """
    path = Path(path)
    what = f"{role} file"
    return _from_state(read_torch_state(path, what), activation, f"{what} {path}")
