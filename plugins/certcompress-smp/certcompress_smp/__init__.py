"""certcompress plugin for segmentation_models_pytorch (smp).

Model spec (``smp`` prefix)::

    smp:ARCH[:ENCODER][?KEY=VALUE[&KEY=VALUE...]]

``ARCH`` is an smp architecture (``Unet``, ``FPN``, ``Linknet``, ...; case-insensitive),
``ENCODER`` an smp encoder name (default ``resnet34``, smp's own default). Options are
keyword arguments of ``segmentation_models_pytorch.create_model``: ``classes``
(default 1), ``in_channels`` (default 3), ``encoder_depth``, ``decoder_channels``, ...:
the architecture's named parameters and those of ``smp.encoders.get_encoder``; an
unknown option is refused (smp would silently ignore it). ``encoder=NAME`` is another
way to name the encoder. Values are read as int, float, ``true``/``false``, ``none``, a
comma-separated tuple (``decoder_channels=128,64,32,16,8``), or else a string.
Examples::

    smp:Unet                           Unet, resnet34 encoder, 1 class
    smp:Unet:resnet18                  Unet, resnet18 encoder
    smp:Unet?encoder=resnet18&classes=2
    smp:FPN:resnet34?classes=5&in_channels=1

The model is built with ``encoder_weights=None`` in eval mode: nothing is downloaded
(``encoder_weights`` other than ``none`` is refused); trained weights come from a state
dict. Errors are :class:`~certcompress.errors.ModelLoadError` naming the spec, with the
closest architecture or encoder names.

Input spec for smp models with 3 input channels: ``(1, 3, 256, 256)`` (divisible by 32,
as smp encoders of depth 5 need) and the ImageNet-normalization radius 2.64, the
preprocessing smp's ImageNet encoders use. No adapters: U-Nets (resnet encoders) trace
with the built-in ones (max-pooling, nearest upsampling, concatenation, BatchNorm).

smp is imported lazily, when an ``smp:`` spec is resolved (importing it takes seconds).
"""

from __future__ import annotations

import difflib
import inspect
import sys
from typing import Any

from torch import nn

from certcompress.capture import Plugin
from certcompress.domain import InputSpec, normalized_radius
from certcompress.errors import ModelLoadError

