"""A model-zoo manifest: the models, their input domains and the plans to certify, in
YAML, for ``certcompress zoo certify manifest.yaml``.

.. code-block:: yaml

    sweep: resnet-zoo                 # optional; default: the file's stem
    plugins: [my_pkg.plugin:Plugin]   # optional; loaded where tasks run
    defaults:                         # optional; every model may override these
      input_shape: [1, 3, 64, 64]     # batch first
      radius: 1.0                     # ||x||_inf <= radius (null: the plugin's default)
      # domain: [0, 1]                # or the box LO <= x <= HI ("0:1"), replacing radius
      # methods: [path-metric, bounds]  # the certification tiers (default: certify's)
      search_steps: 20
      search_restarts: 4
      seed: 0
    models:
      - model: torchvision:resnet18   # any load_model spec: PREFIX:NAME, FILE.py:factory
        name: resnet18                # optional, labels the rows
        weights: weights/r18.pt       # optional state dict (paths: relative to this file)
        init_seed: 0                  # seed of the factory when there are no weights
        reference_data: refs.npz      # optional reference inputs (x, optional labels y)
        plans: [...]                  # optional; replaces the top-level plans for it
    plans:
      - pruning: {scope: global, criterion: magnitude, sparsity: [0.3, 0.5]}  # lists expand
      - pruning: plans/layerwise.yaml          # a pruning plan file
      - quantization: {bits: [4, 8], granularity: per-channel}
      - quantization: configs/mixed.json       # a QuantConfig file
      - compressed: {model: small.py:make, weights: small.pt}

``domain`` and ``methods`` are ``certcompress certify --domain LO:HI --method NAME``:
``domain`` is the box ``LO <= x <= HI`` of every feature of the model's input shape,
written ``[LO, HI]`` or ``"LO:HI"`` (quoted: YAML reads an unquoted ``1:2`` as the
number 62), and replaces ``radius``; a model entry that sets either of the two replaces
the defaults' choice, and one place may not set both. ``methods`` is a tier name or a
list of them (the tier registry's, with the manifest's plugins loaded); without it the
tiers are ``certify``'s defaults (path-metric, plus bounds over a domain). The box is the
same as ``--domain``'s, so such a task has the same key as one given ``--domain`` on the
command line. ``zoo certify --radius/--domain/--method`` replace them in every task.

Every (model, plan) pair is one :class:`~certcompress.scale.tasks.CertifyTask`. Errors
name the file and the field (``zoo.yaml: models[1].input_shape must be ...``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._io import read_text_file
from .._schema import check_plain_json, validate
from ..errors import ConfigurationError
from . import _check, _plans
from .refs import DataRef, ModelRef
from .tasks import CertifyTask

__all__ = ["Manifest", "load_manifest", "parse_manifest"]

_TOP = ("sweep", "plugins", "defaults", "models", "plans")
_DEFAULTS = ("input_shape", "radius", "domain", "methods", "search_steps", "search_restarts",
             "seed")
_MODEL = ("model", "name", "weights", "init_seed", "reference_data", "plans", *_DEFAULTS)
_PLAN = ("pruning", "quantization", "compressed")


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the sweep name and one task per (model, plan)."""

    path: str
    sweep: str
    tasks: tuple[CertifyTask, ...]


