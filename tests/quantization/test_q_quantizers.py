"""Quantizers: values on their grid, signs never flip, zeros stay zero, onnxruntime's
int8 per-channel grid reproduced bit for bit, and clear errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certcompress.compress.quantization import QuantConfig, quantization_grid
from certcompress.compress.quantization.quantizers import (
    QuantizedWeights,
    affine_layers,
    channel_axis,
    qmax,
    quantize_tensor,
)
from certcompress.errors import ConfigurationError, SoundnessError

BITS = [2, 3, 4, 5, 6, 7, 8, 16]


def _tensor(seed: int, shape: tuple[int, ...], zeros: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.exp(2 * torch.randn(shape, generator=g))
    w[torch.rand(shape, generator=g) < zeros] = 0.0
    w.view(-1)[:3] = torch.tensor([1e-30, -1e-30, 0.0])  # tiny values round to zero
    return w


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from(BITS),
       granularity=st.sampled_from(["per-channel", "per-tensor"]),
       shape=st.sampled_from([(5, 7), (4, 3, 3, 3), (3, 6, 2), (6,)]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_values_lie_on_the_grid_and_keep_signs(seed: int, bits: int, granularity: str,
                                               shape: tuple[int, ...], dtype: torch.dtype) -> None:
    w = _tensor(seed, shape).to(dtype)
    q = quantize_tensor(w, bits, granularity, 0, param="w", layer="m")
    v = q.values()
    assert v.dtype == dtype and v.shape == w.shape
    assert q.codes.dtype == (torch.int8 if bits <= 8 else torch.int16)
    assert int(q.codes.abs().max()) <= qmax(bits)
    # on the grid, bit for bit: value = code * scale of its channel
    s = q.scale.reshape((-1,) + (1,) * (w.dim() - 1)) if q.axis == 0 else q.scale
    assert torch.equal(v, q.codes.to(dtype) * s)
    assert bool((torch.sign(v) * torch.sign(w) >= 0).all()), "a sign flipped"
    assert bool((v[w == 0] == 0).all()), "a zero moved"
    # round to nearest: within half a step of the original
    err = (v.double() - w.double()).abs()
    eps = torch.finfo(dtype).eps
    assert bool((err <= 0.5 * s.double() + 4 * eps * (w.double().abs() + s.double())).all())
    # the largest magnitude of each channel is on the grid's end point
    if granularity == "per-channel" and w.dim() >= 2:
        assert q.axis == 0 and q.scale.numel() == shape[0]
        top = q.codes.abs().reshape(shape[0], -1).amax(1)
        nonzero = w.abs().reshape(shape[0], -1).amax(1) > 0
        assert bool((top[nonzero] == qmax(bits)).all())
    else:
        assert q.axis is None and q.scale.numel() == 1


def test_all_zero_channel_gets_scale_one_and_zero_codes() -> None:
    w = torch.randn(4, 5)
    w[2] = 0.0
    q = quantize_tensor(w, 4, "per-channel", 0, param="w", layer="m")
    assert float(q.scale[2]) == 1.0 and not q.codes[2].any()


@pytest.mark.parametrize("module,axis", [
    (nn.Linear(6, 4), 0), (nn.Conv1d(3, 5, 3), 0), (nn.Conv2d(2, 4, 3), 0),
    (nn.Conv3d(2, 3, 2), 0), (nn.ConvTranspose2d(3, 4, 3), 1),
    (nn.ConvTranspose1d(4, 6, 2, groups=2), 1)])
def test_every_affine_layer_type_is_quantized_per_output_channel(module: nn.Module,
                                                                  axis: int) -> None:
    model = nn.Sequential(module).eval()
    assert list(affine_layers(model)) == ["0"] and channel_axis(module) == axis
    grid = quantization_grid(model, QuantConfig.uniform(model, 5))
    q = grid.tensors["0.weight"]
    assert q.axis == axis and q.scale.numel() == module.weight.shape[axis]
    qmodel = grid.apply(model)
    assert torch.equal(qmodel[0].weight, q.values())
    assert torch.equal(qmodel[0].bias, module.bias)  # biases stay in float by default
    assert not torch.equal(module.weight, q.values())  # the input model is untouched


def test_biases_are_quantized_on_request() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    grid = quantization_grid(model, QuantConfig.uniform(model, 8, bias_bits=6))
    assert set(grid.tensors) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    b = grid.tensors["0.bias"]
    assert b.bits == 6 and b.axis is None
    q = grid.apply(model)
    assert torch.equal(q[0].bias, b.values())
    assert bool((q[0].bias * model[0].bias >= 0).all())


def test_matches_onnxruntime_int8_symmetric_per_channel() -> None:
    """onnxruntime's quantize_data (int8, symmetric) per output channel gives the same
    codes and scales, bit for bit."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.exp(torch.randn(6, 1, 1, 1, generator=g))
    q = quantize_tensor(w, 8, "per-channel", 0, param="w", layer="m")
    for c in range(6):
        zp, scale, codes = quantize_data(w[c].numpy().reshape(-1), TensorProto.INT8, True)
        assert int(zp) == 0
        assert np.float32(scale).view(np.uint32) == q.scale[c].numpy().view(np.uint32)
        assert np.array_equal(codes.astype(np.int64),
                              q.codes[c].reshape(-1).numpy().astype(np.int64))