__all__ = ["SmpPlugin", "SmpSpec", "parse_spec", "IMAGENET_MEAN", "IMAGENET_STD",
           "INPUT_SHAPE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SHAPE = (1, 3, 256, 256)
DEFAULT_ENCODER = "resnet34"

_PREFIX = "smp"
_SYNTAX = "smp:ARCH[:ENCODER][?KEY=VALUE&...] (e.g. smp:Unet:resnet18?classes=2)"


class SmpSpec:
    """A parsed ``smp:`` spec: architecture, encoder and keyword options."""

    __slots__ = ("arch", "encoder", "options")

    def __init__(self, arch: str, encoder: str, options: dict[str, Any]) -> None:
        self.arch = arch
        self.encoder = encoder
        self.options = options

    def __repr__(self) -> str:
        return f"SmpSpec(arch={self.arch!r}, encoder={self.encoder!r}, options={self.options!r})"


def _value(text: str) -> Any:
    if "," in text:
        return tuple(_value(part.strip()) for part in text.split(","))
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> SmpSpec:
    """Parse ``smp:ARCH[:ENCODER][?KEY=VALUE&...]``; :class:`ModelLoadError` if malformed."""
    prefix, _, rest = spec.partition(":")
    if prefix != _PREFIX:
        raise ModelLoadError(f"'{spec}' is not an smp spec: expected {_SYNTAX}")
    head, _, query = rest.partition("?")
    parts = head.split(":")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ModelLoadError(f"malformed smp spec '{spec}': expected {_SYNTAX}")
    arch = parts[0]
    options: dict[str, Any] = {}
    for item in query.split("&") if query else []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ModelLoadError(f"malformed option '{item}' in smp spec '{spec}': options "
                                 "are KEY=VALUE joined by '&'")
        key = "encoder_name" if key == "encoder" else key
        if key in options:
            raise ModelLoadError(f"option '{key}' given twice in smp spec '{spec}'")
        options[key] = _value(text.strip())
    encoder = parts[1] if len(parts) == 2 else None
    named = options.pop("encoder_name", None)
    if encoder is not None and named is not None and named != encoder:
        raise ModelLoadError(f"smp spec '{spec}' names two encoders ('{encoder}' and "
                             f"'{named}'): give it once")
    encoder = encoder or named or DEFAULT_ENCODER
    if not isinstance(encoder, str):
        raise ModelLoadError(f"smp spec '{spec}': the encoder must be a name, got {encoder!r}")
    if options.get("encoder_weights", None) is not None:
        raise ModelLoadError(f"smp spec '{spec}': encoder_weights={options['encoder_weights']} "
                             "would download weights; certcompress builds models with "
                             "encoder_weights=None and loads trained weights from a state "
                             "dict")
    options.pop("encoder_weights", None)
    return SmpSpec(arch, encoder, options)


_RESERVED = {"encoder_name", "encoder_weights", "name", "weights"}


def _keywords(fn: Any) -> set[str]:
    """Named keyword parameters of ``fn`` (not ``self``, ``*args`` or ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "self"} - _RESERVED


class SmpPlugin(Plugin):
    """Model specs ``smp:...`` (module docstring) and the input spec of smp models."""

    name = "certcompress-smp"
    model_prefixes = (_PREFIX,)

    def resolve_model(self, spec: str) -> nn.Module | None:
        """Build the smp model ``spec`` names with random weights, in eval mode."""
        if spec.partition(":")[0] != _PREFIX:
            return None
        parsed = parse_spec(spec)
        import segmentation_models_pytorch as smp

        archs = {cls.__name__.lower(): cls.__name__
                 for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}
        if parsed.arch.lower() not in archs:
            close = difflib.get_close_matches(parsed.arch.lower(), list(archs), n=3, cutoff=0.5)
            hint = f"closest: {', '.join(archs[c] for c in close)}; " if close else ""
            raise ModelLoadError(f"smp has no architecture '{parsed.arch}' (spec '{spec}'); "
                                 f"{hint}available: {', '.join(sorted(archs.values()))}")
        encoders = list(smp.encoders.get_encoder_names())
        if not parsed.encoder.startswith("tu-") and parsed.encoder not in encoders:
            close = difflib.get_close_matches(parsed.encoder, encoders, n=5, cutoff=0.5)
            hint = (f"closest: {', '.join(close)}" if close else
                    "see segmentation_models_pytorch.encoders.get_encoder_names()")
            raise ModelLoadError(f"smp has no encoder '{parsed.encoder}' (spec '{spec}'); "
                                 f"{hint}")
        arch_cls = smp.MODEL_ARCHITECTURES_MAPPING[parsed.arch.lower()]
        unknown = sorted(set(parsed.options) - _keywords(arch_cls.__init__)
                         - _keywords(smp.encoders.get_encoder))
        if unknown and not parsed.encoder.startswith("tu-"):  # timm encoders take more
            raise ModelLoadError(
                f"smp spec '{spec}': unknown option(s) {', '.join(unknown)} for "
                f"{arch_cls.__name__}; options: "
                f"{', '.join(sorted(_keywords(arch_cls.__init__) - _RESERVED))}")
        try:
            model = smp.create_model(parsed.arch, encoder_name=parsed.encoder,
                                     encoder_weights=None, **parsed.options)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"smp could not build '{spec}' ({archs[parsed.arch.lower()]}, "
                                 f"encoder {parsed.encoder}, options {parsed.options}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        return model.eval()

    def input_spec(self, model: nn.Module) -> InputSpec | None:
        """``(1, 3, 256, 256)``, radius 2.64 (ImageNet normalization) for smp models with
        3 input channels; None otherwise (no statistics are known for other inputs)."""
        base = sys.modules.get("segmentation_models_pytorch.base")
        if base is None or not isinstance(model, base.SegmentationModel):
            return None
        if getattr(getattr(model, "encoder", None), "_in_channels", 3) != 3:
            return None
        return InputSpec(
            input_shape=INPUT_SHAPE,
            radius=normalized_radius(IMAGENET_MEAN, IMAGENET_STD),
            description=(f"ImageNet normalization: pixels in [0, 1], mean {IMAGENET_MEAN}, "
                         f"std {IMAGENET_STD}"),
        )
