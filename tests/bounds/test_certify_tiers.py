"""certify with an input domain and several tiers: by_method, the minimum over tiers of
the same scope, JSON (schema 2, schema-1 files still load), errors; the tier's soundness
on conv/max-pool/residual/concat networks and on the digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _nets import NetBuilder, compress
from propagation_helpers import check_tier_sound
from torch import nn

import certcompress as cc
from certcompress.certificate import WORST_CASE, Certificate
from certcompress.demo.digits import DigitsCNN, load_digits, magnitude_prune_copy, train_classifier
from certcompress.domain import InputDomain
from certcompress.errors import CertificateError, ConfigurationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "certificates"


def conv_pool_res_cat_net(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    b = NetBuilder((1, 2, 6, 6))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 3, 3, padding=1), "x", "conv"), "relu")
    r = b.module(nn.Conv2d(3, 3, 3, padding=1), h, "conv")
    h = b.module(nn.ReLU(), b.add(h, r), "relu")
    h = b.module(nn.MaxPool2d(2), h, "pool")
    c = b.module(nn.ReLU(), b.module(nn.Conv2d(3, 2, 1), h, "conv"), "relu")
    h = b.cat([h, c], dim=1)
    h = b.module(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), h, "pool")
    out = b.module(nn.Linear(b.shapes[b.flatten(h)][1], 3), b.flatten(h), "fc")
    return b.build(out, torch.Generator().manual_seed(seed)), b.input_shape


@pytest.mark.parametrize("seed", [0, 1])
def test_conv_pool_residual_concat_tier_is_sound(seed: int) -> None:
    net, shape = conv_pool_res_cat_net(seed)
    comp = compress(net, "prune", seed + 5, 0.4)
    check_tier_sound(net, comp, InputDomain.box(0.0, 1.0, shape=shape), seed)


def test_certify_with_domain_reports_every_tier() -> None:
    net, shape = conv_pool_res_cat_net(3)
    comp = compress(net, "round", 4, 0.1)
    dom = InputDomain.box(0.0, 1.0, shape=shape)
    ref = dom.sample(16, torch.Generator().manual_seed(0))
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "bounds"),
                      reference_inputs=ref, search_steps=10)
    assert set(cert.by_method) == {"path-metric", "bounds"}
    pm, bd = cert.by_method["path-metric"], cert.by_method["bounds"]
    assert pm.scope == bd.scope == WORST_CASE
    assert cert.bound == min(pm.bound, bd.bound)
    assert cert.per_output == tuple(min(a, b) for a, b in zip(pm.per_output, bd.per_output))
    assert pm.bound == pytest.approx(cert.factor * cert.path_metric, rel=1e-15)
    assert cert.radius == 1.0 and cert.input_domain == dom
    assert bd.forward_equivalents is not None and bd.forward_equivalents > 0
    assert bd.vacuous is not None and pm.vacuous is not None
    assert bd.exact is False and bd.sound
    assert cert.measurements.adversarial_max is not None
    assert cert.measurements.adversarial_max <= cert.bound * (1 + 1e-9)
    assert "tier bounds" in cert.summary() and dom.describe() in cert.summary()
    # a default-methods call with a domain runs both tiers
    again = cc.certify(net, comp, domain=dom, search_steps=0)
    assert set(again.by_method) == {"path-metric", "bounds"}


def test_json_round_trip_validation_and_schema_1_files(tmp_path: object) -> None:
    net, shape = conv_pool_res_cat_net(5)
    comp = compress(net, "perturb", 6, 0.05)
    cert = cc.certify(net, comp, domain=InputDomain.box(-0.5, 0.5, shape=shape),
                      search_steps=0)
    back = Certificate.from_json(cert.to_json())
    assert back == cert
    d = json.loads(cert.to_json())
    d["by_method"]["bounds"]["bound"] = -1.0
    with pytest.raises(CertificateError, match="non-negative"):
        Certificate.from_dict(d)
    d = json.loads(cert.to_json())
    d["input_domain"]["lower"] = [2.0]
    with pytest.raises(CertificateError, match="input_domain"):
        Certificate.from_dict(d)
    # a schema-1 file (written before the tiers existed) still loads, its path-metric
    # numbers upgraded into the one tier it had (tests/test_certificate_schema.py)
    old = json.loads((FIXTURES / "schema1_radius.json").read_text())
    loaded = Certificate.from_dict(old)
    assert set(loaded.by_method) == {"path-metric"} and loaded.input_domain is None
    assert loaded.bound_method == "path-metric"
    assert loaded.bound == old["factor"] * old["path_metric"] == loaded.factor * loaded.path_metric
    old["by_method"] = {}
    with pytest.raises(CertificateError, match="schema 2"):
        Certificate.from_dict(old)


def test_old_signature_is_unchanged() -> None:
    net, shape = conv_pool_res_cat_net(7)
    comp = compress(net, "prune", 8, 0.3)
    cert = cc.certify(net, comp, shape, 1.0, search_steps=0)
    assert set(cert.by_method) == {"path-metric"}
    assert cert.bound == cert.factor * cert.path_metric
    assert cert.domain == "||x||_inf <= 1"
    both = cc.certify(net, comp, shape, 1.0, methods=("path-metric", "bounds"),
                      search_steps=5)
    assert both.bound <= cert.bound
    assert both.input_domain == InputDomain.box(-1.0, 1.0, shape=shape,
                                                description="ball ||x||_inf <= 1")


def test_errors_name_what_is_wrong() -> None:
    net, shape = conv_pool_res_cat_net(9)
    dom = InputDomain.box(0.0, 1.0, shape=shape)
    with pytest.raises(ConfigurationError, match="either domain or input_radius"):
        cc.certify(net, net, input_radius=1.0, domain=dom)
    with pytest.raises(ConfigurationError, match="unknown certification method"):
        cc.certify(net, net, domain=dom, methods=("exact",))
    with pytest.raises(ConfigurationError, match="differs from the domain"):
        cc.certify(net, net, (1, 2, 5, 5), domain=dom)
    with pytest.raises(ConfigurationError, match="InputDomain"):
        cc.certify(net, net, domain=(0.0, 1.0))  # type: ignore[arg-type]


def test_digits_cnn_bounds_tier_sound_and_tighter_than_path_metric() -> None:
    data = load_digits()
    model = train_classifier(DigitsCNN(channels=8), data.x_train[:400], data.y_train[:400],
                             epochs=3, progress=False)
    pruned = magnitude_prune_copy(model, 0.5)
    dom = InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    tier, worst = check_tier_sound(model, pruned, dom, 0)
    pm = cc.path_metric(model, pruned, (1, 1, 8, 8)).value
    assert tier.bound < pm / 5, (tier.bound, pm)
    assert worst > 0
