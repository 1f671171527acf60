"""Real inputs from data sets that ship inside installed packages (no downloads).

The data sets are scikit-learn's bundled ones (``pip install 'nearopt[data]'``):
``digits`` (1797 8x8 images, 64 pixels), ``breast-cancer`` (569 x 30), ``wine``
(178 x 13), ``diabetes`` (442 x 10) and ``iris`` (150 x 4). Only the feature
matrix is used: the labels come from a teacher network, as everywhere in nearopt.

:func:`load_inputs` returns ``X`` ``(N, N_i)`` prepared as

1. constant features dropped (``digits`` has 3 pixels that are 0 in every image);
2. standardised: each feature centred and scaled to unit variance (population
   ``1/N`` convention, so ``X^T X / N`` has unit diagonal);
3. optionally projected on the leading ``N_i`` principal components (``n_inputs``),
   keeping their unequal variances (the data's own anisotropy), then scaled
   (``normalise``): ``"trace"`` (default) so that ``tr(X^T X / N) = N_i`` (mean
   variance 1, the scale the default teacher ``W1 ~ N(0, 1/N_i)`` expects),
   ``"whiten"`` so that ``X^T X / N = I`` exactly, ``"none"`` as projected.

The Gaussian-equivalent law of the prepared data is
:meth:`nearopt.model.problem.GaussianInputs.from_data` (``Sigma = X^T X / N``).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..errors import NearoptError, require_positive_int

__all__ = ["dataset_names", "DATASETS", "describe", "load_inputs", "NORMALISATIONS", "raw_features", "standardise"]

#: name -> scikit-learn loader in ``sklearn.datasets`` (all bundled with the package)
DATASETS = {
    "digits": "load_digits",
    "breast-cancer": "load_breast_cancer",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
    "iris": "load_iris",
}
NORMALISATIONS = ("trace", "whiten", "none")


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_inputs` (and ``nearopt spectrum --inputs NAME``)."""
    return sorted(DATASETS)


def raw_features(name: str) -> np.ndarray:
    """The data set's feature matrix ``(N, D)`` float64, as shipped."""
    if name not in DATASETS:
        raise NearoptError(f"unknown data set {name!r}; choose from {', '.join(dataset_names())}")
    # Imported here, not at module level: scikit-learn is an optional extra and its
    # import costs about a second, which every `nearopt` command would otherwise pay.
    try:
        module = importlib.import_module("sklearn.datasets")
    except ImportError:
        raise NearoptError(f"the bundled data set {name!r} needs scikit-learn: pip install 'nearopt[data]'") from None
    return np.asarray(getattr(module, DATASETS[name])().data, dtype=np.float64)


def standardise(F: np.ndarray) -> np.ndarray:
    """Drop constant columns of ``F`` ``(N, D)``, centre the rest and scale them to unit variance."""
    std = F.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(F).max()))
    Fk = F[:, keep]
    return (Fk - Fk.mean(axis=0)) / std[keep]


def load_inputs(name: str, n_inputs: int | None = None, *, normalise: str = "trace", max_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Real inputs ``X`` ``(N, N_i)`` from a bundled data set (module docstring for the steps).

    Parameters
    ----------
    name : str
        One of :func:`dataset_names`.
    n_inputs : int, optional
        Project on this many leading principal components (``<=`` the number of
        non-constant features); default: all standardised features.
    normalise : {"trace", "whiten", "none"}
        Scaling after the projection (ignored without ``n_inputs``: the
        standardised features already have ``tr(Sigma) = N_i``).
    max_samples : int, optional
        Keep a random subset of this many rows (drawn with ``seed``), taken
        before standardising.
    """
    if normalise not in NORMALISATIONS:
        raise NearoptError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    F = raw_features(name)
    if max_samples is not None:
        m = require_positive_int(max_samples, "max_samples")
        if m < F.shape[0]:
            F = F[np.sort(np.random.default_rng([int(seed), 0xDA]).choice(F.shape[0], m, replace=False))]
    X = standardise(F)
    if n_inputs is None:
        return X
    d = require_positive_int(n_inputs, "N_i")
    if d > X.shape[1]:
        raise NearoptError(f"data set {name!r} has {X.shape[1]} non-constant features: N_i must be at most {X.shape[1]}, got {d}")
    # principal directions from the SVD of the centred data (no covariance matrix formed)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    Z = X @ Vt[:d].T  # (N, d), column variances s_k^2 / N, descending
    Z -= Z.mean(axis=0)  # exact zero mean after rounding
    if normalise == "whiten":
        Z /= Z.std(axis=0)
    elif normalise == "trace":
        Z *= np.sqrt(d / np.sum(Z**2) * Z.shape[0])
    return Z


def describe(name: str, X: np.ndarray) -> dict[str, Any]:
    """Sizes and the second-moment spectrum of prepared inputs ``X`` (JSON-able)."""
    lam = np.linalg.eigvalsh(X.T @ X / X.shape[0])
    return {"dataset": name, "samples": int(X.shape[0]), "n_inputs": int(X.shape[1]),
            "second_moment_eigenvalues": [float(lam[0]), float(lam[-1])], "second_moment_trace": float(lam.sum())}
