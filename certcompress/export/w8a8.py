"""W8A8 static quantization export, certified: int8 weights (per channel) and uint8
activations (per tensor) in the QDQ layout onnxruntime fuses into int8 kernels
(QLinearConv, QLinearAdd, int8 max-pooling).

:func:`export_w8a8`:

1. folds eval BatchNorm into the convolution before it (``torch.fx``), so the exported
   graph is the optimized one;
2. quantizes the folded model's weights to the symmetric per-channel 8-bit grid and
   inserts activation quantizers with calibrated ranges
   (:mod:`certcompress.compress.quantization.activations`); each quantizer's slack also
   covers the int32 rounding of the bias an int8 kernel adds before it
   (``scale_in * scale_w / 2`` per output channel);
3. certifies (unless ``certify=False``) the folded float model against this weight- and
   activation-quantized model: the bound covers weight rounding, activation rounding,
   clipping outside the calibrated ranges and the kernels' bias and requantization
   rounding (docs/quantization.md, "Activation quantization");
4. exports the quantized model with ``torch.onnx.export`` (every activation quantizer is
   a ``QuantizeLinear`` -> ``DequantizeLinear`` pair) and replaces every weight by its
   int8 codes and a per-channel ``DequantizeLinear`` whose output is the certified weight
   bit for bit (:func:`certcompress.export.qdq.apply_grids` checks it).

What the certificate covers: see :data:`COVERS` (also written to the file's metadata,
``certcompress.w8a8.covers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from .._io import atomic_path
from .._version import __version__
from ..api import certify as certify_pair
from ..bounds.propagation.engine import PropagationOptions
from ..certificate import Certificate
from ..compress.quantization import QuantConfig, quantization_grid
from ..compress.quantization.activations import (
    add_kernel_slack,
    fold_batchnorm,
    quantized_pair,
)
from ..domain import InputDomain
from ..errors import ConfigurationError, VerificationError
from .onnx_export import MIN_OPSET, to_onnx
from .qdq import apply_grids, as_grids, dequantized_weights

__all__ = ["W8A8Export", "export_w8a8", "fold_batchnorm", "COVERS"]

#: what a W8A8 certificate covers (also written to the file's metadata)
COVERS = ("||f(x) - f_q(x)||_1 over the domain, f the BatchNorm-folded float model, f_q the "
          "file's integer-quantized semantics: int8 per-channel weights, uint8 per-tensor "
          "activations (rounding and clipping outside the calibrated ranges), the int32 "
          "bias rounding and the requantization of the int8 kernels; exact arithmetic "
          "otherwise. NOT covered: float32 rounding in the parts that stay float "
          "(layers with no quantizer after them, e.g. the final affine layer, and pooling "
          "means onnxruntime does not fuse), relative size about 1e-6")


@dataclass(frozen=True)
class W8A8Export:
    """The result of :func:`export_w8a8`: the written file, the BatchNorm-folded float
    model ``folded`` and its weight-quantized version ``quantized`` (the certificate's
    original and compressed models), the ``certificate`` (None with
    ``certify=False``), the file's size in bytes and what the certificate covers."""

    path: Path
    folded: nn.Module
    quantized: nn.Module
    certificate: Certificate | None
    size_bytes: int
    covers: str = COVERS
    activation_type: str = "uint8"
    quantized_weights: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def _constants_to_initializers(proto: onnx.ModelProto) -> None:
    """Turn every ``Constant`` node holding a tensor into an initializer (the scales and
    zero points of the QDQ pairs: tools look for them as initializers)."""
    keep = []
    for node in proto.graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 \
            else None
        if attr is not None and attr.name == "value" and node.domain in ("", "ai.onnx"):
            t = onnx.TensorProto()
            t.CopyFrom(attr.t)
            t.name = node.output[0]
            proto.graph.initializer.append(t)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def export_w8a8(model: nn.Module, path: str | os.PathLike[str], *,
                calibration: Tensor | None = None,
                domain: InputDomain | None = None, certify: bool = True,
                input_shape: tuple[int, ...] | None = None, search_steps: int = 10,
                search_restarts: int = 2, seed: int = 0,
                opset: int = MIN_OPSET, methods: tuple[str, ...] | None = None,
                propagation: PropagationOptions | None = None) -> W8A8Export:
    """Write ``model`` as a certified W8A8 QDQ ONNX file at ``path`` (module docstring).

    ``calibration``: float32 inputs (batch first) giving the activation ranges (values
    outside are clipped, and the clipping is certified). Without it the ranges come from
    the bounds tier over ``domain`` (required then): they cover every value the
    weight-quantized network reaches there, so nothing is clipped but what activation
    rounding upstream pushes past them (certified too). ``domain`` (default: the box
    spanned by ``calibration``) is the certificate's input domain; ``methods`` the tiers (default: both; ``("path-metric",)`` is the cheap one
    for large models) and ``propagation`` the bounds tier's options (e.g.
    ``PropagationOptions(intermediate="interval")``, cheaper). The certificate (None with ``certify=False``) covers
    :data:`COVERS`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be an nn.Module, got {type(model).__name__}")
    x_cal: Tensor | None = None
    if calibration is not None:
        if not isinstance(calibration, Tensor) or calibration.dim() < 2 or len(calibration) < 1:
            raise ConfigurationError("calibration must be a float tensor of inputs, batch first")
        x_cal = calibration.detach().to(torch.float32).cpu()
    elif not isinstance(domain, InputDomain):
        raise ConfigurationError("export_w8a8 needs calibration= (inputs giving the activation "
                                 "ranges) or domain= (ranges from the bounds tier over it)")
    if input_shape is not None:
        shape = tuple(input_shape)
    elif x_cal is not None:
        shape = (1,) + tuple(x_cal.shape[1:])
    else:
        assert domain is not None
        shape = tuple(domain.shape)
    folded = fold_batchnorm(model)
    cfg = QuantConfig.uniform(folded, 8, "per-channel")
    grid = quantization_grid(folded, cfg)
    orig, qmodel, _ = quantized_pair(folded, grid.apply(folded), 8, x_cal,
                                     domain if x_cal is None else None)
    add_kernel_slack(qmodel, {g.parameter_name: float(g.scale.max()) for g in as_grids(grid)})
    cert: Certificate | None = None
    if certify:
        if domain is not None:
            dom = domain
        else:
            assert x_cal is not None
            dom = InputDomain.box(x_cal.amin(0, keepdim=True), x_cal.amax(0, keepdim=True),
                                  shape=shape,
                                  description="the box spanned by the calibration inputs")
        cert = certify_pair(orig, qmodel, domain=dom, methods=methods, propagation=propagation,
                            search_steps=search_steps, search_restarts=search_restarts,
                            seed=seed)
        cert = replace(cert, notes=tuple(cert.notes) + (f"W8A8 export: covers {COVERS}.",))
    grids = as_grids(grid)
    certified = {k: v.detach().to(torch.float32) for k, v in qmodel.state_dict().items()}
    proto = to_onnx(qmodel, shape, opset)
    _constants_to_initializers(proto)
    records = apply_grids(proto, grids, certified, opset)
    deq = dequantized_weights(proto)
    for g in grids:
        want = certified[g.parameter_name].numpy()
        if not any(v.shape == want.shape and np.array_equal(v, want) for v in deq.values()):
            raise VerificationError(f"check 'w8a8-weights' failed: the file's dequantized "
                                    f"'{g.parameter_name}' is not the certified weight")
    meta = {"certcompress.w8a8.covers": COVERS,
            "certcompress.w8a8.activation_type": "uint8",
            "certcompress.w8a8.version": __version__}
    if cert is not None:
        meta["certcompress.w8a8.certificate"] = cert.to_json(indent=None)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    target = Path(path)
    with atomic_path(target) as tmp_target:
        onnx.save_model(proto, str(tmp_target))
    return W8A8Export(path=target, folded=orig, quantized=qmodel, certificate=cert,
                      size_bytes=target.stat().st_size,
                      quantized_weights=sum(r.storage == "int8" for r in records),
                      notes=(f"certificate covers {COVERS}",))
