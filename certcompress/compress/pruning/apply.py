"""Apply a plan: a zeroed copy of the model and its certificate."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...api import certify
from ...bounds.propagation.engine import PropagationOptions
from ...certificate import Certificate
from ...domain import InputDomain
from ...errors import ConfigurationError
from ._layers import input_shape_for, prunable_layers
from .criteria import Masks
from .plan import PruningPlan

__all__ = ["prune", "apply_masks"]


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose pruned weights (mask False) are set to +0.0; the
    model itself is never modified."""
    params = {ly.name: ly.param for ly in prunable_layers(model)}
    unknown = [k for k in masks if k not in params]
    if unknown:
        raise ConfigurationError(f"mask for unknown layer {unknown[0]!r}")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, keep in masks.items():
            w = pruned.get_parameter(params[name])
            if tuple(keep.shape) != tuple(w.shape):
                raise ConfigurationError(f"mask of layer {name!r} has shape "
                                         f"{tuple(keep.shape)}, the weight {tuple(w.shape)}")
            w.masked_fill_(~keep.to(device=w.device, dtype=torch.bool), 0.0)
    return pruned


def prune(model: nn.Module, plan: PruningPlan, input_shape: Sequence[int] | None = None,
          input_radius: float | None = None, *, reference_inputs: Tensor | None = None,
          search_steps: int = 20, search_restarts: int = 4, seed: int = 0,
          arithmetic: str = "exact", domain: InputDomain | None = None,
          methods: Sequence[str] | None = None,
          propagation: PropagationOptions | None = None) -> tuple[nn.Module, Certificate]:
    """Prune ``model`` by ``plan`` and certify it.

    Returns ``(pruned, certificate)``: ``pruned`` is a deep copy with the pruned weights
    zeroed (``model`` is not modified); the certificate bounds
    ``max_{||x||_inf <= input_radius} ||model(x) - pruned(x)||_1`` for inputs of
    ``input_shape`` (default: the plan's, else a plugin's) with an exact path-metric
    (pruning keeps or removes whole paths), next to the deviation measured on
    ``reference_inputs`` and found by ``search_steps`` of projected gradient ascent (see
    :func:`certcompress.certify`; ``arithmetic="float32"`` certifies the models as
    executed in float32). ``domain`` (an :class:`~certcompress.InputDomain` box, which
    replaces ``input_radius`` and gives the input shape), ``methods`` (the tiers) and
    ``propagation`` are passed to :func:`certcompress.certify`.
    """
    if input_shape is None:
        input_shape = plan.input_shape if domain is None else domain.shape
    shape = input_shape_for(model, input_shape, "the certificate")
    masks: Masks = plan.masks(model, shape)
    pruned = apply_masks(model, masks)
    cert = certify(model, pruned, shape, input_radius,
                   reference_inputs=reference_inputs, search_steps=search_steps,
                   search_restarts=search_restarts, seed=seed, arithmetic=arithmetic,
                   domain=domain, methods=methods, propagation=propagation)
    return pruned, cert
