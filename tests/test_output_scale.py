"""certify's output scale without reference data: the original's trace-check probes are
reused (their float64 outputs are already computed), random points are added within a
multiply-add budget, and the certificate says how many points it took."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import certcompress as cc
import certcompress.api as api
from certcompress.capture.check import graph_macs
from certcompress.capture.pair import trace_pair
from certcompress.domain import InputDomain
from certcompress.measure import float64_function

SHAPE = (1, 1, 6, 6)


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 6 * 6, 4)).eval()
    comp = copy.deepcopy(net)
    with torch.no_grad():
        for p in comp.parameters():
            p.mul_((p.abs() > 0.05).to(p.dtype))
    return net, comp


def _l1_max(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(float64_function(model)(x).abs().sum(1).max())


def test_the_probes_and_the_random_points_give_the_scale() -> None:
    net, comp = _pair()
    dom = InputDomain.box(-0.5, 1.5, shape=SHAPE)
    cert = cc.certify(net, comp, domain=dom, methods="path-metric", search_steps=0, seed=7)
    probes = trace_pair(net, comp, SHAPE, dom).checks[0]
    assert probes is not None and probes.samples is not None
    x = probes.samples.inputs
    assert bool(dom.contains(x).all())  # every probe is a point of the domain
    k = api.scale_sample_count(graph_macs(cc.trace(net, SHAPE)))
    assert k == 31  # a small model gets every random point
    rand = dom.sample(k, torch.Generator().manual_seed(7))
    want = max(_l1_max(net, x), _l1_max(net, rand))
    assert cert.measurements.output_scale == pytest.approx(want, rel=1e-12)
    n = x.shape[0] + k
    assert cert.measurements.output_scale_source.startswith(f"max over {n} point(s)")
    assert f"{x.shape[0]} trace-check probe(s)" in cert.measurements.output_scale_source
    again = cc.certify(net, comp, domain=dom, methods="path-metric", search_steps=0, seed=7)
    assert again.measurements.output_scale == cert.measurements.output_scale  # deterministic


def test_a_large_model_samples_one_random_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the budget one random point is drawn, evaluated by the original alone (the
    compressed model is not wrapped as a float64 function at all); the probes' outputs
    (here the check's) count without being evaluated again."""
    net, comp = _pair()
    monkeypatch.setattr(api, "SCALE_MACS", 0)
    assert api.scale_sample_count(10 ** 12) == 1
    built: list[nn.Module] = []

    def counting(model: nn.Module) -> object:
        built.append(model)
        return float64_function(model)

    monkeypatch.setattr(api, "float64_function", counting)
    cert = cc.certify(net, comp, SHAPE, 1.0, methods="path-metric", search_steps=0, seed=3)
    assert built == [net]
    dom = api.resolve_domain(net, SHAPE, 1.0, None)
    samples = trace_pair(net, comp, SHAPE, dom).checks[0].samples  # type: ignore[union-attr]
    assert samples is not None
    rand = dom.sample(1, torch.Generator().manual_seed(3))
    want = max(_l1_max(net, samples.inputs), _l1_max(net, rand))
    assert cert.measurements.output_scale == pytest.approx(want, rel=1e-12)
    assert cert.measurements.output_scale_source.endswith(
        "trace-check probe(s) (their outputs reused) and 1 random point(s) (no reference data)")
    assert cert.vacuous == (cert.bound > cert.measurements.output_scale)


def test_the_checks_keep_both_models_probes() -> None:
    """Both trace checks ran and kept their probes; each model's outputs on them are its
    own (the compressed model's check is not the original's)."""
    net, comp = _pair()
    pair = trace_pair(net, comp, SHAPE)
    a, b = pair.checks
    assert a is not None and b is not None and a.passed and b.passed
    assert a.samples is not None and b.samples is not None
    assert torch.equal(a.samples.inputs, b.samples.inputs)
    with torch.no_grad():
        assert torch.allclose(a.samples.outputs, float64_function(net)(a.samples.inputs),
                              rtol=1e-12, atol=1e-12)
        assert torch.allclose(b.samples.outputs, float64_function(comp)(b.samples.inputs),
                              rtol=1e-12, atol=1e-12)
    assert not torch.equal(a.samples.outputs, b.samples.outputs)


def test_reference_inputs_still_give_the_scale() -> None:
    net, comp = _pair()
    x = torch.rand(5, *SHAPE[1:])
    cert = cc.certify(net, comp, SHAPE, 1.0, methods="path-metric", search_steps=0,
                      reference_inputs=x)
    assert cert.measurements.output_scale == pytest.approx(_l1_max(net, x.double()), rel=1e-12)
    assert cert.measurements.output_scale_source == "max over 5 reference inputs"
