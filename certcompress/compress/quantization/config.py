"""Which layers are quantized, with how many bits, at which granularity.

A :class:`QuantConfig` is a frozen value keyed by module name (``layer1.0.conv1``);
layers it does not name stay in float. It is validated against a model before use
(:meth:`QuantConfig.validate`), and saved and loaded as JSON with every field checked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from ..._io import atomic_write_text, parse_json, read_text_file
from ..._schema import validate
from ...errors import ConfigurationError
from .quantizers import GRANULARITIES, WEIGHT_BITS, affine_layers, valid_bits, weight_of

__all__ = ["LayerQuant", "QuantConfig", "CONFIG_SCHEMA"]

CONFIG_SCHEMA = "certcompress.quantconfig/1"


def check_bits(bits: object, where: str) -> int:
    if not valid_bits(bits):
        raise ConfigurationError(f"{where} must be one of {list(WEIGHT_BITS)} (2 to 8, or 16), "
                                 f"got {bits!r}")
    return bits


def check_granularity(granularity: object, where: str) -> str:
    if granularity not in GRANULARITIES:
        raise ConfigurationError(f"{where} must be one of {list(GRANULARITIES)}, got "
                                 f"{granularity!r}")
    return str(granularity)


@dataclass(frozen=True)
class LayerQuant:
    """Bits and granularity of one layer's weight."""

    bits: int
    granularity: str = "per-channel"

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits")
        check_granularity(self.granularity, "granularity")


@dataclass(frozen=True)
class QuantConfig:
    """Per-layer weight quantization: ``layers`` maps module names to :class:`LayerQuant`.

    ``bias_bits`` is None to keep biases in float (the default), or a width from
    ``WEIGHT_BITS`` to quantize the biases of the quantized layers per tensor.
    """

    layers: Mapping[str, LayerQuant]
    bias_bits: int | None = None

    def __post_init__(self) -> None:
        layers = {}
        for name, spec in dict(self.layers).items():
            if not isinstance(name, str):
                raise ConfigurationError(f"layer names must be strings, got {name!r}")
            if not isinstance(spec, LayerQuant):
                raise ConfigurationError(f"layers[{name!r}] must be a LayerQuant, got "
                                         f"{type(spec).__name__}")
            layers[name] = spec
        object.__setattr__(self, "layers", MappingProxyType(layers))
        if self.bias_bits is not None:
            check_bits(self.bias_bits, "bias_bits")

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.layers.items())), self.bias_bits))

    # ------------------------------------------------------------------ building
    @classmethod
    def uniform(cls, model: nn.Module, bits: int = 8, granularity: str = "per-channel", *,
                bias_bits: int | None = None, layers: Iterable[str] | None = None
                ) -> QuantConfig:
        """Every affine layer of ``model`` (or only ``layers``) at ``bits`` bits."""
        check_bits(bits, "bits")
        check_granularity(granularity, "granularity")
        names = list(affine_layers(model)) if layers is None else list(layers)
        cfg = cls({n: LayerQuant(bits, granularity) for n in names}, bias_bits)
        cfg.validate(model)
        return cfg

    @classmethod
    def from_bits(cls, bits: Mapping[str, int], granularity: str = "per-channel", *,
                  bias_bits: int | None = None) -> QuantConfig:
        """A configuration from ``{layer: bits}`` at one granularity."""
        return cls({n: LayerQuant(check_bits(b, f"bits of layer '{n}'"), granularity)
                    for n, b in bits.items()}, bias_bits)

    def with_bits(self, layer: str, bits: int) -> QuantConfig:
        """A copy with ``layer`` at ``bits`` (same granularity)."""
        if layer not in self.layers:
            raise ConfigurationError(f"layer '{layer}' is not in this configuration")
        layers = dict(self.layers)
        layers[layer] = LayerQuant(bits, self.layers[layer].granularity)
        return QuantConfig(layers, self.bias_bits)

    # ------------------------------------------------------------------ queries
    @property
    def bits(self) -> dict[str, int]:
        return {n: s.bits for n, s in self.layers.items()}

    def validate(self, model: nn.Module) -> None:
        """Raise :class:`ConfigurationError` naming every layer that is not an affine
        module (Linear, ConvNd, ConvTransposeNd) of ``model``."""
        known = affine_layers(model)
        unknown = [n for n in self.layers if n not in known]
        if unknown:
            listing = ", ".join(list(known)[:12]) + (" ..." if len(known) > 12 else "")
            raise ConfigurationError(
                f"layers {unknown} of the quantization config are not Linear/ConvNd/"
                f"ConvTransposeNd modules of {type(model).__name__}; its affine layers are: "
                f"{listing or '(none)'}")

    def weight_counts(self, model: nn.Module) -> dict[str, int]:
        known = affine_layers(model)
        return {n: int(weight_of(known[n]).numel()) for n in self.layers}

    def total_weight_bits(self, model: nn.Module) -> int:
        """Sum over quantized layers of (number of weights) x bits."""
        counts = self.weight_counts(model)
        return sum(counts[n] * s.bits for n, s in self.layers.items())

    def average_bits(self, model: nn.Module) -> float:
        """Weight-count-weighted average bits over the quantized layers."""
        counts = self.weight_counts(model)
        total = sum(counts.values())
        return self.total_weight_bits(model) / total if total else 0.0

    def size_bytes(self, model: nn.Module) -> int:
        """Storage of ``model`` under this configuration: quantized weights packed at their
        bits (rounded up to whole bytes per tensor) plus one scale per channel or tensor in
        the weight's dtype; every other parameter and buffer at its dtype's size."""
        known = affine_layers(model)
        quantized: set[int] = set()
        total = 0
        for name, spec in self.layers.items():
            m = known[name]
            w = weight_of(m)
            quantized.add(id(w))
            total += math.ceil(w.numel() * spec.bits / 8)
            axis = 1 if getattr(m, "transposed", False) else 0
            n_scales = w.shape[axis] if spec.granularity == "per-channel" and w.dim() >= 2 else 1
            total += n_scales * w.element_size()
            b = getattr(m, "bias", None)
            if self.bias_bits is not None and b is not None:
                quantized.add(id(b))
                total += math.ceil(b.numel() * self.bias_bits / 8) + b.element_size()
        seen: set[int] = set()
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) in quantized or id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return total

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"schema": CONFIG_SCHEMA, "bias_bits": self.bias_bits,
                "layers": {n: {"bits": s.bits, "granularity": s.granularity}
                           for n, s in self.layers.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> QuantConfig:
        """Validate ``data`` against ``schemas/quantconfig.json`` (one-line errors naming
        the field) and build the config."""
        validate(data, "quantconfig", "quantization config", ConfigurationError)
        return cls({name: LayerQuant(spec["bits"], spec.get("granularity", "per-channel"))
                    for name, spec in data["layers"].items()}, data.get("bias_bits"))

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        return cls.from_dict(parse_json(text, "the quantization config", ConfigurationError))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> QuantConfig:
        """Read a JSON file; with ``model``, also validate the layer names against it."""
        cfg = cls.from_json(read_text_file(path, "quantization config", ConfigurationError))
        if model is not None:
            cfg.validate(model)
        return cfg
