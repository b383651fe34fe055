"""What a task names instead of holding objects: a model (:class:`ModelRef`) and a data
file (:class:`DataRef`), by spec string and path, each pinned by a content digest.

A reference is a frozen, JSON-serializable value. The digest is computed once, where
the task is created, and checked again where it runs, so a worker never certifies a
model other than the one the task's key names:

``weights:sha256:<hex>``
    SHA-256 of the weights file's bytes (the model itself is not built to make the key).
``params:<hex>``
    :func:`certcompress.digest.parameter_digest` of the model built by the factory with
    no weights file, under ``torch.manual_seed(init_seed)`` (so random-init models such as
    ``torchvision:resnet18`` are reproducible on every worker).

Paths are made absolute at construction, so a worker with another working directory
reads the same files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, ModelLoadError
from ..loading import is_archive_spec, load_module
from . import _check

__all__ = ["ModelRef", "DataRef", "file_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _py_file(spec: str) -> tuple[str, str] | None:
    """``(file, factory)`` for a ``FILE.py:FACTORY`` spec, else None."""
    left, sep, attr = spec.rpartition(":")
    return (left, attr) if sep and left.endswith(".py") and attr else None


@dataclass(frozen=True)
class ModelRef:
    """A model by spec (any form :func:`certcompress.loading.load_model` reads), an
    optional state-dict file, the seed its factory runs under, the plugins to load
    first (``package.module:Attr``) and its digest (computed when empty)."""

    spec: str
    weights: str | None = None
    init_seed: int = 0
    plugins: tuple[str, ...] = ()
    digest: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ConfigurationError(f"model spec must be a non-empty string, got {self.spec!r}")
        spec = self.spec.strip()
        py = _py_file(spec)
        if py is not None:
            spec = f"{os.path.abspath(py[0])}:{py[1]}"
        object.__setattr__(self, "spec", spec)
        if is_archive_spec(spec):  # inspected before refusal, never loaded
            load_module(spec, needed_by="a zoo or sweep task")
        if self.weights is not None:
            if not isinstance(self.weights, (str, os.PathLike)) or not str(self.weights):
                raise ConfigurationError(f"weights must be a file path, got {self.weights!r}")
            object.__setattr__(self, "weights", os.path.abspath(str(self.weights)))
        if isinstance(self.init_seed, bool) or not isinstance(self.init_seed, int):
            raise ConfigurationError(f"init_seed must be an integer, got {self.init_seed!r}")
        if isinstance(self.plugins, str) or not all(isinstance(p, str) and p
                                                    for p in self.plugins):
            raise ConfigurationError(f"plugins must be a list of 'package.module:Attr' "
                                     f"strings, got {self.plugins!r}")
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if not isinstance(self.digest, str):
            raise ConfigurationError(f"digest must be a string, got {self.digest!r}")
        if not self.digest:
            object.__setattr__(self, "digest", self._compute_digest())

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, str]:
        """What the task key hashes: the architecture (a ``FILE.py`` spec by file name and
        source hash, so moving the file keeps the key and editing it changes it) and the
        weights digest. Paths and plugins are not part of it."""
        py = _py_file(self.spec)
        arch = self.spec
        if py is not None:
            try:
                source = file_sha256(py[0])[:16]
            except OSError as exc:
                raise ModelLoadError(f"model file '{py[0]}' cannot be read: "
                                     f"{exc.strerror or exc}") from None
            arch = f"{Path(py[0]).name}@{source}:{py[1]}"
        return {"model": arch, "digest": self.digest}

    @property
    def display(self) -> str:
        """The spec as shown in result rows (a ``FILE.py`` path by its file name)."""
        py = _py_file(self.spec)
        return f"{Path(py[0]).name}:{py[1]}" if py is not None else self.spec

    # ------------------------------------------------------------------ loading
    def _build(self) -> Any:
        import torch

        from ..capture import plugin_manager
        from ..loading import load_model

        pm = plugin_manager()
        for spec in self.plugins:
            if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
                pm.load_path(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return load_model(self.spec, self.weights)

    def _compute_digest(self) -> str:
        if self.weights is not None:
            try:
                return f"weights:sha256:{file_sha256(self.weights)}"
            except OSError as exc:
                raise ModelLoadError(f"weights file '{self.weights}' cannot be read: "
                                     f"{exc.strerror or exc}") from None
        from ..digest import parameter_digest

        return f"params:{parameter_digest(self._build())}"

    def load(self) -> Any:
        """Build the model (eval mode) and check it is the one the digest names; raises
        :class:`ModelLoadError` if the weights file changed or the factory is not
        deterministic under ``torch.manual_seed(init_seed)``."""
        if self.weights is not None:
            found = self._compute_digest()
            if found != self.digest:
                raise ModelLoadError(
                    f"weights file '{self.weights}' changed since the task was created "
                    f"({found} != {self.digest}); create the task again")
            return self._build()
        from ..digest import parameter_digest

        model = self._build()
        found = f"params:{parameter_digest(model)}"
        if found != self.digest:
            raise ModelLoadError(
                f"model '{self.display}' built here has parameter digest {found}, the task "
                f"was created for {self.digest}: its factory is not deterministic under "
                f"torch.manual_seed({self.init_seed}) or its code changed; save the weights "
                "(torch.save(model.state_dict(), path)) and name them in the task")
        return model

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "weights": self.weights, "init_seed": self.init_seed,
                "plugins": list(self.plugins), "digest": self.digest}

    @classmethod
    def from_dict(cls, data: object, what: str = "model") -> ModelRef:
        d = _check.fields(data, ("spec", "weights", "init_seed", "plugins", "digest"), what)
        if "spec" not in d:
            raise ConfigurationError(f"{what}: field 'spec' is missing")
        try:
            return cls(d["spec"], d.get("weights"), d.get("init_seed", 0),
                       tuple(d.get("plugins", ())), d.get("digest", ""))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None

    def relocated(self, paths: Mapping[str, str]) -> ModelRef:
        """A copy whose files are read from ``paths`` (old path -> new path), digest
        unchanged: how files shipped through an object store are found on a worker."""
        spec = self.spec
        py = _py_file(spec)
        if py is not None and py[0] in paths:
            spec = f"{paths[py[0]]}:{py[1]}"
        weights = paths.get(self.weights, self.weights) if self.weights else None
        return replace(self, spec=spec, weights=weights)

    def files(self) -> list[str]:
        """The local files this reference reads (factory source, weights)."""
        py = _py_file(self.spec)
        return [f for f in (py[0] if py else None, self.weights) if f is not None]


@dataclass(frozen=True)
class DataRef:
    """A data file (reference inputs: ``.npz`` with ``x`` and optionally integer labels
    ``y``, ``.npy`` or ``.pt``) by path, pinned by the SHA-256 of its bytes."""

    path: str
    digest: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ConfigurationError(f"data path must be a file path, got {self.path!r}")
        object.__setattr__(self, "path", os.path.abspath(str(self.path)))
        if not self.digest:
            object.__setattr__(self, "digest", self._compute_digest())

    def _compute_digest(self) -> str:
        try:
            return f"sha256:{file_sha256(self.path)}"
        except OSError as exc:
            raise ConfigurationError(f"data file '{self.path}' cannot be read: "
                                     f"{exc.strerror or exc}") from None

    def _check(self) -> None:
        found = self._compute_digest()
        if found != self.digest:
            raise ConfigurationError(f"data file '{self.path}' changed since the task was "
                                     f"created ({found} != {self.digest})")

    def inputs(self, input_shape: tuple[int, ...]) -> Any:
        """The inputs as a float64 tensor ``(n, ...)`` for ``input_shape``."""
        from ..loading import load_reference_inputs

        self._check()
        return load_reference_inputs(self.path, input_shape)

    def labels(self) -> Any:
        """Integer labels: the array ``y`` of an ``.npz`` file, or None."""
        if not self.path.lower().endswith(".npz"):
            return None
        import numpy as np
        import torch

        with np.load(self.path, allow_pickle=False) as z:
            if "y" not in z.files:
                return None
            y = np.asarray(z["y"])
        if y.dtype.kind not in "iu":
            raise ConfigurationError(f"labels 'y' in '{self.path}' have dtype {y.dtype}; "
                                     "expected integers")
        return torch.from_numpy(y.astype(np.int64))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest}

    @classmethod
    def from_dict(cls, data: object, what: str = "reference") -> DataRef:
        if isinstance(data, (str, os.PathLike)):
            return cls(str(data))
        d = _check.fields(data, ("path", "digest"), what)
        if "path" not in d:
            raise ConfigurationError(f"{what}: field 'path' is missing")
        return cls(d["path"], d.get("digest", ""))

    def relocated(self, paths: Mapping[str, str]) -> DataRef:
        return replace(self, path=paths.get(self.path, self.path))

    def files(self) -> list[str]:
        return [self.path]
