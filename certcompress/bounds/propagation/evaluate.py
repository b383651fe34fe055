"""Concrete evaluation of the lowered pair: the values ``z`` (original) and ``c``
(compressed) at every primitive node for given inputs. Used to check that the lowering
is exact (the outputs equal the models' own) and, in tests and diagnostics, that every
node's value lies within its propagated bounds."""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import PAffine, PairNet, PInput, PLinear, PPerturb, PReLU

__all__ = ["evaluate_pair", "pair_outputs"]


def evaluate_pair(pair: PairNet, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``(z, c)``: per node, the original's and the compressed network's values for the
    inputs ``x`` (``(P, *input_shape)``), float64."""
    x = x.to(torch.float64)
    zs: list[Tensor] = []
    cs: list[Tensor] = []
    with torch.no_grad():
        for node in pair.nodes:
            if isinstance(node, PInput):
                z, c = x, x
            elif isinstance(node, PAffine):
                z = node.apply(zs[node.inputs[0]], node.w) + node.bias
                c = node.apply(cs[node.inputs[0]], node.wc) + node.bias_c
            elif isinstance(node, PLinear):
                z = node.apply([zs[j] for j in node.inputs])
                c = node.apply([cs[j] for j in node.inputs])
                if node.const is not None:
                    z, c = z + node.const, c + node.const
            elif isinstance(node, PReLU):
                z, c = zs[node.inputs[0]].clamp(min=0), cs[node.inputs[0]].clamp(min=0)
            elif isinstance(node, PPerturb):  # e = 0: one of the values it allows
                z, c = zs[node.inputs[0]], cs[node.inputs[0]]
            else:
                raise TypeError(f"no evaluation rule for {type(node).__name__}")
            zs.append(z)
            cs.append(c)
    return zs, cs


def pair_outputs(pair: PairNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """The flattened outputs ``(P, m)`` of the original and the compressed network."""
    zs, cs = evaluate_pair(pair, x)
    n = x.shape[0]
    return (torch.cat([zs[j].reshape(n, -1) for j in pair.outputs], dim=1),
            torch.cat([cs[j].reshape(n, -1) for j in pair.outputs], dim=1))
