"""PyTorch weight files and state dicts read as nearopt's named weight arrays.

A state dict (``model.state_dict()``, an ordered mapping of names to tensors) is read by
the order and shapes of its entries: each 2-D tensor is the weight of the next ``nn.Linear``
layer and a 1-D tensor right after it is that layer's bias. PyTorch stores a Linear layer's
weight as ``(out_features, in_features)``, which is nearopt's convention (``W1`` ``(N_h, N_i)``,
``W2`` ``(M, N_h)``), so no transpose is needed. Two layers become ``{W1, b1?, W2, b2?}`` (a
two-layer weight file, :func:`nearopt.model.io.load_weights`), any other number of bias-free
layers ``{W1, ..., WL}`` (a deep linear weight file, :mod:`nearopt.model.deep_linear`).
Every tensor becomes a float64 array (float32 and half-precision values are exact in float64).

:func:`nearopt.model.io.read_arrays` reads ``.pt``/``.pth`` files through :func:`read_torch_weights`,
so every command that takes a weight file takes these too; :mod:`nearopt.model.torch_io` builds
networks from modules and state dicts in Python.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import NearoptError

__all__ = ["Layer", "layer_arrays", "LAYERS_SCOPE", "read_torch_state", "read_torch_weights", "state_layers", "TORCH_SUFFIXES"]

#: file name endings read as PyTorch files (``torch.save``)
TORCH_SUFFIXES = (".pt", ".pth")
#: what nearopt models, in one line (the end of every refusal of an architecture)
LAYERS_SCOPE = ("nearopt models two Linear layers f(x) = W2 g(W1 x + b1) + b2 (biases optional, any number of outputs) "
                "and stacks of bias-free Linear layers f(x) = W_L ... W_1 x")
#: state-dict names of normalisation layers' running statistics
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_SAVE_HINT = "save the weights with torch.save(model.state_dict(), path)"


class Layer(NamedTuple):
    """One ``nn.Linear`` layer: weight ``(out, in)``, bias ``(out,)`` or ``None``, and the name it came from."""

    weight: np.ndarray
    bias: np.ndarray | None
    name: str


def read_torch_state(path: str | os.PathLike, what: str = "weight file") -> dict[str, torch.Tensor]:
    """The state dict saved in the PyTorch file ``path``, read without unpickling objects.

    ``torch.load(path, map_location="cpu", weights_only=True)``: only tensors and plain
    containers are read, never arbitrary pickled code. A missing file, a file that is not a
    PyTorch file, a pickled module (saved with ``torch.save(model, path)``) and a file holding
    anything but a mapping of names to tensors (a checkpoint with an optimizer, one tensor) are
    each one :class:`NearoptError` line. ``what`` names the file in messages.
    """
    path = Path(path)
    if not path.is_file():
        raise NearoptError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() and _looks_like_torch(path):
            raise NearoptError(f"cannot read {what} {path}: it holds pickled objects (a whole module?) that nearopt does not unpickle; {_SAVE_HINT}") from None
        raise NearoptError(f"cannot read {what} {path}: not a PyTorch file (UnpicklingError)") from None
    except Exception as exc:  # torch raises many kinds (KeyError, RuntimeError, EOFError) on a foreign file
        raise NearoptError(f"cannot read {what} {path}: not a PyTorch file ({exc.__class__.__name__})") from None
    if not isinstance(obj, Mapping) or not obj:
        raise NearoptError(f"{what} {path} holds {_describe(obj)}, not a state dict of tensors; {_SAVE_HINT}")
    other = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise NearoptError(f"{what} {path} is not a state dict of tensors (entries {', '.join(repr(k) for k in other[:4])} are not tensors: a checkpoint?); {_SAVE_HINT}")
    return {str(k): v for k, v in obj.items()}


def _looks_like_torch(path: Path) -> bool:
    """Whether ``path`` is laid out as ``torch.save`` writes: a zip archive, or a pickle (the legacy format)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return "an empty mapping"
    if isinstance(obj, torch.Tensor):
        return f"one tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def _as_array(name: str, value: Any, where: str) -> np.ndarray:
    """``value`` (a tensor or array) as a float64 array; one line unless real floating point and finite."""
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            raise NearoptError(f"{where}: entry {name!r} is {value.dtype} of shape {tuple(value.shape)}, not a layer's weight or bias; {LAYERS_SCOPE}")
        array = value.detach().to("cpu", torch.float64).numpy().copy()
    else:
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise NearoptError(f"{where}: entry {name!r} is {array.dtype} of shape {array.shape}, not a layer's weight or bias; {LAYERS_SCOPE}")
        array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise NearoptError(f"{where}: entry {name!r} contains NaN or infinite values")
    return array


