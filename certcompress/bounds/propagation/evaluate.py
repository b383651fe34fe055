"""Concrete evaluation of the lowered pair: the values ``z`` (original) and ``c``
(compressed) at every primitive node for given inputs, by each node's rule
(``rules.Rule.evaluate``). Used to check that the lowering
is exact (the outputs equal the models' own) and, in tests and diagnostics, that every
node's value lies within its propagated bounds."""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import PairNet
from .rules import rules_for

__all__ = ["evaluate_pair", "pair_outputs"]


def evaluate_pair(pair: PairNet, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``(z, c)``: per node, the original's and the compressed network's values for the
    inputs ``x`` (``(P, *input_shape)``), float64."""
    x = x.to(torch.float64)
    rules = rules_for(pair)
    zs: list[Tensor] = []
    cs: list[Tensor] = []
    with torch.no_grad():
        for node, rule in zip(pair.nodes, rules):
            z, c = (x, x) if rule.is_input else rule.evaluate(node, zs, cs)
            zs.append(z)
            cs.append(c)
    return zs, cs


def pair_outputs(pair: PairNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """The flattened outputs ``(P, m)`` of the original and the compressed network."""
    zs, cs = evaluate_pair(pair, x)
    n = x.shape[0]
    return (torch.cat([zs[j].reshape(n, -1) for j in pair.outputs], dim=1),
            torch.cat([cs[j].reshape(n, -1) for j in pair.outputs], dim=1))
