"""Step 1 of the tutorial: the IR op, i.e. the ReLU-DAG this module computes.

An IR op is a frozen dataclass subclassing :class:`certcompress.ir.ops.IROp`. It
states two maps, and every bound certcompress computes is built from them:

``forward(inputs, params)``
    The real function, exactly as the module computes it. certcompress uses it to
    evaluate the traced graph (``Graph.run``) and to check the trace against the model.

``magnitude(inputs, params, constants)``
    The op in the *path-magnitude domain*: the map whose weights are the ABSOLUTE
    VALUES of the op's DAG edge weights, applied to non-negative inputs. Feeding an
    all-ones input through every op's magnitude map sums ``prod |weight|`` over all
    paths: the l1 path-norm, and (with two parameter sets) the path-metric that bounds
    the output deviation. This is why ``magnitude`` must be exactly the
    absolute-weight map of the DAG the op stands for -- not a Lipschitz constant, not
    ``|forward(x)|``: anything smaller would make certificates unsound (a deviation
    larger than the certified bound), anything else would break the theory's
    invariances. For ReLU neurons the magnitude map is the identity (all values are
    >= 0 in this domain, so the ReLU is inactive as a gate).

``constants`` says whether to add the op's fixed *bias* terms (a clamp's bounds, a
scalar added to a tensor): ``magnitude`` must be affine in its inputs, a linear part
plus ``|bias|`` terms added only when ``constants`` is true. The engine calls it with
``constants=False`` for differences of path-norms and calls ``magnitude(zeros, None,
True)`` to get the constant part on its own. ``ScaledReLU`` has no bias, so it ignores
the flag.

``params`` is always None for a *fixed* op like this one: its only weight, ``scale``, is
an attribute of the op, identical in the original and the compressed model. (A
*parametric* op subclasses ``AffineOp`` and gets its weights from ``params``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from certcompress.ir.ops import AffineParams, IROp, NodeKind

__all__ = ["ScaledReLUOp"]


@dataclass(frozen=True)  # frozen: ops are values, compared and hashed by their fields
class ScaledReLUOp(IROp):
    """``scale * relu(z)``: a ReLU neuron, then an identity neuron with incoming weight
    ``scale``. Magnitude: ``|scale| * x`` (the ReLU is the identity on ``x >= 0``)."""

    # What the node is in the theory's vocabulary (graph summaries group by it).
    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION
    # Number of tensor inputs; the default is 1. Use None for "any number" (like cat).
    arity: ClassVar[int | None] = 1

    scale: float

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        # The real function: must agree with ScaledReLU.forward for every input.
        return torch.relu(inputs[0]) * self.scale

    def magnitude(self, inputs: Sequence[Tensor], params: AffineParams | None,
                  constants: bool) -> Tensor:
        # The absolute-weight map on non-negative inputs: the ReLU edge has weight 1,
        # the scaling edge weight |scale|. No bias, so `constants` adds nothing.
        return inputs[0] * abs(self.scale)

    def describe(self) -> str:
        # Shown in graph summaries, and compared between the original and the
        # compressed graph: include every fixed attribute, so that two models with
        # different scales are reported as different architectures.
        return f"ScaledReLU({self.scale})"
