"""Step 3 of the tutorial: the lowering, which lets the bounds tier propagate through the op.

The path-metric tier needs only the op's ``magnitude`` (step 1). The bounds tier
(``certify(..., domain=...)``, run by default) propagates intervals and linear forms
through a network of three *primitive* node kinds: a parametric affine map, a fixed
linear map plus a constant, and ``max(., 0)``. A lowering rewrites one IR node into
these, exactly: the primitives must compute the op's ``forward`` for every input, or
the bounds are wrong. Without a lowering for its op kind a model is refused by the
bounds tier (an ``UnsupportedModelError`` naming every such node; the path-metric tier
still runs).

A lowering is a function ``(node, op, inputs, builder) -> index``. ``inputs`` are the
primitive indices of the IR node's inputs; the builder appends primitives and returns
their index:

- ``builder.relu(i, source)``: ``max(x_i, 0)``;
- ``builder.combination(inputs, coeffs, source, const=0.0)``:
  ``sum_k coeffs[k] * x_{inputs[k]} + const`` (fixed weights, the same in both models);
- ``builder.linear(inputs, fn, abs_fn, source, const=None)``: any fixed linear map ``fn``
  of per-sample tensors, ``abs_fn`` the same map with absolute weights.

Return the index of the node holding the op's output (its shape must be the IR
node's). The plugin registers the function for its op type in
``register_lowerings(registry)`` (plugin.py): one function, one registration.

``ScaledReLU`` is the DAG the op states: a ReLU neuron, then an identity neuron with the
fixed weight ``scale``.
"""

from __future__ import annotations

from certcompress.bounds.propagation.lowering import Builder
from certcompress.ir.graph import IRNode
from certcompress.ir.ops import IROp

from .op import ScaledReLUOp

__all__ = ["lower_scaled_relu"]


def lower_scaled_relu(node: IRNode, op: IROp, inputs: list[int], builder: Builder) -> int:
    """``scale * relu(z)`` as ``relu`` then a one-term combination with weight ``scale``."""
    assert isinstance(op, ScaledReLUOp)  # registered for this op type only
    r = builder.relu(inputs[0], node.name)
    return builder.combination([r], (op.scale,), node.name)
