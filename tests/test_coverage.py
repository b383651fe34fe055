"""Coverage over real architectures: every torchvision classification and segmentation
model and every smp architecture is traced at a size it accepts, and the outcome
(supported, or refused with its grouped reasons) is compared with the checked-in
expectation file tests/golden/coverage.json. A change in either direction fails, and so
does any crash (an exception that is not a clear refusal).

The models are built with their parameters and buffers on the meta device (shapes only,
no memory, no initialization cost): tracing needs only shapes, and the trace-time
equivalence check is skipped for meta models. Regenerate the expectation file after an
intended change with ``CERTCOMPRESS_REGEN_COVERAGE=1 pytest tests/test_coverage.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.errors import UnsupportedModelError

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden" / "coverage.json"


@contextlib.contextmanager
def meta_weights() -> Iterator[None]:
    """Register every parameter and buffer on the meta device while a model is built
    (its initializers then run on meta tensors, for free)."""
    reg_p, reg_b = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        reg_p(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), param.requires_grad)

    def buffer(self: nn.Module, name: str, tensor: torch.Tensor | None,
               persistent: bool = True) -> None:
        reg_b(self, name, tensor if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter = parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = reg_p  # type: ignore[method-assign]
        nn.Module.register_buffer = reg_b  # type: ignore[method-assign]


def _cases() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    import segmentation_models_pytorch as smp
    import torchvision

    cases: dict[str, tuple[Callable[[], nn.Module], int]] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        size = (299 if name == "inception_v3" else
                224 if name.startswith(("vit", "swin", "maxvit")) else 64)
        cases[f"torchvision:{name}"] = (
            lambda n=name: torchvision.models.get_model(n, weights=None), size)
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        cases[f"torchvision.segmentation:{name}"] = (
            lambda n=name: torchvision.models.get_model(n, weights=None, weights_backbone=None,
                                                        aux_loss=False), 64)
    for arch in ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3",
                 "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT"):
        kwargs: dict[str, object] = {"encoder_weights": None}
        size = 128 if arch == "PAN" else 64  # PAN's pyramid needs 128 (64 is too small)
        if arch == "DPT":
            kwargs["encoder_name"] = "tu-vit_tiny_patch16_224"
            size = 224
        cases[f"smp:{arch}"] = (lambda a=arch, kw=kwargs: getattr(smp, a)(**kw), size)
    return cases


def outcome(make: Callable[[], nn.Module], size: int) -> str:
    try:
        with warnings.catch_warnings(), meta_weights():
            warnings.simplefilter("ignore")
            model = make().eval()
    except Exception as exc:  # a constructor that needs real tensors
        return f"not built: {type(exc).__name__}"
    try:
        cc.trace(model, (1, 3, size, size))
    except UnsupportedModelError as exc:
        kinds = sorted(k.value for k in exc.kinds)
        groups = sorted({o.group or o.target for o in exc.offenders})
        if not exc.offenders:  # a whole-model refusal (capture failed, input too small)
            return f"refused: {str(exc).splitlines()[0][:100]}"
        return f"refused [{', '.join(kinds)}]: {', '.join(groups)}"
    except Exception as exc:
        return f"crash: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return "supported"


def test_coverage_matches_the_expectation_file() -> None:
    got = {name: outcome(make, size) for name, (make, size) in _cases().items()}
    counts = {k: sum(v.startswith(k) for v in got.values())
              for k in ("supported", "refused", "crash", "not built")}
    if os.environ.get("CERTCOMPRESS_REGEN_COVERAGE"):
        GOLDEN.write_text(json.dumps({"counts": counts, "models": got}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["models"]
    crashes = {k: v for k, v in got.items() if v.startswith(("crash", "not built"))}
    assert not crashes, f"crashes: {crashes}"
    changed = {k: (expected.get(k), got.get(k)) for k in set(expected) | set(got)
               if expected.get(k) != got.get(k)}
    assert not changed, ("coverage changed (expected, got); if intended, regenerate with "
                         f"CERTCOMPRESS_REGEN_COVERAGE=1: {json.dumps(changed, indent=1)}")
