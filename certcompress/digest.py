"""SHA-256 digests of model parameters (what a certificate is about)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["parameter_digest"]


def parameter_digest(model: nn.Module | torch.export.ExportedProgram) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes, in name
    order. Equal digests mean the same weights (for the same architecture code)."""
    if isinstance(model, torch.export.ExportedProgram):
        state = dict(model.state_dict)
    else:
        state = dict(model.state_dict(keep_vars=False))
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
