"""Pruning and quantization specs inside tasks: validated where a task is created
(canonical JSON text, so equal plans give equal keys) and applied where it runs.

Pruning: a :class:`~certcompress.compress.pruning.PruningPlan` or its dict (the plan
file format). Quantization: a :class:`~certcompress.compress.quantization.QuantConfig`
or its dict (with ``schema``), or the short form ``{"bits": 8}`` / ``{"bits": {layer:
bits}}`` with optional ``granularity`` (per-channel), ``bias_bits`` and ``layers``
(default: every Linear/ConvNd layer of the model, resolved on the worker).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ..errors import ConfigurationError
from . import _check

__all__ = ["pruning_spec", "quant_spec", "domain_spec", "methods_spec", "pruned",
           "quantized", "describe_pruning", "describe_quant", "canonical", "package"]

_QUANT_SHORT = ("bits", "granularity", "bias_bits", "layers")


def _parse(value: object, where: str) -> object:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from None


def domain_spec(value: object, shape: Sequence[int], where: str = "domain") -> str:
    """An :class:`~certcompress.InputDomain` (or its dict, or that dict's JSON text) as
    canonical JSON text; its shape must be ``shape``."""
    # certcompress.domain imports torch; tasks are built (manifests parsed) without it
    domain_mod = importlib.import_module("certcompress.domain")
    value = _parse(value, where)
    if isinstance(value, Mapping):
        try:
            value = domain_mod.InputDomain.from_dict(dict(value))
        except (ConfigurationError, KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: not an input domain: {exc}") from None
    if not isinstance(value, domain_mod.InputDomain):
        raise ConfigurationError(f"{where} must be an InputDomain (e.g. InputDomain.box(0.0, "
                                 f"1.0, shape=...)) or its dict, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise ConfigurationError(f"{where}: the domain's shape {tuple(value.shape)} differs "
                                 f"from the task's input_shape {tuple(shape)}")
    return canonical(value.to_dict())


def methods_spec(value: object, where: str = "methods") -> tuple[str, ...]:
    """Validated certification tier names (see :mod:`certcompress.bounds.tiers`)."""
    # the tiers module imports torch; tasks are built (manifests parsed) without it
    tiers = importlib.import_module("certcompress.bounds.tiers")
    try:
        names: tuple[str, ...] = tiers.check_methods(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return names


def canonical(value: object) -> str:
    """Canonical JSON text (sorted keys, no spaces, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def package(name: str, kind: str) -> ModuleType:
    """``certcompress.compress.<name>``, or a clear error if it is not installed."""
    try:
        return importlib.import_module(f"certcompress.compress.{name}")
    except ModuleNotFoundError as exc:
        if exc.name is not None and f"certcompress.compress.{name}".startswith(exc.name):
            raise ConfigurationError(f"{kind} needs certcompress.compress.{name}, which this "
                                     "installation does not have") from None
        raise


# ------------------------------------------------------------------ pruning
def pruning_spec(value: object, where: str = "pruning") -> str:
    pr = package("pruning", "a pruning plan")
    value = _parse(value, where)
    if isinstance(value, pr.PruningPlan):
        plan = value
    elif isinstance(value, Mapping):
        try:
            plan = pr.PruningPlan.from_dict(dict(value))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    else:
        raise ConfigurationError(f"{where} must be a PruningPlan or a plan mapping (the plan "
                                 f"file format), got {type(value).__name__}")
    return canonical(plan.to_dict())


def describe_pruning(spec: str) -> str:
    return str(package("pruning", "a pruning plan").PruningPlan.from_dict(json.loads(spec)))


def pruned(model: Any, spec: str, input_shape: Sequence[int]) -> Any:
    """A pruned deep copy of ``model`` (the model is not modified)."""
    pr = package("pruning", "a pruning plan")
    plan = pr.PruningPlan.from_dict(json.loads(spec))
    return pr.apply_masks(model, plan.masks(model, tuple(input_shape)))


# ------------------------------------------------------------------ quantization
def quant_spec(value: object, where: str = "quantization") -> str:
    q = package("quantization", "a quantization config")
    value = _parse(value, where)
    if isinstance(value, q.QuantConfig):
        return canonical(value.to_dict())
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a QuantConfig, a QuantConfig dict or "
                                 f"{{'bits': 8}}, got {type(value).__name__}")
    if "schema" in value:
        try:
            return canonical(q.QuantConfig.from_dict(dict(value)).to_dict())
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    _check.fields(value, _QUANT_SHORT, where, hint=" (or a QuantConfig dict with 'schema')")
    if "bits" not in value:
        raise ConfigurationError(f"{where}.bits is missing: an integer (every layer) or a "
                                 "mapping of layer name to bits")
    from ..compress.quantization.config import check_bits, check_granularity

    gran = check_granularity(value.get("granularity", "per-channel"), f"{where}.granularity")
    bias = value.get("bias_bits")
    if bias is not None:
        check_bits(bias, f"{where}.bias_bits")
    bits = value["bits"]
    if isinstance(bits, Mapping):
        if "layers" in value:
            raise ConfigurationError(f"{where}.layers is only for integer bits; a bits mapping "
                                     "names its layers")
        cfg = q.QuantConfig.from_bits({str(k): check_bits(b, f"{where}.bits[{k!r}]")
                                       for k, b in bits.items()}, gran, bias_bits=bias)
        return canonical(cfg.to_dict())
    check_bits(bits, f"{where}.bits")
    layers = value.get("layers")
    if layers is not None:
        layers = list(_check.names(layers, f"{where}.layers"))
    return canonical({"bits": bits, "granularity": gran, "bias_bits": bias, "layers": layers})


def _config(model: Any, spec: str) -> Any:
    q = package("quantization", "a quantization config")
    data = json.loads(spec)
    if "schema" in data:
        cfg = q.QuantConfig.from_dict(data)
        cfg.validate(model)
        return cfg
    return q.QuantConfig.uniform(model, data["bits"], data["granularity"],
                                 bias_bits=data["bias_bits"], layers=data["layers"])


def describe_quant(spec: str) -> str:
    data = json.loads(spec)
    if "schema" not in data:
        scope = "every layer" if data["layers"] is None else f"{len(data['layers'])} layer(s)"
        return f"{data['bits']}-bit {data['granularity']} quantization of {scope}"
    bits = sorted({v["bits"] for v in data["layers"].values()})
    return (f"quantization of {len(data['layers'])} layer(s) at "
            f"{'/'.join(map(str, bits)) or '-'} bits")


def quantized(model: Any, spec: str) -> tuple[Any, Any]:
    """``(quantized copy, QuantConfig)``; the model is not modified."""
    q = package("quantization", "a quantization config")
    cfg = _config(model, spec)
    return q.quantization_grid(model, cfg).apply(model), cfg
