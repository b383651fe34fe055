"""A verified ``verify_equivalence`` result as a Certificate: its tier ``bab`` in
``by_method``, sound against the shared harness, embedded by ``export_onnx`` and checked
again on samples by ``verify_onnx``; no certificate (with the reason) otherwise."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import _soundness as sh
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.domain import InputDomain
from certcompress.equivalence.tier import BabDetails
from certcompress.errors import ConfigurationError


def _float32_pair(seed: int, n_in: int = 3, n_out: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, n_out)).eval()
    comp = copy.deepcopy(net)
    with torch.no_grad():
        for p in comp.parameters():
            p.copy_(p.half().float())  # the float16 cast, stored in float32 for export
    return net, comp


@pytest.mark.parametrize("norm", ["inf", "l1"])
def test_verified_result_is_a_sound_certificate(norm: str) -> None:
    net, comp = _float32_pair(0)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 3))
    res = cc.verify_equivalence(net, comp, domain=dom, epsilon=0.01, norm=norm, timeout=60)
    assert res.status == "verified" and res.bound is not None
    cert = res.certificate()
    assert cert is res.certificate()  # built once
    tier = cert.by_method["bab"]
    m = 4
    assert isinstance(tier.details, BabDetails)
    assert tier.details.norm == norm and tier.details.epsilon == 0.01
    assert tier.details.proven_fraction == 1.0 and tier.details.status == "closed"
    assert cert.per_output == (res.bound,) * m
    assert cert.bound == (res.bound if norm == "l1" else pytest.approx(m * res.bound))
    assert cert.bound >= (res.bound if norm == "l1" else m * res.bound)
    assert cert.original_digest == cc.parameter_digest(net)
    assert cert.compressed_digest == cc.parameter_digest(comp)
    found = sh.attack_models(net, comp, dom, dom.shape, seed=1, per_output=True)
    sh.assert_sound(found, cert.bound, cert.per_output, what=f"equivalence certificate {norm}")
    sh.record(f"equivalence certificate {norm}", cert.bound, found.worst)
    back = cc.Certificate.from_json(cert.to_json())
    assert isinstance(back.by_method["bab"].details, BabDetails)
    assert back.bound == cert.bound


def test_export_embeds_it_and_verify_onnx_checks_it(tmp_path: Path) -> None:
    net, comp = _float32_pair(1)
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 3))
    res = cc.verify_equivalence(net, comp, domain=dom, epsilon=0.02, norm="inf", timeout=60)
    assert res.status == "verified"
    path = tmp_path / "m.onnx"
    report = cc.export_onnx(comp, path, certificate=res.certificate(), original=net)
    assert report.passed
    again = cc.verify_onnx(path, original=net)
    assert again.passed
    checks = {c.name: c for c in again.checks}
    assert checks["bound"].status == "passed"
    assert checks["bound"].measured is not None and checks["bound"].limit is not None
    assert checks["bound"].measured <= checks["bound"].limit
    assert "bab" in again.certificate.by_method
    assert again.certificate.bound == res.certificate().bound


def test_a_wrong_certificate_fails_verify_onnx(tmp_path: Path) -> None:
    """The check is not vacuous: the certificate with its bound cut far below the
    deviation fails the bound check at export, and nothing is written."""
    net, comp = _float32_pair(2)
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 3))
    res = cc.verify_equivalence(net, comp, domain=dom, epsilon=0.02, timeout=60)
    cert = res.certificate()
    forged = dataclasses.replace(cert, bound=cert.bound * 1e-4)
    with pytest.raises(cc.VerificationError, match="bound") as info:
        cc.export_onnx(comp, tmp_path / "w.onnx", certificate=forged, original=net)
    assert "EXCEEDS" in str(info.value), str(info.value)
    assert not (tmp_path / "w.onnx").exists()


def test_no_certificate_with_the_reason() -> None:
    net, comp = _float32_pair(3)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 3))
    falsified = cc.verify_equivalence(net, comp, domain=dom, epsilon=1e-9, timeout=20)
    assert falsified.status == "falsified"
    with pytest.raises(ConfigurationError, match="falsified, not verified"):
        falsified.certificate()
    top1 = cc.verify_equivalence(net, comp, domain=dom, property="top1", timeout=20)
    with pytest.raises(ConfigurationError, match="top-1"):
        top1.certificate()
    g1, g2 = cc.trace(net, (1, 3)), cc.trace(comp, (1, 3))
    graphs = cc.verify_equivalence(g1, g2, domain=dom, epsilon=0.05, timeout=20)
    assert graphs.status == "verified"
    with pytest.raises(ConfigurationError, match="nn.Module"):
        graphs.certificate()


def test_models_changed_after_verification_are_refused() -> None:
    net, comp = _float32_pair(4)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 3))
    res = cc.verify_equivalence(net, comp, domain=dom, epsilon=0.05, timeout=20)
    assert res.status == "verified"
    with torch.no_grad():
        comp[0].weight.mul_(3.0)
    with pytest.raises(ConfigurationError, match="changed"):
        res.certificate()
