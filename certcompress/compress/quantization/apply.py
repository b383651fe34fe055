"""Quantize a model and certify the result: the quantized model is a deep copy of the
float model whose weights lie exactly on their grid, so the certificate speaks of
exactly the values it holds (and an exporter can rebuild them from the grid)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...api import certify
from ...bounds.propagation.engine import PropagationOptions
from ...certificate import Certificate
from ...domain import InputDomain
from ...errors import ConfigurationError
from .activations import add_kernel_slack, fold_batchnorm, quantized_pair
from .config import QuantConfig
from .grid import quantization_grid

__all__ = ["quantize"]


def _config(qcfg: object) -> QuantConfig:
    if isinstance(qcfg, QuantConfig):
        return qcfg
    inner = getattr(qcfg, "config", None)  # a BitAllocation
    if isinstance(inner, QuantConfig):
        return inner
    raise ConfigurationError(f"expected a QuantConfig (or a BitAllocation), got "
                             f"{type(qcfg).__name__}")


def _restricted(cfg: QuantConfig, folded: nn.Module) -> QuantConfig:
    """``cfg`` without layers that BatchNorm folding removed."""
    from dataclasses import replace

    from .quantizers import affine_layers

    keep = set(affine_layers(folded))
    layers = dict(cfg.layers)
    if set(layers) <= keep:
        return cfg
    return replace(cfg, layers={k: v for k, v in layers.items() if k in keep})


def quantize(model: nn.Module, qcfg: QuantConfig, input_shape: Sequence[int] | None = None,
             input_radius: float | None = None, reference_inputs: Tensor | None = None, *,
             search_steps: int = 20, search_restarts: int = 4, seed: int = 0,
             domain: InputDomain | None = None, methods: Sequence[str] | None = None,
             arithmetic: str = "exact", propagation: PropagationOptions | None = None,
             activations: int | None = None, calibration: Tensor | None = None
             ) -> tuple[nn.Module, Certificate]:
    """Quantize ``model`` as ``qcfg`` says and certify it.

    Returns the quantized model (a deep copy in eval mode; ``model`` is untouched) and
    the certificate of ``max_{||x||_inf <= r} ||f(x) - f_q(x)||_1`` from
    :func:`certcompress.certify`, with the deviation measured on ``reference_inputs``
    and by a PGD search (``search_steps``, 0 to skip). The grid (scales and integer
    codes) is :func:`quantization_grid` ``(model, qcfg)``, deterministic. ``domain`` and
    ``methods`` are passed to :func:`certcompress.certify` (e.g. a box and
    ``("path-metric", "bounds")`` for the bound-propagation tier), and so are
    ``arithmetic`` (``"float32"``: the models as executed in float32) and ``propagation``.

    ``activations`` (bits, 2-8): also quantize activations, per tensor, unsigned
    (:mod:`~certcompress.compress.quantization.activations`): the model is first
    BatchNorm-folded, quantizers go where onnxruntime's int8 kernels read or write 8-bit
    tensors, with ranges from ``calibration`` (inputs; clipping outside them is
    certified) or else from the bounds tier over ``domain`` (required then). The
    certificate then compares the folded float model with the weight- and
    activation-quantized one and covers both roundings and the clipping
    (docs/quantization.md, "Activation quantization") and the int32 bias rounding of the
    int8 kernels onnxruntime runs (:func:`~.activations.add_kernel_slack`); the returned
    model holds the quantizers (an fx GraphModule; ``cc.export_onnx`` with the weight
    grid writes it as QDQ that onnxruntime runs with int8 kernels).
    """
    cfg = _config(qcfg)
    if activations is not None:
        folded = fold_batchnorm(model)
        cfg = _restricted(cfg, folded)
        grid = quantization_grid(folded, cfg)
        wq = grid.apply(folded)
        if domain is None and input_shape is None and calibration is not None:
            input_shape = (1,) + tuple(calibration.shape[1:])
        model, qmodel, _ = quantized_pair(folded, wq, activations, calibration, domain)
        add_kernel_slack(qmodel, {q.param: float(q.scale.max())
                                  for q in grid.tensors.values()})
    else:
        qmodel = quantization_grid(model, cfg).apply(model)
    cert = certify(model, qmodel, input_shape, input_radius, reference_inputs=reference_inputs,
                   search_steps=search_steps, search_restarts=search_restarts, seed=seed,
                   domain=domain, methods=methods, arithmetic=arithmetic,
                   propagation=propagation)
    return qmodel, cert
