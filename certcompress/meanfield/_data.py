"""Data for the mean-field experiments: scikit-learn digits (shipped, no download) or arrays."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigurationError

__all__ = ["DataSplit", "load_digits_task", "as_features", "as_targets", "split_arrays",
           "load_npz"]


@dataclass(frozen=True)
class DataSplit:
    """A train/test split. X: (n, p) float64; y: (n,) float64 targets (+-1 for a task)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.X_train.shape[1])


def as_features(X: object, what: str = "X") -> np.ndarray:
    """``X`` (array-like or tensor) as a finite float64 array of shape (n, p)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} must be a numeric array: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ConfigurationError(f"{what} must have shape (n, p) with n, p >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigurationError(f"{what} contains NaN or infinite values")
    return arr


def as_targets(y: object, n: int, what: str = "y") -> np.ndarray:
    """``y`` as a finite float64 vector of length n; labels {0, 1} are mapped to {-1, +1}."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} must be a numeric vector: {exc}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigurationError(f"{what} must have shape ({n},) to match X, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigurationError(f"{what} contains NaN or infinite values")
    values = set(np.unique(arr).tolist())
    if values <= {0.0, 1.0} and len(values) == 2:
        arr = 2.0 * arr - 1.0
    return arr


def _standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return tuple((a - mean) / std for a in (train, *others))


def split_arrays(
    X: object, y: object, *, n_train: int | None = None, test_fraction: float = 0.3,
    seed: int = 0, standardize: bool = True, name: str = "arrays",
) -> DataSplit:
    """Split user arrays X (n, p), y (n,) at random (``seed``) into train and test."""
    Xa = as_features(X)
    ya = as_targets(y, Xa.shape[0])
    n = Xa.shape[0]
    if not 0.0 < test_fraction < 1.0:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_tr = int(round(n * (1.0 - test_fraction))) if n_train is None else n_train
    if not 1 <= n_tr < n:
        raise ConfigurationError(f"n_train must be in [1, {n - 1}] for {n} samples, got {n_tr}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n_tr], perm[n_tr:]
    Xtr, Xte = Xa[tr], Xa[te]
    if standardize:
        Xtr, Xte = _standardize(Xtr, Xte)
    return DataSplit(Xtr, ya[tr], Xte, ya[te], name)


_VS = re.compile(r"^(\d)-vs-(\d)$")
_REST = re.compile(r"^(\d)-vs-rest$")


def load_digits_task(
    task: str = "odd-even", *, n_train: int = 500, n_test: int | None = None, seed: int = 0,
) -> DataSplit:
    """scikit-learn digits (8x8 images, 64 features) as a +-1 regression task.

    ``task``: ``"odd-even"`` (+1 for odd digits), ``"a-vs-b"`` such as ``"3-vs-8"``
    (binary, only those two classes), or ``"k-vs-rest"`` such as ``"0-vs-rest"``
    (one-vs-rest). Features are standardised with the training mean and std.
    ``n_test`` defaults to every remaining sample. Data ship inside scikit-learn.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = np.asarray(digits.data, dtype=np.float64)
    labels = np.asarray(digits.target)
    if task == "odd-even":
        y = np.where(labels % 2 == 1, 1.0, -1.0)
    elif (m := _VS.match(task)) is not None:
        a, b = int(m.group(1)), int(m.group(2))
        if a == b:
            raise ConfigurationError(f"digits task '{task}': the two classes must differ")
        keep = (labels == a) | (labels == b)
        X, labels = X[keep], labels[keep]
        y = np.where(labels == a, 1.0, -1.0)
    elif (m := _REST.match(task)) is not None:
        y = np.where(labels == int(m.group(1)), 1.0, -1.0)
    else:
        raise ConfigurationError(
            f"unknown digits task '{task}'; use 'odd-even', 'a-vs-b' (e.g. '3-vs-8') "
            "or 'k-vs-rest' (e.g. '0-vs-rest')"
        )
    n = X.shape[0]
    if not 1 <= n_train < n:
        raise ConfigurationError(f"digits task '{task}' has {n} samples; n_train must be in [1, {n - 1}], got {n_train}")
    perm = np.random.default_rng(seed).permutation(n)
    tr = perm[:n_train]
    rest = perm[n_train:]
    if n_test is not None:
        if n_test < 1:
            raise ConfigurationError(f"n_test must be >= 1, got {n_test}")
        rest = rest[:n_test]
    Xtr, Xte = _standardize(X[tr], X[rest])
    return DataSplit(Xtr, y[tr], Xte, y[rest], f"digits:{task}")


def load_npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """Arrays of an ``.npz`` file: ``(X_train, y_train, X_test, y_test)`` when it holds
    those four, else ``(X, y)``; no pickles are loaded."""
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"data: no such file '{p}' (use 'digits' or an .npz file)")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if {"X_train", "y_train", "X_test", "y_test"} <= keys:
                return (z["X_train"], z["y_train"], z["X_test"], z["y_test"])
            if {"X", "y"} <= keys:
                return (z["X"], z["y"])
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"data: cannot read '{p}' as .npz: {exc}") from None
    raise ConfigurationError(f"data: '{p}' must hold arrays X, y or X_train, y_train, "
                             f"X_test, y_test; it has {sorted(keys)}")
