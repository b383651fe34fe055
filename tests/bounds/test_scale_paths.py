"""The cost-saving paths of the bounds tier (docs/bounds.md, "Cost at scale"): the
sign-vector l1 maximum that stops once it cannot tighten the bound, the affine
primitive that stores no absolute weights and no ``w - wc`` and shares its maps for equal
weights, and the ReLU back-substitution that chooses its split in place. Each gives
exactly the result of the plain computation."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from propagation_helpers import check_tier_sound, random_box
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation import lowering
from certcompress.bounds.propagation.engine import (
    PropagationOptions,
    capped_row_max,
    output_upper_bounds,
    propagate,
    sign_vector_order,
)
from certcompress.bounds.propagation.interval import PairBounds
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PAffine
from certcompress.bounds.propagation.relax import relax_relu, relu_backward


def _pair(seed: int, m: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                        nn.Linear(12, m)).eval()
    comp = nn.Sequential(nn.Flatten(), nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12),
                         nn.ReLU(), nn.Linear(12, m)).eval()
    comp.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p in comp.parameters():
            p.mul_((p.abs() > 0.15).to(p.dtype))
    return net, comp


def test_capped_row_max_equals_min_of_full_max() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        P = 1 + trial % 4
        R = 1 + trial % 23
        vals = torch.randn(R, generator=gen, dtype=torch.float64)
        prob = torch.randint(0, P, (R,), generator=gen)
        cap = torch.randn(P, generator=gen, dtype=torch.float64)
        calls: list[int] = []

        def rows(idx: torch.Tensor, vals: torch.Tensor = vals,
                 calls: list[int] = calls) -> torch.Tensor:
            calls.append(idx.numel())
            return vals[idx]

        best = capped_row_max(rows, prob, cap, chunk=1 + trial % 5)
        full = torch.full((P,), -torch.inf, dtype=torch.float64).scatter_reduce(
            0, prob, vals, "amax")
        assert torch.equal(torch.minimum(cap, best), torch.minimum(cap, full))
        assert sum(calls) <= R


def test_capped_row_max_skips_rows_once_the_cap_is_reached() -> None:
    vals = torch.tensor([5.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    seen: list[int] = []

    def rows(idx: torch.Tensor) -> torch.Tensor:
        seen.extend(idx.tolist())
        return vals[idx]

    best = capped_row_max(rows, torch.zeros(4, dtype=torch.int64),
                          torch.tensor([4.0], dtype=torch.float64), chunk=1)
    assert seen == [0] and float(best[0]) == 5.0


def test_sign_vector_tier_bound_equals_full_maximum() -> None:
    """The engine's l1 bound with the early stop (the tier without the chain routing)
    equals min(sum of per-output bounds, max over all sign vectors) computed row by row
    without it; the routed tier is never above it."""
    for seed in range(4):
        net, comp = _pair(seed)
        dom = random_box((1, 5), seed, max_width=2.0 if seed % 2 else 0.2)
        tier, _ = check_tier_sound(net, comp, dom, seed, PropagationOptions(chain=False))
        routed, _ = check_tier_sound(net, comp, dom, seed)
        assert routed.bound <= tier.bound
        g, g2 = cc.trace(net, (1, 5)), cc.trace(comp, (1, 5))
        state = propagate(lower_pair(g, g2), dom.lower_tensor().unsqueeze(0),
                          dom.upper_tensor().unsqueeze(0), PropagationOptions())
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=4)),
                             dtype=torch.float64)
        full = float(output_upper_bounds(state, {"d": signs}).max())
        per_sum = sum(tier.per_output)
        assert tier.bound <= max(min(full, per_sum), 0.0) * (1 + 1e-12) + 1e-300
        assert tier.bound >= min(max(full, 0.0), per_sum * (1 - 1e-12))


def test_sign_vector_order_puts_the_largest_side_first() -> None:
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=3)), dtype=torch.float64)
    order = sign_vector_order(signs, torch.tensor([3.0, 0.0, 1.0]), torch.tensor([0.0, 2.0, 0.5]))
    assert signs[order[0]].tolist() == [1.0, -1.0, 1.0]
    assert sorted(order.tolist()) == list(range(8))


def test_affine_with_equal_weights_shares_maps_and_matches_copies() -> None:
    """A network paired with itself: the affine primitive shares one transposed map and
    its dw is zero, with the same bounds as a pair of equal copies."""
    net, _ = _pair(7)
    copy = _pair(7)[0]
    g, g_copy = cc.trace(net, (1, 5)), cc.trace(copy, (1, 5))
    shared, copies = lower_pair(g, g), lower_pair(g, g_copy)
    aff = [n for n in shared.nodes if isinstance(n, PAffine)]
    assert aff and all(n.t_w is n.t_wc and not n.changed for n in aff)
    assert all(float(n.dw_abs.max()) == 0.0 for n in aff)
    assert all(torch.equal(n.wc_abs, n.w.abs()) for n in aff)
    rows = torch.randn(3, *aff[0].shape, dtype=torch.float64)
    assert torch.equal(aff[0].t_dw(rows)[0], torch.zeros((3,) + aff[0].in_shape,
                                                         dtype=torch.float64))
    dom = random_box((1, 5), 3)
    lo, hi = dom.lower_tensor().unsqueeze(0), dom.upper_tensor().unsqueeze(0)
    a, b = propagate(shared, lo, hi), propagate(copies, lo, hi)
    for x, y in zip(a.bounds, b.bounds):
        for k in ("zl", "zu", "cl", "cu", "dl", "du"):
            assert torch.equal(getattr(x, k), getattr(y, k))


def test_affine_computes_dw_where_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pruned pair: the affine primitive holds no ``w - wc`` tensor (and, the models
    being float32 and their weights held compact, no float64 weight either: only the
    graphs' own parameters), and ``w``, ``wc``, ``dw``, ``dw_abs``, ``t_w``, ``t_wc`` and
    ``t_dw`` are exactly the weights, their difference, its absolute value and their
    transposes (the vector-Jacobian products), for the float32 pair with compact and
    with resident weights (small layers: ``RESIDENT_BYTES``) and for its float64 copy."""
    net, comp = _pair(3)
    cases = ((net, comp, True, 0), (net, comp, False, lowering.RESIDENT_BYTES),
             (copy.deepcopy(net).double(), copy.deepcopy(comp).double(), False, 0))
    for a, b, compact, resident in cases:
        monkeypatch.setattr(lowering, "RESIDENT_BYTES", resident)
        g, g2 = cc.trace(a, (1, 5)), cc.trace(b, (1, 5))
        pair = lower_pair(g, g2)
        aff = [n for n in pair.nodes if isinstance(n, PAffine)]
        assert any(n.changed for n in aff)
        for n in aff:
            p, q = g.params[n.source], g2.params[n.source]
            assert (n.params is p and n.params_c is q) == (compact or not p.is_widened)
            assert n.params.is_widened == compact
            assert p.stored.dtype == next(a.parameters()).dtype
            held = [v for v in vars(n).values() if isinstance(v, torch.Tensor)
                    and v.shape == n.weight_shape]
            assert all(v is n.params.stored or v is n.params_c.stored for v in held)
            w, wc = p.weight, q.weight
            assert w.dtype == torch.float64
            assert torch.equal(n.w, w) and torch.equal(n.wc, wc)
            diff = w - wc
            assert torch.equal(n.dw, diff) and torch.equal(n.dw_abs, diff.abs())
            assert torch.equal(n.w_abs, w.abs()) and torch.equal(n.wc_abs, wc.abs())
            rows = torch.randn(4, *n.shape, dtype=torch.float64)
            # Linear: y = x W^T, so the transpose is W
            for t, m in ((n.t_dw, diff), (n.t_w, w), (n.t_wc, wc), (n.t_dw, diff)):
                assert torch.allclose(t(rows)[0].reshape(4, -1), rows.reshape(4, -1) @ m,
                                      rtol=1e-12, atol=1e-12)
            assert torch.equal(p.weight, w) and torch.equal(q.weight, wc)  # not written


def test_relu_backward_in_place_choice_matches_the_plain_one() -> None:
    """The default split chosen in place (no autograd) gives bit for bit the result of
    the out-of-place choice taken while gradients are recorded."""
    gen = torch.Generator().manual_seed(5)
    shape = (1, 3, 4)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    zl, dl = r(*shape), r(*shape)
    zu, du = zl + r(*shape).abs(), dl + r(*shape).abs()
    cl, cu = zl - du, zu - dl
    relax = relax_relu(PairBounds(zl, zu, cl, cu, dl, du))
    lz, ld = r(6, 3, 4), r(6, 3, 4)
    with torch.no_grad():
        fast = relu_backward(relax, lz, ld, None)
    with torch.enable_grad():
        plain = relu_backward(relax, lz, ld, None)
    for a, b in zip(fast, plain):
        assert a is not None and b is not None and torch.equal(a, b)
