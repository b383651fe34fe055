"""Back-substitution (CROWN/DeepPoly): upper bounds of linear forms of the pair.

A *form* at node ``v`` is ``<L_z, z_v> + <L_d, d_v> + const``: ``z`` is the original
network's value, ``d = z - c`` the difference to the compressed network's value ``c``
(a form of the compressed network alone is ``L_z = L``, ``L_d = -L``). Each ``L`` has a
leading row dimension (one form per row). Going backward through the nodes in reverse
topological order, each node's rule (``rules.Rule.backward``) rewrites the form at its
output as a form at its inputs (affine and fixed linear maps exactly, a ReLU through its
relaxation), and the input's rule maximizes the form over the row's box.

Rows belong to problems (``prob[r]``) when there are several input boxes.

Early concretization: whenever every pending form sits at one node ``i`` (a cut of the
graph), the form's maximum over node ``i``'s interval bounds is also an upper bound;
with ``bounds`` given, the result is the smaller of that and the full back-substitution,
row by row (back-substituting further is not always tighter than stopping at a node
whose intervals are already tight). Over ``(z, d)`` and, rewritten with ``z = c + d``,
over ``(c, d)``; the smaller of the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .form import Form, concretize
from .interval import PairBounds
from .primitives import PairNet
from .relax import Relaxation
from .rules import Backward, SplitParams, rules_for

__all__ = ["Form", "backsubstitute", "concretize", "SplitParams"]


def backsubstitute(pair: PairNet, start: Mapping[int, Form],
                   relax: Mapping[int, Relaxation], lower: Tensor, upper: Tensor,
                   prob: Tensor | None, params: SplitParams | None = None,
                   bounds: Sequence[PairBounds] | None = None) -> Tensor:
    """Upper bounds ``(R,)`` of the forms ``start`` (at one or more nodes, the same rows)
    over the input boxes ``lower``/``upper`` (``(P, *input_shape)``). ``params[node]``
    optionally gives per-row ``theta``, ``alpha_z``, ``alpha_c`` at a ReLU node.
    ``bounds`` (every node's interval bounds) enables early concretization at cuts."""
    rules = rules_for(pair)
    ctx = Backward({k: Form(dict(f.coef), f.const) for k, f in start.items()}, relax,
                   lower, upper, prob, params)
    pending = ctx.pending
    total: Tensor | None = None
    early: Tensor | None = None
    for i in range(max(pending), -1, -1):
        if bounds is not None and len(pending) == 1 and i in pending and i > 0 \
                and i < len(bounds):
            v = concretize(pending[i], bounds[i], prob)
            early = v if early is None else torch.minimum(early, v)
        form = pending.pop(i, None)
        if form is None:
            continue
        value = rules[i].backward(pair.nodes[i], i, form, ctx)
        if value is not None:
            total = value
    if total is None:
        raise RuntimeError("back-substitution did not reach the input")
    return total if early is None else torch.minimum(total, early)
