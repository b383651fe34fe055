"""``Tier.recheck`` (``verify_onnx(recertify=True)``) is one-sided: a stated bound below
the recomputed one is refused by any amount, a larger one only beyond the tolerance."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.tierbase import RECERTIFY_RTOL, GraphPair
from certcompress.bounds.tiers import tier_registry


def _pair() -> tuple[GraphPair, cc.InputDomain]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double().eval()
    comp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double().eval()
    comp.load_state_dict(net.state_dict())
    with torch.no_grad():
        comp[0].weight[0, 0] = 0.0
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 3))
    return GraphPair(cc.trace(net, (1, 3)), cc.trace(comp, (1, 3))), dom


@pytest.mark.parametrize("tier", ["bounds", "path-metric"])
@pytest.mark.parametrize("rel", [-5e-10, -1.0, 0.0, 5e-10, 1e-7])  # -1.0: one ulp below
def test_recheck_has_no_tolerance_below(tier: str, rel: float) -> None:
    pair, dom = _pair()
    t = tier_registry().get(tier)
    genuine = t.bound(pair, dom)
    assert genuine.bound > 0

    def move(v: float) -> float:
        return math.nextafter(v, 0.0) if rel == -1.0 else v * (1 + rel)

    stated = dataclasses.replace(genuine, bound=move(genuine.bound),
                                 per_output=tuple(move(v) for v in genuine.per_output))
    _, problems = t.recheck(pair, dom, stated)
    if rel == 0.0 or 0 < rel <= RECERTIFY_RTOL:
        assert problems == []
    else:
        assert problems, f"a bound scaled by 1{rel:+g} was accepted"
        assert ("SMALLER than" if rel < 0 else "larger than") in problems[0]


def test_recheck_refuses_nan() -> None:
    pair, dom = _pair()
    t = tier_registry().get("bounds")
    genuine = t.bound(pair, dom)
    stated = dataclasses.replace(genuine, bound=float("nan"))
    _, problems = t.recheck(pair, dom, stated)
    assert problems and "not comparable with" in problems[0]
