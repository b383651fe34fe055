"""Soundness: on random small networks, for every width and granularity (biases float or
quantized), the deviation measured on random inputs and found by gradient ascent never
exceeds the certificate of the quantized model, and the a-priori bound is never below
the certificate."""

from __future__ import annotations

import copy

import _soundness as sh
import torch
from _nets import random_conv_net, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.compress.quantization import (
    QuantConfig,
    apriori_bound,
    apriori_bound_for_steps,
    quantize,
)

BITS = st.sampled_from([2, 3, 4, 6, 8, 16])
GRAN = st.sampled_from(["per-channel", "per-tensor"])


def _net(kind: int, seed: int):  # noqa: ANN202
    if kind == 0:
        return random_vector_net(["dense_bn", "residual", "relu6"], 6, 4, 3, seed, scale=1.0)
    if kind == 1:
        return random_vector_net(["dense", "concat", "leaky"], 5, 3, 2, seed, scale=1.2)
    return random_conv_net(["conv_bn", "maxpool", "convT"], 3, 4, 2, seed, scale=1.0)


@settings(max_examples=18)
@given(kind=st.integers(0, 2), seed=st.integers(0, 10_000), bits=BITS, gran=GRAN,
       bias_bits=st.sampled_from([None, None, 3, 8]), radius=st.sampled_from([0.5, 1.0, 3.0]))
def test_measured_deviation_never_exceeds_the_certificate(kind: int, seed: int, bits: int,
                                                          gran: str, bias_bits: int | None,
                                                          radius: float) -> None:
    model, shape = _net(kind, seed)
    qcfg = QuantConfig.uniform(model, bits, gran, bias_bits=bias_bits)
    # certify itself runs a PGD search and raises SoundnessError above the bound
    qmodel, cert = quantize(model, qcfg, shape, radius, search_steps=10, search_restarts=2,
                            seed=seed)
    assert cert.sign_changes == 0 or bias_bits is not None  # weights never flip
    found = sh.attack_models(model, qmodel, radius, shape, seed, steps=25, restarts=3,
                             n_uniform=64, n_vertices=0)
    sh.assert_sound(found, cert.bound, what="quantized")
    sh.record("quantize: random nets", cert.bound, found.worst)
    prior = apriori_bound(model, qcfg, shape, radius)
    assert prior.bound >= cert.bound * (1 - 1e-12)


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), step=st.floats(1e-3, 0.5))
def test_apriori_bound_is_monotone_in_the_step_and_holds_for_any_rounding(seed: int,
                                                                         step: float) -> None:
    """Any values within half a step of the weights (same signs) stay under the a-priori
    bound of that step; a larger step never gives a smaller bound."""
    model, shape = _net(0, seed)
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    small = apriori_bound_for_steps(model, dict.fromkeys(layers, step), shape, 1.0)
    large = apriori_bound_for_steps(model, dict.fromkeys(layers, 2 * step), shape, 1.0)
    assert large.bound >= small.bound
    # an adversarial "rounding": move every weight by up to step/2 toward or away from 0
    gen = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for n, m in other.named_modules():
            if n in layers:
                w = m.weight
                u = torch.rand(w.shape, generator=gen) * 2 - 1
                moved = w + 0.5 * step * u
                m.weight.copy_(torch.where(moved * w < 0, torch.zeros_like(w), moved))
    cert = cc.certify(model, other, shape, 1.0, search_steps=0)
    assert cert.bound <= small.bound
