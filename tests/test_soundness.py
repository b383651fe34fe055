"""Soundness is tested, not asserted: on random ReLU-DAG networks and random
compressions, no input inside the certified domain (random, box vertices, or found by
gradient ascent on the deviation) deviates by more than the certificate says, in total
or output by output.

Points and tolerance come from the shared harness (tests/_soundness.py): one-sided, with
an allowance only for the float64 rounding of the *measured* deviation itself; the bound
already contains the engine's rounding slack.
"""

from __future__ import annotations

import _soundness as sh
import pytest
import torch
from _nets import (
    CONV_BLOCKS,
    VECTOR_BLOCKS,
    NetBuilder,
    compress,
    random_conv_net,
    random_vector_net,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import certcompress as cc

COMPRESSIONS = st.one_of(
    st.tuples(st.just("prune"), st.sampled_from([0.1, 0.3, 0.6, 0.9])),
    st.tuples(st.just("round"), st.sampled_from([0.01, 0.05, 0.2, 0.5])),
    st.tuples(st.just("round_zero"), st.sampled_from([0.05, 0.2])),
    st.tuples(st.just("scale"), st.just(0.0)),
    st.tuples(st.just("perturb"), st.sampled_from([0.01, 0.1, 0.5])),
    st.tuples(st.just("flip"), st.sampled_from([0.05, 0.3])),
)
RADII = st.sampled_from([0.1, 0.5, 1.0, 2.5])


def _check_sound(net: nn.Module, comp: nn.Module, shape: tuple[int, ...], r: float,
                 seed: int) -> float:
    """Certify and attack; records and returns bound / worst deviation found."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = sh.box(r, shape)
    ref = sh.uniform(lo, hi, 8, gen)
    try:
        cert = cc.certify(net, comp, shape, r, reference_inputs=ref, search_steps=15,
                          search_restarts=3, seed=seed)
    except cc.SoundnessError as exc:  # certify's own search beat its bound
        pytest.fail(f"certify raised SoundnessError: {exc}")
    assert cert.bound >= 0 and len(cert.per_output) > 0
    found = sh.attack(sh.f64(net), sh.f64(comp), lo, hi, seed + 1, steps=60, restarts=6,
                      per_output=True, extra=ref)
    assert found.per_output.numel() == len(cert.per_output)
    sh.assert_sound(found, cert.bound, cert.per_output, "certify")
    assert float(torch.tensor(cert.per_output, dtype=torch.float64).sum()) <= cert.bound * (1 + 1e-12)
    if cert.measurements.adversarial_max is not None:
        # certify's own measurement, with the size of the outputs the attack saw
        assert sh.within(cert.measurements.adversarial_max, cert.bound,
                         float(found.size.max()))
    return sh.record("certify: random DAG", cert.bound, found.worst)


@settings(max_examples=30)
@given(blocks=st.lists(st.sampled_from(VECTOR_BLOCKS), max_size=4),
       width=st.integers(2, 6), n_in=st.integers(1, 5), n_out=st.integers(1, 3),
       seed=st.integers(0, 2 ** 20), scale=st.sampled_from([0.3, 0.6, 1.2]),
       compression=COMPRESSIONS, include_bn=st.booleans(), r=RADII)
def test_vector_dag_never_exceeds_bound(blocks: list[str], width: int, n_in: int, n_out: int,
                                        seed: int, scale: float,
                                        compression: tuple[str, float], include_bn: bool,
                                        r: float) -> None:
    net, shape = random_vector_net(blocks, width, n_in, n_out, seed, scale)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount, include_bn=include_bn)
    _check_sound(net, comp, shape, r, seed)


@settings(max_examples=30)
@given(blocks=st.lists(st.sampled_from(CONV_BLOCKS), max_size=4),
       channels=st.integers(1, 3), size=st.integers(3, 6), n_out=st.integers(1, 3),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS, include_bn=st.booleans(),
       r=RADII)
def test_conv_dag_never_exceeds_bound(blocks: list[str], channels: int, size: int,
                                      n_out: int, seed: int, compression: tuple[str, float],
                                      include_bn: bool, r: float) -> None:
    net, shape = random_conv_net(blocks, channels, size, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount, include_bn=include_bn)
    _check_sound(net, comp, shape, r, seed)


def test_sign_condition_counterexample_is_covered() -> None:
    """v*ReLU(u*x) with (u, v) = (1, 1) and (-1, -1): equal path-lifting, different
    functions (shared doc, section 3). The triangle construction must still bound it."""
    b = NetBuilder((1, 1))
    h = b.module(nn.ReLU(), b.module(nn.Linear(1, 1, bias=False), "x"))
    net = b.build(b.module(nn.Linear(1, 1, bias=False), h)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    comp = compress(net, "flip", seed=0, amount=1.1)  # negate everything
    assert all(float(p.detach()) == -1.0 for p in comp.parameters())
    x = torch.tensor([[1.0]], dtype=torch.float64)
    with torch.no_grad():
        assert float(net(x)) == 1.0 and float(comp(x)) == 0.0
    cert = cc.certify(net, comp, (1, 1), 1.0, search_steps=30)
    assert cert.sign_changes == 2 and not cert.path_metric_exact
    assert cert.bound >= 1.0  # the deviation at x = 1
    _check_sound(net, comp, (1, 1), 1.0, seed=3)
