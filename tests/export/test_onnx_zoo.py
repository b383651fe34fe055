"""Real architectures (random weights, 64x64 inputs): torchvision ResNet-18 pruned and
quantized, ResNet-18 physically smaller after structured pruning, an smp U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from _onnx_helpers import certify, inputs, pruned, quantized

import certcompress as cc
from certcompress.compress.pruning import prune_channels
from certcompress.export import export_onnx, verify_onnx
from certcompress.export.qdq import dequantized_weights

pytestmark = pytest.mark.slow

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), inputs(SHAPE, n=4)


def _initializer_elements(path: Path) -> int:
    m = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer)


def test_resnet18_pruned_and_quantized(resnet: tuple[torch.nn.Module, torch.Tensor],
                                       tmp_path: Path) -> None:
    model, x = resnet
    bits = {name: (4 if name.startswith("layer4") else 8)
            for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                   torch.nn.Linear))}
    comp, grid = quantized(pruned(model, 0.3), bits)
    cert = certify(model, comp, SHAPE, x, steps=0)
    path = tmp_path / "resnet18_q.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                         grids=grid, search_steps=1, search_restarts=1)
    assert report.passed
    storage = {r["name"]: r["storage"] for r in report.quantized}
    assert len(storage) == 21
    assert {storage[n] for n in storage if n.startswith("layer4")} == {"int4"}
    assert {storage[n] for n in storage if not n.startswith("layer4")} == {"int8"}
    # about 11.7M weights at 4-8 bits instead of 32: the file is less than a third
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert report.file_bytes < float_bytes / 3
    deq = dequantized_weights(onnx.load(str(path)))
    params = dict(comp.named_parameters())
    for name in grid.tensors:
        assert deq[name].tobytes() == params[name].detach().numpy().tobytes()
    again = verify_onnx(path, original=model, inputs=x, search_steps=1, search_restarts=1)
    assert again.passed and again.search.endswith("file's weights")


def test_resnet18_structured_is_physically_smaller(
        resnet: tuple[torch.nn.Module, torch.Tensor], tmp_path: Path) -> None:
    model, x = resnet
    result = prune_channels(model, 0.3, input_shape=SHAPE, input_radius=1.0, round_to=8,
                            reference_inputs=x, search_steps=0)
    path = tmp_path / "resnet18_s.onnx"
    # the certificate is about the zeroed equivalent; the file holds the smaller model
    with pytest.raises(cc.VerificationError, match="pass certified="):
        export_onnx(result.model, path, certificate=result.certificate)
    report = export_onnx(result.model, path, certificate=result.certificate,
                         reference_inputs=x, original=model, certified=result.zeroed,
                         search_steps=1, search_restarts=1)
    assert report.passed
    n_orig = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in result.model.parameters())
    assert n_small < 0.7 * n_orig
    assert _initializer_elements(path) < 0.7 * n_orig
    assert report.file_bytes < 0.7 * 4 * n_orig
    again = verify_onnx(path, original=model, compressed=result.model, inputs=x,
                        search_steps=1, search_restarts=1)
    assert again.passed


def test_unet_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None).eval()
    comp = pruned(model, 0.3)
    x = inputs(SHAPE, n=3)
    cert = certify(model, comp, SHAPE, x, steps=0)
    path = tmp_path / "unet.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                         search_steps=1, search_restarts=1)
    assert report.passed and report.outputs == 64 * 64
    assert {c.name: c.status for c in report.checks}["bound"] == "passed"