def _list(v: object, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigurationError(f"{where} must be a list, got {type(v).__name__}")
    return v


class _Parser:
    def __init__(self, base: Path) -> None:
        self.base = base

    def path(self, v: object, where: str) -> str:
        if not isinstance(v, str) or not v:
            raise ConfigurationError(f"{where} must be a file path, got {v!r}")
        p = Path(v).expanduser()
        p = p if p.is_absolute() else self.base / p
        if not p.is_file():
            raise ConfigurationError(f"{where}: file '{p}' does not exist")
        return str(p)

    def spec(self, v: object, where: str) -> str:
        spec = _check.text(v, where).strip()
        left, sep, attr = spec.rpartition(":")
        if sep and left.endswith(".py"):  # FILE.py:factory, relative to the manifest
            return f"{self.path(left, where)}:{attr}"
        return spec

    def model(self, d: Mapping[str, Any], where: str, plugins: tuple[str, ...]) -> ModelRef:
        if "model" not in d:
            raise ConfigurationError(f"{where}.model is missing: a model spec such as "
                                     "torchvision:resnet18 or model.py:make")
        weights = d.get("weights")
        try:
            return ModelRef(self.spec(d["model"], f"{where}.model"),
                            None if weights is None else self.path(weights, f"{where}.weights"),
                            _check.integer(d.get("init_seed", 0), f"{where}.init_seed"), plugins)
        except ConfigurationError as exc:
            msg = str(exc)
            raise ConfigurationError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def plans(self, raw: object, where: str) -> list[tuple[str, object]]:
        """``(field, value)`` per plan after expanding lists of sparsities / bits."""
        out: list[tuple[str, object]] = []
        for i, p in enumerate(_list(raw, where)):
            w = f"{where}[{i}]"
            d = _check.fields(p, _PLAN, w)
            if len(d) != 1:
                raise ConfigurationError(f"{w} must have exactly one of {', '.join(_PLAN)}")
            (kind, value), = d.items()
            w = f"{w}.{kind}"
            if kind == "compressed":
                out.append((kind, value))
            elif isinstance(value, str):
                out.append((kind, self._plan_file(kind, self.path(value, w), w)))
            elif isinstance(value, Mapping):
                key = "sparsity" if kind == "pruning" else "bits"
                many = value.get(key)
                values = many if isinstance(many, list) else [many]
                out.extend((kind, {**value, key: v}) for v in values)
            else:
                raise ConfigurationError(f"{w} must be a mapping or a file path, got "
                                         f"{type(value).__name__}")
        return out

    @staticmethod
    def _plan_file(kind: str, path: str, where: str) -> object:
        if kind == "pruning":
            from ..compress.pruning import PruningPlan

            try:
                return PruningPlan.load(path)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"{where}: cannot read quantization config '{path}': "
                                     f"{exc}") from None


def _box_bounds(v: object, where: str) -> tuple[float, float]:
    """``[LO, HI]`` or ``"LO:HI"`` (as ``--domain`` takes it): finite, ``LO <= HI``."""
    form = (f"{where} must be the box [LO, HI] (or the quoted string 'LO:HI', as --domain "
            "takes it) with finite numbers LO <= HI, e.g. [0, 1]")
    if isinstance(v, str):
        if v.strip().lower() == "data":
            raise ConfigurationError(f"{where}: 'data' (the box of reference data) is for "
                                     "'certcompress certify --domain data'; give the box "
                                     "[LO, HI] here")
        parts: list[Any] = v.split(":")
        try:
            parts = [float(p) for p in parts]
        except ValueError:
            raise ConfigurationError(f"{form}; got {v!r}") from None
    elif isinstance(v, list):
        parts = v
    elif isinstance(v, int) and not isinstance(v, bool):
        raise ConfigurationError(f"{form}; got the number {v} (YAML reads an unquoted LO:HI "
                                 "such as 1:2 as a base-60 number: write [1, 2] or '1:2')")
    else:
        raise ConfigurationError(f"{form}; got {type(v).__name__} {v!r}")
    if len(parts) != 2 or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                  and math.isfinite(p) for p in parts) or parts[0] > parts[1]:
        raise ConfigurationError(f"{form}; got {v!r}")
    return float(parts[0]), float(parts[1])


def _box(bounds: tuple[float, float], shape: tuple[int, ...]) -> Any:
    """The box over every feature, as ``certcompress certify --domain LO:HI`` makes it
    (same description, so the task has the same key)."""
    # certcompress.domain imports torch: only when a manifest gives a domain (as _plans)
    domain_mod = importlib.import_module("certcompress.domain")
    lo, hi = bounds
    return domain_mod.InputDomain.box(lo, hi, shape=shape, description=f"box [{lo:g}, "
                                      f"{hi:g}] for every feature (--domain)")


def _load_plugins(plugins: tuple[str, ...]) -> None:
    """Load the manifest's plugins here too (they may add tiers that ``methods`` names),
    as ``--plugin`` is loaded before ``--method`` is checked."""
    if not plugins:
        return
    # certcompress.capture imports torch: only when a manifest names methods (as _plans)
    manager = importlib.import_module("certcompress.capture").plugin_manager()
    for spec in plugins:
        if not any(lp.source == f"explicit: {spec}" for lp in manager.plugins):
            manager.load_path(spec)