def state_layers(state: Mapping[str, Any], where: str = "state dict") -> list[Layer]:
    """The Linear layers of a state dict, in order: each 2-D entry a weight, a 1-D entry right after it its bias.

    Refused with one line each: running statistics and 1-D weights of normalisation layers,
    a 1-D entry that is not the bias of the weight before it (wrong size, or a second one),
    an entry of another dimension, a weight that does not take the previous layer's outputs
    (shapes must chain: layer ``l + 1`` has as many columns as layer ``l`` has rows), a state
    dict without any weight, non-float or non-finite values. ``where`` names it in messages.
    """
    layers: list[Layer] = []
    for key, value in state.items():
        name = str(key)
        if name.rpartition(".")[2] in _NORM_BUFFERS:
            raise NearoptError(f"{where}: entry {name!r} belongs to a normalisation layer (batch norm), which nearopt does not model; {LAYERS_SCOPE}")
        shape = tuple(value.shape)
        if len(shape) == 2:
            if layers and shape[1] != layers[-1].weight.shape[0]:
                prev = layers[-1]
                raise NearoptError(f"{where}: weight {name!r} of shape {shape} does not take the {prev.weight.shape[0]} outputs of {prev.name!r} "
                                   f"{prev.weight.shape}: shapes must chain (a Linear weight is (out_features, in_features))")
            if min(shape) < 1:
                raise NearoptError(f"{where}: weight {name!r} has an empty shape {shape}")
            layers.append(Layer(_as_array(name, value, where), None, name))
        elif len(shape) == 1:
            if name.endswith("weight"):
                raise NearoptError(f"{where}: entry {name!r} is a 1-D weight (a normalisation layer's scale?), which nearopt does not model; {LAYERS_SCOPE}")
            if not layers or layers[-1].bias is not None:
                raise NearoptError(f"{where}: entry {name!r} of shape {shape} is not the bias of a Linear weight right before it; {LAYERS_SCOPE}")
            prev = layers[-1]
            if shape[0] != prev.weight.shape[0]:
                raise NearoptError(f"{where}: bias {name!r} has {shape[0]} entries but weight {prev.name!r} {prev.weight.shape} has {prev.weight.shape[0]} outputs")
            layers[-1] = prev._replace(bias=_as_array(name, value, where))
        else:
            raise NearoptError(f"{where}: entry {name!r} has shape {shape}: a Linear layer has a 2-D weight and a 1-D bias; {LAYERS_SCOPE}")
    if not layers:
        raise NearoptError(f"{where} holds no Linear weight (no 2-D entry); {LAYERS_SCOPE}")
    return layers


def layer_arrays(layers: list[Layer], where: str = "state dict") -> dict[str, np.ndarray]:
    """nearopt's weight arrays of Linear layers: ``{W1, b1?, W2, b2?}`` for two, ``{W1, ..., WL}`` for any other number.

    Two layers are a two-layer network (the activation between them is not in the arrays);
    one or three and more must be bias-free (a deep linear network): biases there are refused.
    """
    if len(layers) == 2:
        out = {}
        for i, layer in enumerate(layers, start=1):
            out[f"W{i}"] = layer.weight
            if layer.bias is not None:
                out[f"b{i}"] = layer.bias
        return out
    with_bias = [layer.name for layer in layers if layer.bias is not None]
    if with_bias:
        raise NearoptError(f"{where}: {len(layers)} Linear layer(s) with biases ({', '.join(repr(n) for n in with_bias)}): {LAYERS_SCOPE}")
    return {f"W{i}": layer.weight for i, layer in enumerate(layers, start=1)}


def read_torch_weights(path: str | os.PathLike, what: str = "weight file") -> dict[str, np.ndarray]:
    """The weight arrays (:func:`layer_arrays`) of the state dict in the PyTorch file ``path``."""
    where = f"{what} {path}"
    return layer_arrays(state_layers(read_torch_state(path, what), where), where)
