"""Step 2 of the tutorial: the adapter, from a traced torch.fx node to the IR op.

An adapter subclasses :class:`certcompress.capture.Adapter` and overrides ONE hook,
``_convert(node, ctx)``. The public ``convert`` (never override it) is a template
method: it calls the hook, validates what it returns (an ``IROp``, the op's arity,
float64 parameters for a parametric op and none for a fixed one) and turns any
unexpected exception into an ``Unsupported`` verdict naming the adapter, so a bug here
becomes a clear message, never a wrong graph.

``_convert`` returns ``Converted(op, inputs, params=None, module=None, param_names=())``:

- ``op``: the IR op instance;
- ``inputs``: the fx nodes whose tensors the op consumes, in order. Ask the context for
  them with ``ctx.tensor_arg(arg)``, which refuses an argument that is not a tensor
  computed from the model's input;
- ``params``: for a parametric op only, float64 ``AffineParams`` (``ctx.module_tensor``
  gives float64 copies of a module's tensors);
- ``module``: the module's qualified name, for messages.

To refuse a node, raise ``Unsupported("reason")``: the tracer collects every refused
node of the model and raises one ``UnsupportedModelError`` listing them all, each with
its reason and this adapter's name and plugin.
"""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from certcompress.capture import Adapter, Converted, Unsupported

from .op import ScaledReLUOp

__all__ = ["ScaledReLUAdapter"]


class ScaledReLUAdapter(Adapter):
    """``ScaledReLU`` modules -> :class:`ScaledReLUOp`."""

    # Shown by `registry.entries()` and in error messages.
    name = "scaled-relu"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        # A module adapter sees call_module nodes: node.target is the module's
        # qualified name, ctx.module(node) the module itself, node.args its inputs.
        module = ctx.module(node)
        scale = module.scale
        # Check everything the op's soundness depends on, and say why when refusing.
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise Unsupported(f"ScaledReLU.scale must be a Python number (a fixed weight), "
                              f"got {type(scale).__name__}; a learnable scale needs a "
                              "parametric op")
        if not math.isfinite(scale):
            raise Unsupported(f"ScaledReLU.scale is {scale}")
        return Converted(
            op=ScaledReLUOp(float(scale)),
            inputs=(ctx.tensor_arg(node.args[0]),),
            module=str(node.target),
        )
