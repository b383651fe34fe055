"""The grid of a quantized model: scales and integer codes of every quantized tensor.

:func:`quantization_grid` computes it from the float model and a :class:`QuantConfig`
(deterministically); :meth:`QuantGrid.apply` writes the values into a copy of the model.
The JSON form stores the scales and metadata; the codes are recovered from the stored
quantized values (``round(value / scale)``) and checked bit-exactly on load, so an ONNX
exporter can rebuild int8/int4 QDQ weights that dequantize to exactly the values the
certificate speaks of.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..._io import atomic_write_text, parse_json, read_text_file
from ...errors import ConfigurationError
from .config import QuantConfig
from .quantizers import (
    QuantizedWeights,
    _broadcast,
    _code_dtype,
    affine_layers,
    channel_axis,
    param_name,
    qmax,
    quantize_tensor,
    valid_bits,
    weight_of,
)

__all__ = ["QuantGrid", "quantization_grid", "GRID_SCHEMA"]

GRID_SCHEMA = "certcompress.quantgrid/1"


@dataclass(frozen=True)
class QuantGrid:
    """Every quantized tensor of a model, by qualified parameter name."""

    config: QuantConfig
    tensors: Mapping[str, QuantizedWeights]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    def values(self) -> dict[str, Tensor]:
        return {k: q.values() for k, q in self.tensors.items()}

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` (eval mode) holding the quantized values; ``model``
        itself is not modified."""
        qmodel = copy.deepcopy(model)
        params = dict(qmodel.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, q in self.tensors.items():
                params[name].copy_(q.values())
        return qmodel.eval()

    def check(self, qmodel: nn.Module) -> None:
        """Raise :class:`ConfigurationError` unless every quantized parameter of
        ``qmodel`` equals its grid values bit-exactly."""
        params = dict(qmodel.named_parameters(remove_duplicate=False))
        for name, q in self.tensors.items():
            if name not in params:
                raise ConfigurationError(f"the model has no parameter '{name}'")
            if not torch.equal(params[name].detach(), q.values()):
                raise ConfigurationError(f"parameter '{name}' is not on its quantization grid")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"schema": GRID_SCHEMA, "config": self.config.to_dict(),
                "tensors": {k: q.to_dict() for k, q in self.tensors.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (scales and metadata; codes live in the weights)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, state: Mapping[str, Tensor] | nn.Module) -> QuantGrid:
        """Rebuild the grid from its JSON form and the quantized values (a state dict or
        the quantized model): codes are ``round(value / scale)``, checked bit-exactly."""
        if not isinstance(data, dict) or data.get("schema") != GRID_SCHEMA:
            raise ConfigurationError(f"not a quantization grid: field 'schema' must be "
                                     f"{GRID_SCHEMA!r}")
        if isinstance(state, nn.Module):
            state = dict(state.state_dict(keep_vars=False))
        config = QuantConfig.from_dict(data.get("config"))
        entries = data.get("tensors")
        if not isinstance(entries, dict):
            raise ConfigurationError("quantization grid field 'tensors' must be an object")
        tensors = {name: _entry(name, e, state) for name, e in entries.items()}
        return cls(config, tensors)

    @classmethod
    def load(cls, path: str | os.PathLike[str], state: Mapping[str, Tensor] | nn.Module
             ) -> QuantGrid:
        text = read_text_file(path, "quantization grid", ConfigurationError)
        return cls.from_dict(parse_json(text, f"quantization grid '{path}'", ConfigurationError),
                             state)


def _entry(name: str, e: Any, state: Mapping[str, Tensor]) -> QuantizedWeights:
    where = f"quantization grid field 'tensors.{name}'"
    keys = {"layer", "bits", "granularity", "axis", "dtype", "shape", "zero_point", "scale"}
    if not isinstance(e, dict) or set(e) != keys:
        raise ConfigurationError(f"{where} must have exactly the keys {sorted(keys)}")
    if name not in state:
        raise ConfigurationError(f"{where}: the quantized weights have no tensor '{name}'")
    value = state[name].detach()
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(e["dtype"])
    if dtype is None or value.dtype != dtype:
        raise ConfigurationError(f"{where}: dtype {e['dtype']!r} does not match the stored "
                                 f"tensor ({value.dtype})")
    if list(value.shape) != e["shape"] or e["zero_point"] != 0:
        raise ConfigurationError(f"{where}: shape/zero point do not match the stored tensor")
    bits = e["bits"]
    if not valid_bits(bits):
        raise ConfigurationError(f"{where}.bits must be 2-8 or 16, got {bits!r}")
    axis = e["axis"]
    scale = torch.tensor(e["scale"], dtype=dtype)
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ConfigurationError(f"{where}.scale must be positive finite numbers")
    if axis is not None and (not isinstance(axis, int) or not 0 <= axis < value.dim()
                             or value.shape[axis] != scale.numel()):
        raise ConfigurationError(f"{where}.axis does not match the scale and the tensor shape")
    if axis is None and scale.numel() != 1:
        raise ConfigurationError(f"{where}: a per-tensor grid has one scale")
    codes = torch.round(value.double() / _broadcast(scale.double(), axis, value.dim()))
    q = qmax(bits)
    if codes.numel() and float(codes.abs().max()) > q:
        raise ConfigurationError(f"{where}: stored values exceed the {bits}-bit grid")
    grid = QuantizedWeights(param=name, layer=str(e["layer"]), bits=bits,
                            granularity=str(e["granularity"]), axis=axis, scale=scale,
                            codes=codes.to(_code_dtype(bits)))
    if not torch.equal(grid.values(), value):
        raise ConfigurationError(f"{where}: the stored tensor is not on its grid (values are "
                                 "not codes x scale bit-exactly)")
    return grid


def quantization_grid(model: nn.Module, qcfg: QuantConfig) -> QuantGrid:
    """Quantize every layer ``qcfg`` names (weights, and biases when ``qcfg.bias_bits``)
    from the float ``model``; deterministic, and ``model`` is not modified."""
    qcfg.validate(model)
    layers = affine_layers(model)
    tensors: dict[str, QuantizedWeights] = {}
    for name, spec in qcfg.layers.items():
        m = layers[name]
        wname = param_name(name, "weight")
        tensors[wname] = quantize_tensor(weight_of(m), spec.bits, spec.granularity,
                                         channel_axis(m), param=wname, layer=name)
        bias = getattr(m, "bias", None)
        if qcfg.bias_bits is not None and isinstance(bias, Tensor):
            bname = param_name(name, "bias")
            tensors[bname] = quantize_tensor(bias, qcfg.bias_bits, "per-tensor", None,
                                             param=bname, layer=name)
    return QuantGrid(qcfg, tensors)
