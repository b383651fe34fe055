"""A pruning plan: which weights to zero, as a frozen value that round-trips through JSON
or YAML (schema in ``docs/pruning.md``).

Two scopes:

``global``
    ``sparsity`` (a fraction in [0, 1]) of the weights of every non-excluded prunable
    layer, ranked jointly by ``criterion``.
``per-layer``
    ``layers`` maps a layer name to a rule: ``ratio`` (fraction in [0, 1] of that
    layer's weights, ranked within the layer by the rule's ``criterion`` or the plan's),
    ``mask`` (nested lists of 0/1 of the weight's shape, 1 = keep) or ``pruned_indices``
    (row-major indices into the flattened weight). Layers not named are left dense.

A plan names layers by module path (``layer1.0.conv1``, the module whose ``weight`` is
pruned); ``exclude`` lists names or glob patterns kept dense. Biases are never pruned.
A plan holds no reference to a model: :meth:`PruningPlan.masks` resolves it against one,
deterministically (path-magnitude scores depend on ``input_shape``, stored in the plan).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..._io import atomic_write_text, parse_json, read_text_file
from ..._schema import check_plain_json, describe_value, validate
from ...errors import ConfigurationError
from ._layers import check_names, excluded_names, input_shape_for, prunable_layers
from .criteria import Masks, check_criterion, resolve_masks

__all__ = ["PruningPlan", "LayerRule", "SCHEMA", "SCOPES"]

SCHEMA = "certcompress.pruning-plan/1"
SCOPES = ("global", "per-layer")
_TOP = ("schema", "scope", "criterion", "sparsity", "layers", "exclude", "seed", "input_shape",
        "note")
_RULE = ("ratio", "criterion", "mask", "pruned_indices")


def _fraction(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigurationError(f"{where} must be a number in [0, 1], got {describe_value(v)}")
    x = float(v)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ConfigurationError(f"{where} must be in [0, 1] (a fraction of the weights), "
                                 f"got {v!r}")
    return x


def _int(v: object, where: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigurationError(f"{where} must be an integer, got {describe_value(v)}")
    if minimum is not None and v < minimum:
        raise ConfigurationError(f"{where} must be >= {minimum}, got {v}")
    return int(v)


def _mask(v: object, where: str) -> Tensor:
    if isinstance(v, Tensor):
        t = v.detach().cpu()
    else:
        if not isinstance(v, (list, tuple)):
            raise ConfigurationError(f"{where} must be nested lists of 0/1 (1 = keep) of the "
                                     f"weight's shape, got {describe_value(v)}")
        try:
            t = torch.tensor(v)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where} must be rectangular nested lists of 0/1 "
                                     f"(1 = keep): {exc}") from None
    if t.dtype != torch.bool:
        if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            bad = t[(t != 0) & (t != 1)]
            raise ConfigurationError(f"{where} entries must be 0 or 1 (integers, floats or "
                                     f"booleans; 1 = keep), found {bad.flatten()[0].item()!r}")
        t = t != 0
    return t.clone()


@dataclass(frozen=True, eq=False)
class LayerRule:
    """How one layer of a per-layer plan is pruned: exactly one of ``ratio`` (with an
    optional ``criterion``, else the plan's), ``mask`` (bool, the weight's shape, True =
    keep) or ``pruned_indices`` (row-major indices of the flattened weight)."""

    ratio: float | None = None
    criterion: str | None = None
    mask: Tensor | None = None
    pruned_indices: tuple[int, ...] | None = None

    def check(self, where: str) -> LayerRule:
        """A normalized copy, or :class:`ConfigurationError` naming ``where``."""
        given = [n for n in ("ratio", "mask", "pruned_indices") if getattr(self, n) is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ConfigurationError(f"{where} needs exactly one of 'ratio', 'mask', "
                                     f"'pruned_indices'; got {what}")
        ratio = None if self.ratio is None else _fraction(self.ratio, f"{where}.ratio")
        crit = None
        if self.criterion is not None:
            if self.ratio is None:
                raise ConfigurationError(f"{where}.criterion applies to a 'ratio' rule only")
            crit = check_criterion(self.criterion, f"{where}.criterion")
        mask = None if self.mask is None else _mask(self.mask, f"{where}.mask")
        idx = None
        if self.pruned_indices is not None:
            if not isinstance(self.pruned_indices, (list, tuple)):
                raise ConfigurationError(f"{where}.pruned_indices must be a list of integers, "
                                         f"got {describe_value(self.pruned_indices)}")
            idx = tuple(sorted({_int(i, f"{where}.pruned_indices[{j}]", 0)
                                for j, i in enumerate(self.pruned_indices)}))
        return LayerRule(ratio, crit, mask, idx)

    def to_dict(self) -> dict[str, Any]:
        if self.mask is not None:
            return {"mask": self.mask.to(torch.uint8).tolist()}
        if self.pruned_indices is not None:
            return {"pruned_indices": list(self.pruned_indices)}
        d: dict[str, Any] = {"ratio": self.ratio}
        if self.criterion is not None:
            d["criterion"] = self.criterion
        return d


@dataclass(frozen=True, eq=False)
class PruningPlan:
    """A frozen pruning plan (module docstring). Construct it with a factory
    (:meth:`magnitude`, :meth:`path_magnitude`, :meth:`random`, :meth:`per_layer`,
    :meth:`from_masks`), from a file (:meth:`load`) or directly; every field is
    validated and an error names the bad field."""

    scope: str
    criterion: str = "magnitude"
    sparsity: float | None = None
    layers: Mapping[str, LayerRule] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    seed: int = 0
    input_shape: tuple[int, ...] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or self.scope not in SCOPES:
            raise ConfigurationError(f"scope must be one of {', '.join(SCOPES)}; got "
                                     f"{describe_value(self.scope)}")
        object.__setattr__(self, "criterion", check_criterion(self.criterion))
        if self.scope == "global":
            if self.sparsity is None:
                raise ConfigurationError("sparsity is missing: a 'global' plan needs a "
                                         "sparsity in [0, 1]")
            object.__setattr__(self, "sparsity", _fraction(self.sparsity, "sparsity"))
            if self.layers:
                raise ConfigurationError("layers is only for scope 'per-layer'; a 'global' "
                                         "plan prunes every non-excluded layer")
        else:
            if self.sparsity is not None:
                raise ConfigurationError("sparsity is only for scope 'global'; give each "
                                         "layer a 'ratio' in 'layers'")
            if not isinstance(self.layers, Mapping):
                raise ConfigurationError(f"layers must be a mapping of layer name to rule, "
                                         f"got {describe_value(self.layers)}")
        rules = {}
        for name, rule in self.layers.items():
            where = f"layers[{name!r}]"
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"{where}: layer names must be non-empty strings")
            if not isinstance(rule, LayerRule):
                raise ConfigurationError(f"{where} must be a LayerRule, got {describe_value(rule)}")
            rules[name] = rule.check(where)
        object.__setattr__(self, "layers", MappingProxyType(rules))
        if isinstance(self.exclude, str) or not isinstance(self.exclude, (list, tuple)):
            raise ConfigurationError(f"exclude must be a list of layer names or glob patterns, "
                                     f"got {describe_value(self.exclude)}")
        for i, pat in enumerate(self.exclude):
            if not isinstance(pat, str) or not pat:
                raise ConfigurationError(f"exclude[{i}] must be a non-empty string, got "
                                         f"{describe_value(pat)}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "seed", _int(self.seed, "seed"))
        if self.input_shape is not None:
            if not isinstance(self.input_shape, (list, tuple)) or not self.input_shape:
                raise ConfigurationError(f"input_shape must be a list of positive integers, "
                                         f"got {describe_value(self.input_shape)}")
            object.__setattr__(self, "input_shape", tuple(
                _int(s, f"input_shape[{i}]", 1) for i, s in enumerate(self.input_shape)))
        if not isinstance(self.note, str):
            raise ConfigurationError(f"note must be a string, got {describe_value(self.note)}")

    # ------------------------------------------------------------------ factories
    @classmethod
    def by_criterion(cls, model: nn.Module, sparsity: float, criterion: str, *,
                     scope: str = "global", exclude: Sequence[str] = (), seed: int = 0,
                     input_shape: Sequence[int] | None = None) -> PruningPlan:
        """``sparsity`` of the non-excluded weights by ``criterion``, ranked jointly
        (``scope="global"``) or within each layer (``"per-layer"``)."""
        crit = check_criterion(criterion)
        shape = (input_shape_for(model, input_shape) if crit == "path-magnitude"
                 else None if input_shape is None else tuple(input_shape))
        layers = prunable_layers(model)
        excluded = excluded_names(layers, list(exclude))
        if scope == "per-layer":
            s = _fraction(sparsity, "sparsity")
            plan = cls("per-layer", crit, None, {ly.name: LayerRule(s) for ly in layers
                                                 if ly.name not in excluded},
                       tuple(exclude), seed, shape)
        else:
            plan = cls(scope, crit, sparsity, {}, tuple(exclude), seed, shape)
        return plan

    @classmethod
    def magnitude(cls, model: nn.Module, sparsity: float, *, scope: str = "global",
                  exclude: Sequence[str] = ()) -> PruningPlan:
        """Prune the ``sparsity`` fraction of smallest ``|w|``."""
        return cls.by_criterion(model, sparsity, "magnitude", scope=scope, exclude=exclude)

    @classmethod
    def path_magnitude(cls, model: nn.Module, sparsity: float, *,
                       input_shape: Sequence[int] | None = None, scope: str = "global",
                       exclude: Sequence[str] = ()) -> PruningPlan:
        """Prune the ``sparsity`` fraction of smallest path-magnitude scores (for inputs of
        ``input_shape``; rescaling-invariant)."""
        return cls.by_criterion(model, sparsity, "path-magnitude", scope=scope,
                                exclude=exclude, input_shape=input_shape)

    @classmethod
    def random(cls, model: nn.Module, sparsity: float, *, seed: int = 0,
               scope: str = "global", exclude: Sequence[str] = ()) -> PruningPlan:
        """Prune a uniformly random ``sparsity`` fraction (reproducible from ``seed``)."""
        return cls.by_criterion(model, sparsity, "random", scope=scope, exclude=exclude,
                                seed=seed)

    @classmethod
    def per_layer(cls, model: nn.Module, ratios: Mapping[str, float | tuple[float, str]], *,
                  criterion: str = "magnitude", exclude: Sequence[str] = (),
                  input_shape: Sequence[int] | None = None, seed: int = 0) -> PruningPlan:
        """Per-layer ratios: ``{"conv1": 0.3, "fc": (0.5, "path-magnitude")}``."""
        rules = {}
        for name, v in ratios.items():
            r, c = v if isinstance(v, tuple) else (v, None)
            rules[name] = LayerRule(r, c)
        needs_shape = check_criterion(criterion) == "path-magnitude" or any(
            r.criterion is not None and check_criterion(r.criterion) == "path-magnitude"
            for r in rules.values())
        shape = input_shape_for(model, input_shape) if needs_shape else (
            None if input_shape is None else tuple(input_shape))
        plan = cls("per-layer", criterion, None, rules, tuple(exclude), seed, shape)
        plan.validate(model)
        return plan

    @classmethod
    def from_masks(cls, masks: Mapping[str, Tensor], note: str = "") -> PruningPlan:
        """Explicit keep-masks (True/1 = keep) by layer name."""
        return cls("per-layer", layers={k: LayerRule(mask=v) for k, v in masks.items()},
                   note=note)

    # ------------------------------------------------------------------ use
    def validate(self, model: nn.Module) -> None:
        """Check layer names and exclusion patterns against ``model`` (no scoring)."""
        layers = prunable_layers(model)
        check_names(layers, self.layers)
        excluded_names(layers, self.exclude)

    def masks(self, model: nn.Module, input_shape: Sequence[int] | None = None) -> Masks:
        """Keep-masks (bool, True = keep) of every prunable layer of ``model``."""
        return resolve_masks(model, self, input_shape)

    def with_note(self, note: str) -> PruningPlan:
        return replace(self, note=note)

    def describe(self) -> str:
        ex = f", excluding {', '.join(self.exclude)}" if self.exclude else ""
        if self.scope == "global":
            return f"global {self.criterion} pruning at sparsity {self.sparsity:.6g}{ex}"
        kinds = sorted({"mask" if r.mask is not None or r.pruned_indices is not None
                        else f"ratio {r.ratio:.3g} ({r.criterion or self.criterion})"
                        for r in self.layers.values()})
        return f"per-layer plan on {len(self.layers)} layer(s): {'; '.join(kinds[:4])}{ex}"

    def __str__(self) -> str:
        return self.describe()

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "scope": self.scope, "criterion": self.criterion}
        if self.scope == "global":
            d["sparsity"] = self.sparsity
        else:
            d["layers"] = {k: r.to_dict() for k, r in self.layers.items()}
        d["exclude"] = list(self.exclude)
        d["seed"] = self.seed
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        if self.note:
            d["note"] = self.note
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def dumps(self, path: str | os.PathLike[str]) -> str:
        """The file text for ``path``: YAML for a ``.yaml``/``.yml`` path, else JSON."""
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            return str(yaml.safe_dump(self.to_dict(), sort_keys=False,
                                      default_flow_style=None))
        return self.to_json() + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON (or YAML for a ``.yaml``/``.yml`` path) atomically."""
        return atomic_write_text(path, self.dumps(path))

    @classmethod
    def from_dict(cls, data: object) -> PruningPlan:
        """Validate a parsed plan file; every error names the bad field. The checks
        below give the plan-specific messages; ``schemas/pruning-plan.json`` is checked
        last (and NaN, huge integers and deep nesting first)."""
        check_plain_json(data, "plan", ConfigurationError, string_keys=False)
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a pruning plan must be a mapping (JSON object) with at "
                                     f"least 'scope', got {describe_value(data)}")
        unknown = [k for k in data if k not in _TOP]
        if unknown:
            raise ConfigurationError(f"plan field {unknown[0]!r} is unknown; plan fields are "
                                     f"{', '.join(_TOP)}")
        if "schema" in data and data["schema"] != SCHEMA:
            raise ConfigurationError(f"schema is {data['schema']!r}; this version reads "
                                     f"{SCHEMA!r}")
        if "scope" not in data:
            raise ConfigurationError(f"plan field 'scope' is missing: one of {', '.join(SCOPES)}")
        scope = data["scope"]
        if scope == "global":
            for need in ("sparsity", "criterion"):
                if need not in data:
                    raise ConfigurationError(f"plan field {need!r} is missing (required for "
                                             "scope 'global')")
        layers_raw = data.get("layers", {})
        if scope == "per-layer" and "layers" not in data:
            raise ConfigurationError("plan field 'layers' is missing (required for scope "
                                     "'per-layer'): a mapping of layer name to rule")
        if not isinstance(layers_raw, Mapping):
            raise ConfigurationError(f"layers must be a mapping of layer name to rule, got "
                                     f"{describe_value(layers_raw)}")
        rules = {}
        for name, raw in layers_raw.items():
            where = f"layers[{name!r}]"
            if not isinstance(raw, Mapping):
                raise ConfigurationError(f"{where} must be a mapping with 'ratio' (and "
                                         f"optionally 'criterion'), 'mask' or "
                                         f"'pruned_indices', got {describe_value(raw)}")
            bad = [k for k in raw if k not in _RULE]
            if bad:
                raise ConfigurationError(f"{where}.{bad[0]} is unknown; rule fields are "
                                         f"{', '.join(_RULE)}")
            if "ratio" in raw and "criterion" not in raw and "criterion" not in data:
                raise ConfigurationError(f"{where}.criterion is missing and the plan has no "
                                         f"default 'criterion'")
            mask = None if raw.get("mask") is None else _mask(raw["mask"], f"{where}.mask")
            rules[str(name)] = LayerRule(raw.get("ratio"), raw.get("criterion"), mask,
                                         raw.get("pruned_indices"))
        plan = cls(scope=scope, criterion=data.get("criterion", "magnitude"),
                   sparsity=data.get("sparsity"), layers=rules,
                   exclude=data.get("exclude", ()), seed=data.get("seed", 0),
                   input_shape=data.get("input_shape"), note=data.get("note", ""))
        validate(dict(data), "pruning-plan", "plan", ConfigurationError, yaml=True)
        return plan

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(parse_json(text, "the plan", ConfigurationError))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a JSON or YAML (``.yaml``/``.yml``) plan file."""
        p = Path(path)
        text = read_text_file(p, "plan file", ConfigurationError)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigurationError(f"plan file '{p}' is not valid YAML: "
                                         f"{str(exc).splitlines()[0]}") from None
        else:
            data = parse_json(text, f"plan file '{p}'", ConfigurationError,
                              hint="; YAML plans need a .yaml or .yml suffix")
        try:
            return cls.from_dict(data)
        except ConfigurationError as exc:
            raise ConfigurationError(f"plan file '{p}': {exc}") from None
