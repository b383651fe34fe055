"""Soundness: the deviation of a pruned model, measured on random inputs of the domain,
box corners and gradient-ascent inputs, never exceeds its certificate (random small
networks drawn by hypothesis, every criterion and scope)."""

from __future__ import annotations

import _soundness as sh
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pruning_nets import ConvChain, mlp, res_bn_net
from torch import nn

from certcompress.compress.pruning import PruningPlan, prune


def _check(model: nn.Module, pruned: nn.Module, shape: tuple[int, ...], radius: float,
           bound: float, seed: int) -> sh.Found:
    """Largest l1 deviation found by sampling, corners (small inputs) and a longer PGD."""
    found = sh.attack_models(model, pruned, radius, shape, seed, steps=40, restarts=6,
                             n_uniform=256)
    sh.assert_sound(found, bound, what="pruned")
    sh.record("prune: random nets", bound, found.worst)
    return found


@st.composite
def nets(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    kind = draw(st.sampled_from(["mlp", "conv", "resbn"]))
    seed = draw(st.integers(0, 10_000))
    if kind == "mlp":
        widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
        bias = draw(st.booleans())
        model: nn.Module = mlp(widths, seed=seed, bias=bias)
        with torch.no_grad():
            scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
            for p in model.parameters():
                p.mul_(scale)
        return model, (1, widths[0])
    if kind == "conv":
        torch.manual_seed(seed)
        c1, c2 = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        return ConvChain(c1, c2, size=3).eval(), (1, 1, 3, 3)
    return res_bn_net(seed), (1, 1, 4, 4)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=nets(), criterion=st.sampled_from(["magnitude", "path-magnitude", "random"]),
       scope=st.sampled_from(["global", "per-layer"]), sparsity=st.floats(0.05, 1.0),
       radius=st.sampled_from([0.5, 1.0, 2.5]), seed=st.integers(0, 100))
def test_measured_deviation_never_exceeds_the_certificate(net, criterion, scope, sparsity,
                                                          radius, seed) -> None:
    model, shape = net
    plan = PruningPlan.by_criterion(model, sparsity, criterion, scope=scope, seed=seed,
                                    input_shape=shape)
    ref = (torch.rand((16,) + shape[1:], dtype=torch.float64) * 2 - 1) * radius
    # certify itself raises SoundnessError if a reference input or its PGD search
    # exceeds the bound; _check searches harder and asserts it explicitly
    pruned, cert = prune(model, plan, shape, radius, reference_inputs=ref, search_steps=15,
                         seed=seed)
    assert cert.path_metric_exact
    found = _check(model, pruned, shape, radius, cert.bound, seed)
    size = float(found.size.max())  # certify's own measurements, at outputs of this size
    assert sh.within(cert.measurements.deviation_max, cert.bound, size)
    assert sh.within(cert.measurements.adversarial_max, cert.bound, size)


def test_per_output_bounds_hold_on_a_trained_like_net() -> None:
    model = res_bn_net(seed=11)
    shape = (1, 1, 4, 4)
    plan = PruningPlan.path_magnitude(model, 0.4, input_shape=shape)
    pruned, cert = prune(model, plan, shape, 1.0, search_steps=30)
    found = sh.attack_models(model, pruned, 1.0, shape, seed=11, steps=0, n_uniform=512)
    sh.assert_sound(found, cert.bound, cert.per_output, "pruned, per output")
    assert cert.bound >= max(cert.per_output)
