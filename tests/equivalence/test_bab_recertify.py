"""``verify_onnx(recertify=True)`` on a certificate with the ``bab`` tier: the search's
bound depends on its budget, so the tier's ``recheck`` proves the stated bound one-sidedly
(a search with it as the target) instead of recomputing and comparing. A genuine bound,
from ``verify_equivalence`` or from ``certify``, passes; a forged smaller one (digests
recomputed, so a bare verify cannot tell) fails, naming the tier and the deviation found;
a forged bound that is still true passes (it is proven), and the certificate may rely on
it."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import _soundness as sh
import onnx
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.tiers import GraphPair, tier_registry
from certcompress.domain import InputDomain
from certcompress.equivalence import tier as bab_tier
from certcompress.equivalence.tier import BabOptions
from certcompress.export import VerificationFailed
from certcompress.export.metadata import KEY_CERTIFICATE, merge_props, props_of, seal
from certcompress.export.recertify import recertify

# a region budget, no time budget: deterministic, nothing depends on the machine's speed
OPTS = BabOptions(time_budget=None, max_regions=300, batch=32)


def _half_pair(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 4)).eval()
    comp = copy.deepcopy(net)
    with torch.no_grad():
        for p in comp.parameters():
            p.copy_(p.half().float())  # the float16 cast, stored in float32 for export
    return net, comp


def _perturbed_pair(seed: int) -> tuple[nn.Module, nn.Module]:
    """A pair where one pass over a wide box is loose: the search must split."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 4)).eval()
    comp = copy.deepcopy(net)
    with torch.no_grad():
        for p in comp.parameters():
            p.mul_(1 + 0.01 * torch.randn_like(p))
    return net, comp


def _recert(path: Path, net: nn.Module) -> cc.VerificationReport:
    return cc.verify_onnx(path, original=net, recertify=True, search_steps=0)


def _forge(src: Path, dst: Path, bound: float) -> Path:
    """``src`` with the certificate's bound and its ``bab`` tier's bound set to ``bound``,
    every digest recomputed."""
    m = onnx.load(str(src))
    data = json.loads(props_of(m)[KEY_CERTIFICATE])
    data["bound"] = bound
    data["by_method"]["bab"]["bound"] = bound
    merge_props(m, {KEY_CERTIFICATE: json.dumps(data, sort_keys=True)})
    seal(m)
    onnx.save_model(m, str(dst))
    return dst


@pytest.mark.parametrize("norm", ["inf", "l1"])
def test_verify_equivalence_certificate_recertifies(tmp_path: Path, norm: str) -> None:
    net, comp = _half_pair(1)
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 3))
    res = cc.verify_equivalence(net, comp, domain=dom, epsilon=0.02, norm=norm, timeout=60)
    assert res.status == "verified" and res.found is not None
    cert = res.certificate()
    path = tmp_path / "m.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=0)
    rec = {c.name: c for c in _recert(path, net).checks}["recertify"]
    assert rec.status == "passed" and "bab" in rec.detail, rec.detail
    # forged below the deviation the certifier itself found: caught, naming the tier
    forged = _forge(path, tmp_path / "forged.onnx", 0.5 * res.found)
    cc.verify_onnx(forged, search_steps=0)  # digests recomputed: a bare verify passes
    with pytest.raises(VerificationFailed) as info:
        _recert(forged, net)
    rec = {c.name: c for c in info.value.report.checks}["recertify"]
    assert rec.status == "failed"
    assert "tier 'bab' bound" in rec.detail and "deviation found" in rec.detail, rec.detail


def test_certify_bab_recertifies_and_a_forged_bound_fails(tmp_path: Path) -> None:
    net, comp = _perturbed_pair(3)
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 3))
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "bab"), search_steps=0,
                      propagation=OPTS)
    bab = cert.by_method["bab"]
    assert bab.details.one_pass_bound is not None and bab.details.found is not None
    # the search tightened the one-pass bound: recertifying it needs a proof by search
    assert bab.bound < 0.5 * bab.details.one_pass_bound
    found = sh.attack_models(net, comp, dom, dom.shape, seed=2, per_output=True)
    sh.assert_sound(found, cert.bound, cert.per_output, what="certify bab")
    path = tmp_path / "c.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=0)
    rec = {c.name: c for c in _recert(path, net).checks}["recertify"]
    assert rec.status == "passed" and "bab, path-metric" in rec.detail, rec.detail
    low = 0.9 * bab.details.found
    with pytest.raises(VerificationFailed, match=r"recertify.*tier 'bab' bound states "
                                                 r".*SMALLER than a deviation found"):
        _recert(_forge(path, tmp_path / "low.onnx", low), net)


