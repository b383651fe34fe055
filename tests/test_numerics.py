"""Numerics: path-norms far beyond float32 (and float64) range, exact single-weight
path-metrics at 1e50 scale, power-of-two scaling through intermediate overflow, and
refusal of NaN/inf parameters. Reference values come from an independent evaluation
of the magnitude recursion in 60-digit decimal arithmetic (no exponent limit)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from decimal import Decimal, localcontext

import pytest
import torch
from torch import nn

import certcompress as cc


class ResMLP(nn.Module):
    """``x -> inp -> (x + fc2(ReLU(fc1(x)))) * blocks -> out``, random N(0, scale^2)
    parameters."""

    def __init__(self, width: int, blocks: int, scale: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
             for _ in range(blocks)])
        self.out = nn.Linear(width, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=g))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x)


def _dec_affine(lin: nn.Linear, v: Sequence[Decimal]) -> list[Decimal]:
    w = lin.weight.detach().double().abs().tolist()
    b = lin.bias.detach().double().abs().tolist()
    return [sum((Decimal(wij) * vj for wij, vj in zip(row, v)), Decimal(bi))
            for row, bi in zip(w, b)]


def decimal_path_norm(model: nn.Module) -> Decimal:
    """``||Phi(theta)||_1`` of a ResMLP or a Linear/ReLU chain in exact-ish decimal."""
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.Emax = 10 ** 6
        ctx.Emin = -(10 ** 6)
        if isinstance(model, ResMLP):
            v = _dec_affine(model.inp, [Decimal(1)] * model.inp.in_features)
            for blk in model.blocks:
                h = _dec_affine(blk[2], _dec_affine(blk[0], v))
                v = [a + c for a, c in zip(v, h)]
            v = _dec_affine(model.out, v)
        else:
            lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
            v = [Decimal(1)] * lins[0].in_features
            for lin in lins:
                v = _dec_affine(lin, v)
        return +sum(v, Decimal(0))


def _log10(d: Decimal) -> float:
    with localcontext() as ctx:
        ctx.prec = 30
        return float(d.log10())


def _rel(a: float | Decimal, b: float | Decimal) -> float:
    return float(abs(Decimal(a) - Decimal(b)) / abs(Decimal(b)))


def _node_of(g: cc.Graph, param: str) -> str:
    return next(n.name for n in g.affine_nodes if param in n.param_names)


@pytest.fixture(scope="module")
def deep() -> ResMLP:
    return ResMLP(4, 48, 1.0, seed=0)


def test_deep_residual_path_norm_beyond_1e30(deep: ResMLP) -> None:
    pn = cc.path_norm(deep, (1, 4))
    assert math.isfinite(pn) and pn > 1e30 and pn > float(torch.finfo(torch.float32).max)
    assert _rel(pn, decimal_path_norm(deep)) < 1e-10


def test_removing_one_small_weight_equals_its_score(deep: ResMLP) -> None:
    model = copy.deepcopy(deep)
    with torch.no_grad():
        model.blocks[20][0].weight[1, 2] = 1e-3
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.blocks[20][0].weight[1, 2] = 0.0
    g = cc.trace(model, (1, 4))
    pm = cc.path_metric(g, pruned)
    assert pm.exact and pm.changed_parameters == 1
    assert math.isfinite(pm.value) and all(math.isfinite(v) for v in pm.per_output)
    scores = cc.path_magnitude_scores(g)
    for s in scores.values():
        assert bool(torch.isfinite(s.weight).all())
        assert s.bias is None or bool(torch.isfinite(s.bias).all())
    score = float(scores[_node_of(g, "blocks.20.0.weight")].weight[1, 2])
    total = cc.path_norm(g)
    assert 0 < score < total * 1e-3  # a small weight, far below the path-norm
    assert _rel(pm.value, score) < 1e-6, (pm.value, score)
    # and both equal the difference of the two exact path-norms
    with localcontext() as ctx:
        ctx.prec = 60
        want = decimal_path_norm(model) - decimal_path_norm(pruned)
    assert _rel(pm.value, want) < 1e-6
    assert _rel(score, want) < 1e-6


def test_intermediate_overflow_is_rescaled() -> None:
    """Values of 1e450 inside the network, a path-norm of about 1e2 at the output: the
    power-of-two scaling must give the finite value, and a finite path-metric."""
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.Linear(2, 2), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(2, 2), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lins = [m for m in model if isinstance(m, nn.Linear)]
        for i, lin in enumerate(lins):
            s = 1e150 if i < 3 else 1e-150
            lin.weight.copy_(s * (1 + torch.rand(2, 2, generator=g, dtype=torch.float64)))
            lin.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    want = decimal_path_norm(model)
    assert 1e-3 < want < 1e6 and _log10(want) < 10
    pn = cc.path_norm(model, (1, 2))
    assert math.isfinite(pn) and _rel(pn, want) < 1e-10
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[2].weight[0, 1] = 0.0  # the second Linear
    pm = cc.path_metric(model, pruned, (1, 2))
    diff = want - decimal_path_norm(pruned)
    assert pm.exact and math.isfinite(pm.value) and _rel(pm.value, diff) < 1e-9


def test_path_norm_beyond_float64_range_reports_log10() -> None:
    model = ResMLP(4, 40, 3000.0, seed=1)
    want = _log10(decimal_path_norm(model))
    assert want > 309
    with pytest.raises(cc.NumericalRangeError) as info:
        cc.path_norm(model, (1, 4))
    m = re.search(r"10\^(\d+(?:\.\d+)?)", str(info.value))
    assert m is not None, str(info.value)
    assert abs(float(m.group(1)) - want) <= 0.11, (m.group(1), want)

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.out.weight[0, 0] = 0.0
    results: list[float] = []
    for fn in (lambda: cc.path_metric(model, pruned, (1, 4)).value,
               lambda: max(float(s.weight.max()) for s in
                           cc.path_magnitude_scores(model, (1, 4)).values())):
        try:
            v = fn()
        except cc.NumericalRangeError as exc:  # the other acceptable outcome
            assert re.search(r"10\^\d+", str(exc)), str(exc)
        else:
            assert math.isfinite(v)
            results.append(v)
    assert all(math.isfinite(v) for v in results)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameter_is_refused(bad: float) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[2].weight[1, 1] = bad
    with pytest.raises(cc.NumericalRangeError, match="inf or NaN"):
        cc.path_norm(broken, (1, 3))
    with pytest.raises(cc.NumericalRangeError):
        cc.path_metric(model, broken, (1, 3))
    with pytest.raises(cc.NumericalRangeError):
        cc.certify(model, broken, (1, 3), 1.0, search_steps=0)
    with pytest.raises(cc.NumericalRangeError):
        cc.path_magnitude_scores(broken, (1, 3))


def test_sign_change_of_tiny_weights_is_not_lost_to_underflow() -> None:
    """``w * w' < 0`` underflows to zero for |w|, |w'| ~ 1e-200; the sign check must not
    use the product, or the change would be treated as a same-sign no-op."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 2, bias=False)).double().eval()
    with torch.no_grad():
        a[0].weight.copy_(torch.tensor([[1e-200, 1.0, 2.0], [0.5, 0.25, 1.0]],
                                        dtype=torch.float64))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight[0, 0] = -1e-200
    pm = cc.path_metric(a, b, input_shape=(1, 3))
    assert pm.sign_changes == 1 and pm.changed_parameters == 1
    assert not pm.exact
    # The true metric is 2e-200; the bound must not be below it.
    assert pm.value >= 2e-200