def _settings(defaults: Mapping[str, Any], m: Mapping[str, Any], where: str, name: str,
              plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """The domain, tier and search settings of one model, checked under the field they
    come from (the model's entry or ``defaults``)."""
    def get(k: str) -> tuple[Any, str]:
        if k in m:
            return m[k], f"{where}.{k}"
        return defaults.get(k), f"{name}: defaults.{k}"

    shape, w = get("input_shape")
    if shape is None:
        raise ConfigurationError(f"{where}.input_shape is missing (and not in defaults): "
                                 "the input shape, batch first, e.g. [1, 3, 64, 64]")
    out: dict[str, Any] = {"input_shape": _check.shape(shape, w)}
    # radius or domain: the model's choice when it makes one, else the defaults'
    src, at = (m, f"{where}.") if "radius" in m or "domain" in m else \
        (defaults, f"{name}: defaults.")
    if src.get("radius") is not None and src.get("domain") is not None:
        raise ConfigurationError(f"{at}radius and {at}domain are both given: give either "
                                 "the ball's radius or the box domain, not both")
    out["radius"] = _check.radius(src.get("radius"), f"{at}radius")
    if src.get("domain") is not None:
        out["domain"] = _box(_box_bounds(src["domain"], f"{at}domain"), out["input_shape"])
    methods, w = get("methods")
    if methods is not None:
        if isinstance(methods, str):
            methods = [methods]
        names = _check.names(methods, w)
        if not names:
            raise ConfigurationError(f"{w} is empty: name at least one tier (e.g. "
                                     "path-metric), or leave it out for certify's defaults")
        _load_plugins(plugins)
        out["methods"] = _plans.methods_spec(names, w)
    for k, default, minimum in (("search_steps", 20, 0), ("search_restarts", 4, 1),
                                ("seed", 0, None)):
        v, w = get(k)
        out[k] = default if v is None else _check.integer(v, w, minimum)
    return out


def parse_manifest(data: object, *, base: str | os.PathLike[str] = ".",
                   name: str = "manifest") -> Manifest:
    """Validate a parsed manifest (``base``: the directory relative paths start from;
    ``name``: the file name in messages and the default sweep name)."""
    check_plain_json(data, name, ConfigurationError, string_keys=False)
    top = _check.fields(data, _TOP, name)
    parser = _Parser(Path(base))
    sweep = _check.text(top.get("sweep", Path(name).stem), f"{name}: sweep").strip()
    if not sweep:
        raise ConfigurationError(f"{name}: sweep must be a non-empty name")
    plugins = _check.names(top.get("plugins", []), f"{name}: plugins")
    defaults = dict(_check.fields(top.get("defaults", {}), _DEFAULTS, f"{name}: defaults"))
    if "models" not in top:
        raise ConfigurationError(f"{name}: models is missing: a list of models to certify")
    models = _list(top["models"], f"{name}: models")
    if not models:
        raise ConfigurationError(f"{name}: models is empty")
    shared = parser.plans(top["plans"], f"{name}: plans") if "plans" in top else None
    tasks: list[CertifyTask] = []
    for i, raw in enumerate(models):
        where = f"{name}: models[{i}]"
        m = _check.fields(raw, _MODEL, where)
        plans = parser.plans(m["plans"], f"{where}.plans") if "plans" in m else shared
        if not plans:
            raise ConfigurationError(f"{where} has no plans: give 'plans' for it or at the top")
        settings = _settings(defaults, m, where, name, plugins)
        ref = parser.model(m, where, plugins)
        reference = (DataRef(parser.path(m["reference_data"], f"{where}.reference_data"))
                     if m.get("reference_data") is not None else None)
        label = m.get("name")
        if label is not None:
            _check.text(label, f"{where}.name")
        for j, (kind, value) in enumerate(plans):
            pw = f"{where} plan {j} ({kind})"
            try:
                if kind == "compressed":
                    c = _check.fields(value, ("model", "weights", "init_seed"), f"{pw}")
                    plan: dict[str, Any] = {"compressed": parser.model(c, pw, plugins)}
                else:
                    plan = {kind: value}
                task = CertifyTask(model=ref, reference=reference, **plan, **settings)
            except ConfigurationError as exc:
                msg = str(exc)
                raise ConfigurationError(msg if msg.startswith(name) else f"{pw}: {msg}") from None
            if label:
                task = replace(task, label=f"{label}: {task.compression()}")
            tasks.append(task)
    # the hand checks above give the manifest-specific messages; the shipped schema
    # (schemas/manifest.json) is the last word on the file's structure
    validate(dict(top), "manifest", name, ConfigurationError, yaml=True)
    return Manifest(name, sweep, tuple(tasks))


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a YAML (or JSON) manifest file."""
    import yaml

    p = Path(path)
    text = read_text_file(p, "manifest", ConfigurationError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"manifest '{p}' is not valid YAML: "
                                 f"{str(exc).splitlines()[0]}") from None
    m = parse_manifest(data, base=p.resolve().parent, name=p.name)
    return replace(m, path=str(p))