def test_a_smaller_but_true_bound_is_proven_and_relied_on() -> None:
    """One-sided: a stated bound below the search's own but above the true worst case
    is a true claim; the re-check proves it and the certified bound is compared with it
    (not with a recomputation)."""
    net, comp = _perturbed_pair(3)
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 3))
    cert = cc.certify(net, comp, domain=dom, methods=("bab",), search_steps=0,
                      propagation=OPTS)
    bab = cert.by_method["bab"]
    pair = GraphPair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    found = sh.attack_models(net, comp, dom, dom.shape, seed=4)
    tighter = 0.5 * (bab.bound + max(found.worst, bab.details.found))
    stated = dataclasses.replace(bab, bound=tighter)
    value, problems = tier_registry().get("bab").recheck(pair, dom, stated)
    assert problems == [] and value.bound == tighter
    sh.assert_sound(found, value.bound, what="re-checked bab bound")
    sh.record("bab recheck tighter stated bound", value.bound, found.worst,
              search_bound=bab.bound)


def test_float32_certificate_with_bab(tmp_path: Path) -> None:
    net, comp = _perturbed_pair(3)
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 3))
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "bab"), search_steps=0,
                      propagation=OPTS, arithmetic="float32")
    bab = cert.by_method["bab"]
    assert bab.details.get("arithmetic") == "float32"
    assert bab.bound > bab.details.get("bound_exact")
    path = tmp_path / "f.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=0)
    rec = {c.name: c for c in _recert(path, net).checks}["recertify"]
    assert rec.status == "passed" and "float32 arithmetic" in rec.detail, rec.detail
    model = onnx.load(str(path))
    forged_tier = dataclasses.replace(bab, bound=0.9 * bab.details.found)
    forged = dataclasses.replace(cert, bound=forged_tier.bound,
                                 by_method={**cert.by_method, "bab": forged_tier})
    ok, detail, _ = recertify(forged, net, model)
    assert not ok and "tier 'bab' bound" in detail and "float32 rounding error" in detail


def test_a_bound_the_budget_cannot_prove_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not proven within the re-check's region budget is a problem (never accepted on
    trust), whatever the truth of the stated bound: here a budget of 4 regions, far too
    few to close a box whose one pass is more than twice the stated bound."""
    net, comp = _perturbed_pair(3)
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 3))
    cert = cc.certify(net, comp, domain=dom, methods=("bab",), search_steps=0,
                      propagation=OPTS)
    bab = cert.by_method["bab"]
    monkeypatch.setattr(bab_tier, "RECHECK_MIN_REGIONS", 1)
    stated = dataclasses.replace(bab, details=dataclasses.replace(bab.details, regions=1))
    assert tier_registry().get("bab").stated_options(stated).max_regions == 4
    pair = GraphPair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    _, problems = tier_registry().get("bab").recheck(pair, dom, stated)
    assert len(problems) == 1 and "tier 'bab' bound" in problems[0]
    assert "not proven" in problems[0] and "regions open" in problems[0], problems
    # with the stated budget (4 x its regions) the same bound is proven
    assert tier_registry().get("bab").recheck(pair, dom, bab)[1] == []


@pytest.mark.parametrize("shortfall", [5e-10, 2e-9])
def test_recheck_refuses_a_per_output_bound_just_below_the_truth(shortfall: float) -> None:
    """No tolerance in the unsafe direction: the compressed model adds exactly 1.0 to
    output 0 everywhere, and a stated per-output bound a hair below 1 is refused (found
    by a hostile review: a relative tolerance of 1e-9 used to accept 1 - 5e-10)."""
    torch.manual_seed(0)
    orig = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    comp = copy.deepcopy(orig)
    with torch.no_grad():
        comp[2].bias[0] += 1.0
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    cert = cc.certify(orig, comp, domain=dom, methods=("bab",), search_steps=0,
                      propagation=BabOptions(time_budget=None, max_regions=50, batch=8))
    honest = cert.by_method["bab"]
    pair = GraphPair(cc.trace(orig, dom.shape), cc.trace(comp, dom.shape))
    tier = tier_registry().get("bab")
    assert tier.recheck(pair, dom, honest)[1] == []
    forged = dataclasses.replace(honest, per_output=(1.0 - shortfall, honest.per_output[1]))
    problems = tier.recheck(pair, dom, forged)[1]
    assert problems and "SMALLER than a deviation found" in " ".join(problems)
