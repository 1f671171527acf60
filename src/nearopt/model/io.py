"""Atomic file writing and validated loading of teacher weights and inputs.

Every writer goes through a temporary file in the target directory followed by
``os.replace``, so a reader never sees a half-written file and an interrupted
run never destroys an earlier complete one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NearoptError
from .torch_state import TORCH_SUFFIXES, read_torch_weights

__all__ = [
    "atomic_path", "check_output_path", "load_inputs", "load_real_array", "load_weights", "MODEL_SCOPE", "read_arrays", "REQUIRED_WEIGHT_KEYS", "NON_FINITE_KEY", "POINT_METADATA_KEYS",
    "read_json", "restore_non_finite", "saved_activation", "strict_jsonable", "to_json", "WEIGHT_KEYS", "write_json", "write_npz", "write_text"
]

_UMASK = os.umask(0)
os.umask(_UMASK)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_output_path(path: str | os.PathLike, *, directory: bool = False, suffix: str | None = None) -> Path:
    """Check, before any computation, that ``path`` can be written; return it as a ``Path``.

    A file target must not be a folder; a folder target (``directory=True``)
    must not be a file; the closest existing ancestor must be a writable folder
    (so the missing parents can be created), not a file. ``suffix`` (``".npz"``)
    is required of file names when given. Raises :class:`NearoptError` with one
    line naming the problem. Nothing is created.
    """
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", "..") and not directory:
        raise NearoptError(f"output path {str(path)!r} is not a file name")
    if suffix is not None and path.suffix != suffix:
        raise NearoptError(f"output file must end in {suffix}: {path}")
    if path.exists():
        if directory and not path.is_dir():
            raise NearoptError(f"output folder {path} is a file")
        if not directory and path.is_dir():
            raise NearoptError(f"output file {path} is a folder")
    parent = path if directory else path.parent
    existing = _nearest_existing(parent.resolve() if not parent.is_absolute() else parent)
    if not existing.is_dir():
        raise NearoptError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NearoptError(f"cannot write {path}: folder {existing} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    The temporary file keeps ``path``'s suffix so that libraries choosing a
    format by extension (matplotlib, ``np.savez``) behave as for ``path``.
    Failures of the file system (no permission, a folder in the way, disk
    full) become one-line :class:`NearoptError`; the previous file is kept.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as exc:
        raise NearoptError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        raise NearoptError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


#: top-level key of strict JSON that lists the non-finite numbers written as ``null``
NON_FINITE_KEY = "non_finite"
_NON_FINITE_NAMES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _pointer(path: tuple[str, ...]) -> str:
    """RFC 6901 JSON Pointer of ``path`` (``("late_time", "rate_exact")`` -> ``/late_time/rate_exact``)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _non_finite_name(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _strict(obj: Any, path: tuple[str, ...], found: dict[str, str]) -> Any:
    """A copy of ``obj`` with plain containers and every non-finite float replaced by ``None``, recorded in ``found``."""
    if isinstance(obj, dict):
        return {k: _strict(v, (*path, str(k)), found) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biu" or obj.dtype.kind == "f" and bool(np.all(np.isfinite(obj))):
            return obj.tolist()  # the common case, without a walk in Python
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_strict(v, (*path, str(i)), found) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        found[_pointer(path)] = _non_finite_name(obj)
        return None
    return obj


def strict_jsonable(data: Any) -> Any:
    """``data`` made valid for strict JSON parsers (RFC 8259 has no NaN or Infinity).

    Every non-finite float becomes ``null``; for a dict ``data``, a top-level
    ``"non_finite"`` object maps the JSON Pointer of each replaced value to what
    it was (``{"/late_time/rate_exact": "inf", "/loss/0/3": "nan"}``), so a
    ``null`` is never ambiguous and :func:`restore_non_finite` can undo it. The
    key is absent when every number is finite. (A non-dict top level gets the
    ``null`` values only.)
    """
    found: dict[str, str] = {}
    clean = _strict(data, (), found)
    if found and isinstance(clean, dict):
        previous = clean.get(NON_FINITE_KEY)
        clean[NON_FINITE_KEY] = {**previous, **found} if isinstance(previous, dict) else found
    return clean


def restore_non_finite(data: Any) -> Any:
    """Inverse of :func:`strict_jsonable` on parsed JSON: put the listed NaN/infinities back, drop the list."""
    if not isinstance(data, dict) or not isinstance(data.get(NON_FINITE_KEY), dict):
        return data
    listed = data.pop(NON_FINITE_KEY)
    for pointer, name in listed.items():
        keys = [k.replace("~1", "/").replace("~0", "~") for k in pointer.split("/")[1:]]
        node = data
        try:
            for k in keys[:-1]:
                node = node[int(k)] if isinstance(node, list) else node[k]
            last = keys[-1]
            if isinstance(node, list):
                node[int(last)] = _NON_FINITE_NAMES[name]
            else:
                node[last] = _NON_FINITE_NAMES[name]
        except (KeyError, IndexError, ValueError, TypeError):
            raise NearoptError(f"JSON {NON_FINITE_KEY!r} entry {pointer!r}: {name!r} does not match the data") from None
    return data


def to_json(data: Any, indent: int | None = 2, *, strict: bool = False) -> str:
    """Serialise ``data`` (NumPy arrays and scalars allowed) to JSON text.

    ``strict=True``: valid for strict parsers (:func:`strict_jsonable`: non-finite
    numbers as ``null``, listed under ``"non_finite"``); what every file and
    every printed result of nearopt uses. ``strict=False`` keeps Python's
    ``NaN``/``Infinity`` tokens, for exact in-memory round trips
    (``json.loads(to_json(x))``) such as cache keys.
    """
    if strict:
        return json.dumps(strict_jsonable(data), indent=indent, default=_json_default, allow_nan=False)
    return json.dumps(data, indent=indent, default=_json_default, allow_nan=True)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict JSON to ``path`` atomically (:func:`to_json` with ``strict=True``).

    Read it back with :func:`read_json` to recover the non-finite values.
    """
    return write_text(path, to_json(data, strict=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file written by :func:`write_json`, with its non-finite numbers restored.

    Raises ``OSError`` or ``ValueError`` (``json.JSONDecodeError``) as :func:`json.loads` does.
    """
    return restore_non_finite(json.loads(Path(path).read_text(encoding="utf-8")))


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write arrays to an ``.npz`` file atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise NearoptError(f"output file must end in .npz: {path}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    return path


def _check_finite(name: str, array: np.ndarray, source: str) -> None:
    if not np.all(np.isfinite(array)):
        raise NearoptError(f"{source}: {name} contains NaN or infinite values")


#: arrays of a weight file, in parameter order: the layers of ``f(x) = W2 g(W1 x + b1) + b2`` (biases optional)
WEIGHT_KEYS = ("W1", "b1", "W2", "b2")
#: the arrays every weight file holds
REQUIRED_WEIGHT_KEYS = ("W1", "W2")
#: what ``nearopt critical --save-point`` stores beside ``W1``, ``W2`` (a point file is also a student file)
POINT_METADATA_KEYS = ("teacher_W1", "teacher_b1", "teacher_W2", "teacher_b2", "teacher_activation", "eigenvalues", "loss", "gradient_norm", "index", "zero_modes",
                       "classification", "activation", "trained")
MODEL_SCOPE = "nearopt models two layers f(x) = W2 g(W1 x + b1) + b2 (biases optional, any number of outputs)"


#: entries of a saved point that hold one text value, and the integer and real ones
_TEXT_KEYS = ("activation", "teacher_activation", "trained", "classification")
_INTEGER_KEYS = ("index", "zero_modes")
_SCALAR_KEYS = ("loss", "gradient_norm")
#: the parameter blocks a problem may train (``Problem.trained``), as a saved point names them
TRAINED_BLOCKS = ("both", "first", "second")


def _check_point_metadata(arrays: dict[str, np.ndarray], where: str) -> None:
    """Refuse metadata of a saved point (:data:`POINT_METADATA_KEYS`) of the wrong kind: one line, not a ``KeyError`` later.

    ``trained`` must name one of :data:`TRAINED_BLOCKS` (what :meth:`CriticalPoint.save` writes).
    """
    for key in _TEXT_KEYS:
        text = arrays.get(key)
        if text is not None and (text.ndim != 0 or text.dtype.kind != "U" or not str(text).strip()):
            raise NearoptError(f"{where}: entry {key!r} must be one text value, got {text.dtype} of shape {text.shape}")
    if "trained" in arrays and str(arrays["trained"]) not in TRAINED_BLOCKS and not set(str(arrays["trained"]).split(",")) <= set(WEIGHT_KEYS):
        raise NearoptError(f"{where}: entry 'trained' is {str(arrays['trained'])!r}; it must name the trained blocks: {', '.join(TRAINED_BLOCKS)}")
    for key in (*_INTEGER_KEYS, *_SCALAR_KEYS, "eigenvalues", "teacher_W1", "teacher_b1", "teacher_W2", "teacher_b2"):
        a = arrays.get(key)
        if a is None:
            continue
        kinds = "iu" if key in _INTEGER_KEYS else "iuf"
        shape_ok = a.ndim == 0 if key in (*_INTEGER_KEYS, *_SCALAR_KEYS) else a.ndim == 1 if key == "eigenvalues" else True
        if a.dtype.kind not in kinds or not shape_ok:
            kind = "an integer" if key in _INTEGER_KEYS else "one real number" if key in _SCALAR_KEYS else "a real array"
            raise NearoptError(f"{where}: entry {key!r} must be {kind}, got {a.dtype} of shape {a.shape}")


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (no pickles); one line if it is missing or unreadable."""
    if not path.is_file():
        raise NearoptError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:
        raise NearoptError(f"cannot read {what} {path}: not a valid .npz ({exc.__class__.__name__})") from None


def read_arrays(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """The named arrays of a weight file: an ``.npz`` (no pickles), or a PyTorch ``.pt``/``.pth`` state dict.

    A PyTorch file gives its Linear layers as ``W1, b1, W2, b2`` (two layers) or ``W1 ... WL``
    (bias-free stacks), float64 (:func:`nearopt.model.torch_state.read_torch_weights`). ``what``
    names the file in messages (``"teacher file"``); a missing or unreadable file is one line.
    """
    path = Path(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return read_torch_weights(path, what)
    return _read_npz(path, what)


def saved_activation(path: str | os.PathLike, role: str = "student") -> str | None:
    """The activation a weight file records (a point saved by ``nearopt critical --save-point``), or ``None``.

    The file's metadata is validated as by :func:`load_weights`.
    """
    path = Path(path)
    arrays = read_arrays(path, f"{role} file")
    _check_point_metadata(arrays, f"{role} file {path}")
    return str(arrays["activation"]) if "activation" in arrays else None


def load_weights(path: str | os.PathLike, role: str = "teacher") -> dict[str, np.ndarray]:
    """Load and validate the weights of a two-layer network from an ``.npz`` or PyTorch ``.pt``/``.pth`` file (:func:`read_arrays`).

    Returns the float64 arrays ``W1`` ``(N_h, N_i)``, ``W2`` ``(M, N_h)`` and, when the file
    holds them, the biases ``b1`` ``(N_h,)`` and ``b2`` ``(M,)`` (:data:`WEIGHT_KEYS`, the
    parameter order of :meth:`nearopt.model.network.TwoLayerNet.parameters`). ``W2`` may be
    stored with shape ``(N_h,)`` for one output. Arrays other than these (and the metadata of
    a saved critical point, :data:`POINT_METADATA_KEYS`) are refused: a third layer would
    otherwise be dropped without a word; metadata of the wrong kind (a ``trained`` entry that
    names no block, an array where one value belongs) is refused too. ``role`` names the file
    in messages (``"teacher"``, ``"student"``).
    """
    path = Path(path)
    what = f"{role} file"
    arrays = read_arrays(path, what)
    missing = [k for k in REQUIRED_WEIGHT_KEYS if k not in arrays]
    if missing:
        raise NearoptError(f"{what} {path} lacks array(s) {', '.join(missing)} (has: {', '.join(arrays) or 'none'})")
    unknown = [k for k in arrays if k not in WEIGHT_KEYS and k not in POINT_METADATA_KEYS]
    if unknown and all(k[:1] == "W" and k[1:].isdigit() for k in unknown):
        raise NearoptError(f"{what} {path} holds a deep linear network ({', '.join(sorted(arrays))}): this command takes two-layer "
                           f"networks; deep linear networks are answered by `nearopt spectrum` and `nearopt rank` and, for GD, "
                           f"by nearopt.dynamics.deep_linear_gd (docs/deep_linear.md)")
    if unknown:
        raise NearoptError(f"{what} {path} has array(s) {', '.join(unknown)} that nearopt does not model: {MODEL_SCOPE}; "
                           "give W1 (N_h, N_i), W2 (M, N_h) and optionally b1 (N_h,), b2 (M,)")
    _check_point_metadata(arrays, f"{what} {path}")
    out = {k: arrays[k] for k in WEIGHT_KEYS if k in arrays}
    for name, arr in out.items():
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise NearoptError(f"{what} {path}: {name} must be a real numeric array, got dtype {arr.dtype}")
    W1 = out["W1"]
    if W1.ndim != 2 or min(W1.shape) < 1:
        raise NearoptError(f"{what} {path}: W1 must have shape (N_h, N_i) with N_h, N_i >= 1, got {W1.shape}")
    n_h = W1.shape[0]
    W2 = out["W2"]
    if W2.shape == (n_h,):
        W2 = W2.reshape(1, n_h)
    if W2.ndim != 2 or W2.shape[1] != n_h or W2.shape[0] < 1:
        raise NearoptError(f"{what} {path}: W2 must have shape (M, {n_h}) (M outputs) or ({n_h},) to match W1 {W1.shape}, got {out['W2'].shape}")
    out["W2"] = W2
    sizes = {"b1": n_h, "b2": W2.shape[0]}
    for name in ("b1", "b2"):
        if name in out and out[name].size != sizes[name]:
            raise NearoptError(f"{what} {path}: {name} must have {sizes[name]} entries ({'N_h' if name == 'b1' else 'M'}), got shape {out[name].shape}")
    out = {k: a.astype(np.float64).reshape(-1) if k in ("b1", "b2") else a.astype(np.float64) for k, a in out.items()}
    for name, arr in out.items():
        _check_finite(name, arr, f"{what} {path}")
    return out


def load_real_array(path: str | os.PathLike, what: str) -> np.ndarray:
    """A real numeric array from a ``.npy`` file (no pickles); one clear error otherwise.

    ``what`` names the file in messages (``"inputs"``, ``"covariance"``).
    """
    path = Path(path)
    if not path.is_file():
        raise NearoptError(f"{what} file not found: {path}")
    try:
        X = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise NearoptError(f"cannot read {what} file {path}: not a valid .npy ({exc.__class__.__name__})") from None
    if not isinstance(X, np.ndarray) or not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        kind = f"dtype {X.dtype}" if isinstance(X, np.ndarray) else type(X).__name__
        raise NearoptError(f"{what} file {path} must hold a real numeric array, got {kind}")
    return X


def load_inputs(path: str | os.PathLike, n_inputs: int | None = None) -> np.ndarray:
    """Load and validate an ``(N, N_i)`` input array from a ``.npy`` file."""
    path = Path(path)
    X = load_real_array(path, "inputs")
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise NearoptError(f"inputs file {path} must hold an (N, N_i) array with N, N_i >= 1, got shape {X.shape}")
    if n_inputs is not None and X.shape[1] != n_inputs:
        raise NearoptError(f"inputs file {path} has width {X.shape[1]} but the network has N_i = {n_inputs}")
    X = X.astype(np.float64)
    _check_finite("inputs", X, str(path))
    return X
