"""SHA-256 digests of model parameters (what a certificate is about)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["parameter_digest", "model_state", "state_digest"]


def parameter_digest(model: nn.Module | torch.export.ExportedProgram) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes, in name
    order. Equal digests mean the same weights (for the same architecture code)."""
    return state_digest(model_state(model))


def model_state(model: nn.Module | torch.export.ExportedProgram) -> dict[str, object]:
    """The parameters and buffers of ``model`` by name: references to the tensors (no
    copy), which stay valid when a module's attributes are swapped afterwards (e.g. to
    meta tensors while tracing), so :func:`state_digest` may hash them in another thread."""
    if isinstance(model, torch.export.ExportedProgram):
        return dict(model.state_dict)
    return dict(model.state_dict(keep_vars=False))


def state_digest(state: Mapping[str, object]) -> str:
    """:func:`parameter_digest` of a :func:`model_state` snapshot."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():  # the tensor's bytes, hashed in place (no copy)
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
