"""certcompress plugin for torchvision classification models.

``torchvision:NAME`` builds ``torchvision.models.get_model(NAME, weights=None)`` in eval
mode (random weights: nothing is downloaded; trained weights come from a state dict,
``--weights``). For the families inside the ReLU-DAG class (ResNet, VGG, AlexNet,
MobileNetV2) the plugin knows the input: ``(1, 3, 224, 224)`` ImageNet-normalized
images, whose entries lie in ``[-2.64, 2.64]`` for pixels in ``[0, 1]``.

One adapter is registered: ``torchvision.ops.StochasticDepth`` and
``stochastic_depth``, which are the identity in eval mode (EfficientNet, ConvNeXt,
Swin...). Everything else in these families traces with the built-in adapters
(ResNet's residual ``+=``, MobileNetV2's ReLU6, adaptive average pooling, Dropout).

torchvision is imported lazily: when a ``torchvision:`` spec is resolved; the adapter is
registered once torchvision has been imported (by the user, or by resolving a spec), never
when certcompress starts.
"""

from __future__ import annotations

import difflib
import sys

from torch import nn

from certcompress.capture import Adapter, Plugin
from certcompress.capture.adapters.base import Converted, Unsupported
from certcompress.domain import InputSpec, normalized_radius
from certcompress.errors import ModelLoadError
from certcompress.ir.ops import IndexOp

__all__ = ["TorchvisionPlugin", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_INPUT_SHAPE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_INPUT_SHAPE = (1, 3, 224, 224)

_PREFIX = "torchvision"


def _identity(x):  # type: ignore[no-untyped-def]
    return x


class StochasticDepthAdapter(Adapter):
    """``StochasticDepth`` / ``stochastic_depth``: the identity in eval mode (or p = 0);
    in training mode it drops residual branches at random, which is refused."""

    name = "stochastic_depth"

    def _convert(self, node, ctx):  # type: ignore[no-untyped-def]
        if node.op == "call_module":
            m = ctx.module(node)
            training, p = m.training, float(m.p)
        else:
            a = ctx.bind(node, ("input", "p", "mode", "training"), {"training": True})
            training, p = bool(ctx.value(a["training"])), float(ctx.value(a["p"]))
        if training and p > 0:
            raise Unsupported("stochastic depth in training mode drops branches at random; "
                              "call model.eval()")
        return Converted(IndexOp("Identity", _identity, "stochastic depth (eval)"),
                         (ctx.tensor_arg(node.args[0]),))


def _register_stochastic_depth(registry) -> None:  # type: ignore[no-untyped-def]
    from torchvision.ops import StochasticDepth, stochastic_depth  # heavy: imported already

    adapter = StochasticDepthAdapter()
    registry.register_module(StochasticDepth, adapter)
    registry.register_function([stochastic_depth], adapter)


class TorchvisionPlugin(Plugin):
    """Model specs ``torchvision:NAME`` and the ImageNet input spec of four families."""

    name = "certcompress-torchvision"
    model_prefixes = (_PREFIX,)

    def register_adapters(self, registry) -> None:  # type: ignore[no-untyped-def]
        """Eval-mode stochastic depth as the identity, registered once torchvision is
        imported (a model holding its modules cannot exist before; importing it here
        would add about 2 s to every command, ONNX models included)."""
        registry.register_when_imported("torchvision", _register_stochastic_depth)

    def resolve_model(self, spec: str) -> nn.Module | None:
        """Build ``torchvision:NAME`` with random weights, in eval mode.

        Raises :class:`~certcompress.errors.ModelLoadError` for a missing or unknown
        name, listing the closest torchvision model names.
        """
        prefix, sep, name = spec.partition(":")
        if prefix != _PREFIX:
            return None
        from torchvision import models

        available = sorted(models.list_models())
        if not sep or not name:
            raise ModelLoadError(f"model spec '{spec}' names no model: use torchvision:NAME "
                                 f"with NAME one of torchvision.models.list_models() "
                                 f"(e.g. torchvision:resnet18)")
        if name not in available:
            close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
            hint = (f"closest: {', '.join(close)}" if close else
                    f"{len(available)} names are available, e.g. "
                    f"{', '.join(available[:5])}")
            raise ModelLoadError(f"torchvision has no model '{name}' (spec '{spec}'); "
                                 f"{hint}; see torchvision.models.list_models()")
        return models.get_model(name, weights=None).eval()

    def input_spec(self, model: nn.Module) -> InputSpec | None:
        """``(1, 3, 224, 224)``, radius 2.64 (ImageNet normalization) for ResNet, VGG,
        AlexNet and MobileNetV2 models; None for anything else."""
        models = sys.modules.get("torchvision.models")
        if models is None:  # torchvision never imported: the model cannot be one of its
            return None
        families = (models.ResNet, models.VGG, models.AlexNet, models.MobileNetV2)
        if not isinstance(model, families):
            return None
        radius = normalized_radius(IMAGENET_MEAN, IMAGENET_STD)
        return InputSpec(
            input_shape=IMAGENET_INPUT_SHAPE,
            radius=radius,
            description=(f"ImageNet normalization: pixels in [0, 1], mean {IMAGENET_MEAN}, "
                         f"std {IMAGENET_STD}"),
        )
