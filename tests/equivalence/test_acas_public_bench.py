"""benchmarks/bench_acas_public.py's instance construction, on synthetic networks (no
public weights): the float16 truncation rounds every weight and bias to the nearest
float16 (ties to even, from the float64 value, as numpy.float16 in ReluDiff's
round_nnet.py), keeps the normalization and survives the .nnet round trip exactly; the
property selection skips phi3/phi4 on N_1_7..N_1_9 only."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from certcompress.capture.nnet import read_nnet, write_nnet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_acas_public import float16_truncation, properties_of  # type: ignore[import-not-found]  # noqa: E402,E501


def _net(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 5))
    net = net.double()
    with torch.no_grad():
        # exact float16 ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 (rounds to
        # the even 1.0); 1 + 3 * 2^-11 halfway between 1 + 2^-10 and 1 + 2^-9 (to 1 + 2^-9)
        net[0].weight[0, 0] = 1.0 + 2.0 ** -11
        net[0].weight[0, 1] = 1.0 + 3 * 2.0 ** -11
        net[0].bias[0] = 1e-9  # below float16's smallest subnormal / 2: rounds to 0
    return write_nnet(tmp_path / "n.nnet", net, input_mins=[499.0, -1, -1, 100, 0],
                      input_maxes=[60760.0, 1, 1, 1200, 1200],
                      means=[1.0, 0, 0, 650, 600, 7.5], ranges=[2.0, 1, 1, 1100, 1200, 3.0])


def test_float16_truncation_rounds_like_numpy_float16(tmp_path: Path) -> None:
    f = read_nnet(_net(tmp_path))
    h = float16_truncation(f)
    for a, b in zip(f.weights + f.biases, h.weights + h.biases):
        want = a.numpy().astype(np.float16).astype(np.float64)
        assert np.array_equal(b.numpy(), want, equal_nan=True)
    assert float(h.weights[0][0, 0]) == 1.0
    assert float(h.weights[0][0, 1]) == 1.0 + 2.0 ** -9
    assert float(h.biases[0][0]) == 0.0
    assert (h.input_mins, h.input_maxes, h.means, h.ranges) == \
        (f.input_mins, f.input_maxes, f.means, f.ranges)
    assert h.layer_sizes == f.layer_sizes


def test_float16_truncation_round_trips_through_nnet(tmp_path: Path) -> None:
    f = read_nnet(_net(tmp_path))
    h = float16_truncation(f)
    back = read_nnet(write_nnet(tmp_path / "h.nnet", h))
    for a, b in zip(h.weights + h.biases, back.weights + back.biases):
        assert torch.equal(a, b)
    # every value is a float16
    for t in back.weights + back.biases:
        assert np.array_equal(t.numpy().astype(np.float16).astype(np.float64), t.numpy())


def test_float16_truncation_refuses_values_beyond_float16(tmp_path: Path) -> None:
    f = read_nnet(_net(tmp_path))
    big = f.biases[1].clone()
    big[1] = 70000.0  # float16's largest finite value is 65504
    with pytest.raises(ValueError, match="layer 2's biases.*float16's range"):
        float16_truncation(dataclasses.replace(f, biases=(f.biases[0], big)))


def test_properties_of_skips_phi34_on_n17_to_n19_only() -> None:
    for j in (7, 8, 9):
        assert properties_of(f"ACASXU_run2a_1_{j}_batch_2000") == ["prop_1"]
    for stem in ("ACASXU_run2a_1_1_batch_2000", "ACASXU_run2a_2_7_batch_2000",
                 "ACASXU_run2a_5_9_batch_2000", "my_net"):
        assert properties_of(stem) == ["prop_1", "prop_3", "prop_4"]
