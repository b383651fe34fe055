"""The a-priori bound: computed before quantizing, never below the certificate, with
quantized biases that may change sign through BatchNorm too, and the bisection for the
bits a budget needs."""

from __future__ import annotations

import pytest
import torch
from _nets import random_conv_net, random_vector_net
from torch import nn

from certcompress.compress.quantization import (
    QuantConfig,
    apriori_bound,
    apriori_bound_for_steps,
    bits_for_budget,
    quantize,
)
from certcompress.errors import ConfigurationError


def test_bias_quantization_through_batchnorm_is_covered() -> None:
    """A folded bias a*b + c close to zero can flip sign when b is quantized; the a-priori
    bound accounts for it (flip term) and stays above the certificate."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        m[0].bias.copy_(torch.tensor([0.30, -0.2, 0.5, 0.01]))
        m[1].running_mean.zero_()
        m[1].running_var.fill_(1.0 - 1e-5)
        m[1].weight.fill_(1.0)
        m[1].bias.copy_(torch.tensor([-0.31, 0.0, 0.0, 0.0]))  # a*b + c = -0.01 at channel 0
    cfg = QuantConfig.uniform(m, 8, bias_bits=2)
    _, cert = quantize(m, cfg, (1, 3), 1.0, search_steps=15)
    assert cert.sign_changes >= 1  # the folded bias of channel 0 flipped
    prior = apriori_bound(m, cfg, (1, 3), 1.0)
    assert prior.flip_term > 0 and prior.bound >= cert.bound


@pytest.mark.parametrize("seed", [0, 1])
def test_bits_for_budget_is_the_smallest_width_that_fits(seed: int) -> None:
    model, shape = random_conv_net(["conv_bn", "maxpool"], 3, 4, 2, seed)
    cands = [2, 3, 4, 5, 6, 8, 16]
    bounds = {b: apriori_bound(model, QuantConfig.uniform(model, b), shape, 1.5).bound
              for b in cands}
    assert all(bounds[a] >= bounds[b] for a, b in zip(cands, cands[1:]))  # monotone
    for b in (3, 6):
        budget = bounds[b] * 1.0000001
        assert bits_for_budget(model, budget, input_shape=shape, input_radius=1.5,
                               candidates=cands) == b
    assert bits_for_budget(model, bounds[16] / 2, input_shape=shape, input_radius=1.5,
                           candidates=cands) is None
    # per-layer: only one layer quantized
    layer = "mods.conv1"
    got = bits_for_budget(model, bounds[4] / 3, input_shape=shape, input_radius=1.5,
                          candidates=cands, layers=[layer])
    assert got is not None
    one = apriori_bound(model, QuantConfig.from_bits({layer: got}), shape, 1.5).bound
    assert one <= bounds[4] / 3


def test_step_validation_names_the_layer() -> None:
    model, shape = random_vector_net(["dense"], 4, 3, 2, 0)
    with pytest.raises(ConfigurationError, match=r"steps\['mods.fc1'\]"):
        apriori_bound_for_steps(model, {"mods.fc1": -1.0}, shape, 1.0)
    with pytest.raises(ConfigurationError, match=r"steps\['mods.fc1'\]"):
        apriori_bound_for_steps(model, {"mods.fc1": torch.ones(7)}, shape, 1.0)
    with pytest.raises(ConfigurationError, match="nope"):
        apriori_bound_for_steps(model, {"nope": 0.1}, shape, 1.0)
    with pytest.raises(ConfigurationError, match="budget must be"):
        bits_for_budget(model, 0.0, input_shape=shape, input_radius=1.0)
    per_channel = apriori_bound_for_steps(model, {"mods.fc1": torch.full((4,), 0.1, dtype=torch.float64)},
                                          shape, 1.0)
    scalar = apriori_bound_for_steps(model, {"mods.fc1": 0.1}, shape, 1.0)
    assert per_channel.bound == pytest.approx(scalar.bound, rel=1e-12)