def test_verify_detects_a_flipped_or_moved_value() -> None:
    w = torch.tensor([[0.5, -0.25, 0.0, 1.0]])
    q = quantize_tensor(w, 4, "per-tensor", None, param="w", layer="m")
    flipped = QuantizedWeights(q.param, q.layer, q.bits, q.granularity, q.axis, q.scale,
                               q.codes * torch.tensor([[-1, 1, 1, 1]], dtype=q.codes.dtype))
    with pytest.raises(SoundnessError, match="1 sign flip"):
        flipped.verify(w)
    moved = QuantizedWeights(q.param, q.layer, q.bits, q.granularity, q.axis, q.scale,
                             q.codes + torch.tensor([[0, 0, 1, 0]], dtype=q.codes.dtype))
    with pytest.raises(SoundnessError, match="1 zero"):
        moved.verify(w)


def test_verify_detects_a_flip_of_values_whose_product_underflows() -> None:
    """v * w of two tiny numbers of opposite signs is -0.0 in float32; the check compares
    signs, so the flip is still caught."""
    w = torch.tensor([1e-30, 1.0])
    q = quantize_tensor(w, 8, "per-tensor", None, param="w", layer="m")
    tiny = QuantizedWeights(q.param, q.layer, q.bits, q.granularity, q.axis,
                            torch.tensor([1e-30]), torch.tensor([-1, 0], dtype=torch.int8))
    assert float(tiny.values()[0] * w[0]) == 0.0  # the product underflows
    with pytest.raises(SoundnessError, match="1 sign flip"):
        tiny.verify(w)


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 32, "8", 8.0, True])
def test_bits_outside_the_range_are_refused(bits: object) -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    with pytest.raises(ConfigurationError, match="bits"):
        QuantConfig.uniform(model, bits)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="bits"):
        quantize_tensor(torch.ones(2, 2), bits, "per-tensor", None,  # type: ignore[arg-type]
                        param="w", layer="m")


def test_bad_granularity_dtype_and_values_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="granularity"):
        quantize_tensor(torch.ones(2, 2), 8, "per-row", 0, param="w", layer="m")
    with pytest.raises(ConfigurationError, match="float32 or float64"):
        quantize_tensor(torch.ones(2, 2, dtype=torch.float16), 8, "per-tensor", None,
                        param="w", layer="m")
    for bad in (float("nan"), float("inf")):
        w = torch.ones(3, 3)
        w[1, 1] = bad
        with pytest.raises(ConfigurationError, match="'w' contains inf or NaN"):
            quantize_tensor(w, 8, "per-channel", 0, param="w", layer="m")
