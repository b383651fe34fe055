"""Step 0 of the tutorial: the PyTorch module certcompress does not know.

``ScaledReLU(scale)`` computes ``scale * relu(x)``. Its ``forward`` is written with a
comparison and ``torch.where``, as real code often is; torch.fx records those calls
(``gt``, ``where``), and certcompress has no adapter for them: a comparison is not an
op of a ReLU-DAG. Without this plugin, tracing a model that uses ``ScaledReLU`` fails
with an :class:`~certcompress.errors.UnsupportedModelError` naming both nodes.

Yet the *function* is inside the ReLU-DAG class: one ReLU neuron per element, followed
by an identity neuron whose single incoming edge has the fixed weight ``scale``. The
plugin tells certcompress so: an adapter (adapter.py) maps every ``ScaledReLU`` module
to one IR op (op.py) that states that DAG.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ScaledReLU"]


class ScaledReLU(nn.Module):
    """``scale * relu(x)``, elementwise, for a fixed real ``scale`` (not a parameter).

    ``scale`` is a plain Python float on purpose: it is a *fixed* weight of the DAG,
    the same in the original and the compressed model. A learnable scale would be a
    parameter that compression may change, which needs a parametric op instead
    (docs/adding-an-adapter.md, "Parametric or fixed").
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x * self.scale, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
