"""A bound re-checked where the arithmetic sums in another order (a GPU, another BLAS):
the ``bounds`` tier's discrete choices must not tip on the last bits (docs/bounds.md,
"On a GPU").

The other machine is stood in for by moving every weight of both networks by at most
one ulp (``propagation_helpers.jitter``). A bound computed there and stated
``DEVICE_MARGIN`` higher (as a GPU's is) must pass ``Tier.recheck`` here: before the
near-tie rule of the ReLU split (:data:`certcompress.bounds.propagation.relax.TIE_REL`)
the recomputed bound moved by up to 18% and these re-checks were refused. A certificate
made before the rule (no ``split_ties`` recorded) is re-checked with the plain
comparison it was made with. Soundness of the tier with the rule: the shared harness
(one-sided, bound >= found) on the same pairs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _nets import compress, mlp, random_conv_net
from propagation_helpers import check_tier_sound, jitter, random_box

import certcompress as cc
from certcompress.bounds.propagation.device import stated_up
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.propagation.interval import PairBounds
from certcompress.bounds.propagation.relax import (
    SPLIT_TIES,
    relax_relu,
    relu_backward,
    single_relu,
)
from certcompress.bounds.tierbase import GraphPair
from certcompress.bounds.tiers import tier_registry
from certcompress.certificate import MethodBound
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError


def _mlp_pair(s: int) -> tuple[torch.nn.Module, torch.nn.Module, InputDomain]:
    net = mlp(6, 16, 3, 4, seed=s)
    return net, compress(net, "round", 1 + s, 0.05), random_box((1, 6), 1 + s)


def _cnn_pair() -> tuple[torch.nn.Module, torch.nn.Module, InputDomain]:
    cnet, shape = random_conv_net(["conv_bn", "concat", "avgpool", "convT"], 3, 6, 3, seed=11)
    return cnet, compress(cnet, "prune", 21, 0.4), random_box(shape, 31, max_width=1.0)


# (pair, options, jitter seed): each moved by 2% to 18% before the rule
# (benchmarks/bench_reorder_sensitivity.py)
CASES = [("mlp0", {"intermediate": "crown"}, 1),
         ("mlp0", {"intermediate": "crown", "chain": False}, 2),
         ("mlp1", {"intermediate": "crown", "sign_rows": 4}, 0),
         ("mlp2", {"intermediate": "crown", "slope_steps": 5}, 0),
         ("cnn", {"intermediate": "interval"}, 1),
         ("mlp0", {"intermediate": "interval"}, 0),  # the chain pass's candidate pick
         ("mlp0", {"intermediate": "interval"}, 1),
         ("mlp0", {"intermediate": "interval"}, 2)]


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, InputDomain]:
    return _cnn_pair() if name == "cnn" else _mlp_pair(int(name[-1]))


def _as_gpu_entry(entry: MethodBound) -> MethodBound:
    """``entry`` stated as a GPU states it: ``DEVICE_MARGIN`` higher."""
    gpu = torch.device("cuda")
    bound, *per = stated_up(gpu, [entry.bound, *entry.per_output])
    return dataclasses.replace(entry, bound=bound, per_output=tuple(per))


@pytest.mark.parametrize("name,kw,seed", CASES)
def test_bound_from_another_summation_order_passes_the_recheck(name: str, kw: dict, seed: int
                                                                ) -> None:
    net, comp, dom = _pair(name)
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    tier = tier_registry().get("bounds")
    opts = PropagationOptions(device="cpu", **kw)
    there = tier.bound(GraphPair(jitter(g, seed), jitter(g2, seed)), dom, opts)
    assert there.details["split_ties"] == SPLIT_TIES.get()
    here, problems = tier.recheck(GraphPair(g, g2), dom, _as_gpu_entry(there))
    assert problems == [], problems
    rel = abs(here.bound - there.bound) / there.bound
    assert rel < 1e-12, f"the bound moved by {rel:.3g} relative under 1-ulp weight moves"
    # and it is a bound: one-sided against the attacks of the shared harness, every node
    check_tier_sound(net, comp, dom, seed, opts)


def test_certificate_made_before_the_rule_is_rechecked_with_the_plain_comparison() -> None:
    net, comp, dom = _mlp_pair(0)
    pair = GraphPair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    tier = tier_registry().get("bounds")
    token = SPLIT_TIES.set("strict")
    try:
        old = tier.bound(pair, dom)
    finally:
        SPLIT_TIES.reset(token)
    new = tier.bound(pair, dom)
    assert new.bound < old.bound  # on this pair the rule is tighter (0.146 vs 0.200)
    legacy = dataclasses.replace(old, details={k: v for k, v in old.details.items()
                                               if k != "split_ties"})
    assert tier.recheck(pair, dom, legacy)[1] == []
    # the same entry claiming the rule is refused: it is not what the rule gives
    claimed = dataclasses.replace(old, details={**old.details, "split_ties": "tolerant"})
    problems = tier.recheck(pair, dom, claimed)[1]
    assert problems and "larger than" in problems[0]
    bogus = dataclasses.replace(old, details={**old.details, "split_ties": "fuzzy"})
    with pytest.raises(ConfigurationError, match="split_ties is 'fuzzy'"):
        tier.recheck(pair, dom, bogus)


def test_split_choice_does_not_tip_on_the_last_bit() -> None:
    """``relu_backward``'s default split on bounds moved by one ulp gives coefficients
    within rounding of the unmoved ones (with the plain comparison, exact ties between
    the two splits made some jump)."""
    gen = torch.Generator().manual_seed(3)
    shape = (1, 8, 16)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    zl, dl = r(*shape), r(*shape) * 0.1
    zu, du = zl + r(*shape).abs(), dl + 0.1 * r(*shape).abs()
    lz, ld = r(32, 8, 16), r(32, 8, 16)
    base = PairBounds(zl, zu, zl - du, zu - dl, dl, du)
    ref = relu_backward(relax_relu(base), lz, ld, None)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        moved = PairBounds(*(t * (1 + torch.randint(-1, 2, t.shape, generator=g)
                                  .to(t.dtype) * 2.0 ** -52)
                             for t in (zl, zu, zl - du, zu - dl, dl, du)))
        got = relu_backward(relax_relu(moved), lz, ld, None)
        for a, b in zip(ref, got):
            assert a is not None and b is not None
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), \
                f"seed {seed}: largest change {float((a - b).abs().max()):.3g}"


def test_tangent_slope_of_a_symmetric_interval_does_not_tip_on_the_last_bit() -> None:
    """``u = -l`` (a zero-bias neuron over a box centred at 0): the default tangent slope
    is the same for ``l`` and ``u`` moved by one ulp either way (the plain ``u > -l``
    gives 1 or 0 by the last bit)."""
    hi = torch.tensor([[0.3, 1.7, 2.0 ** -40, 5.0]], dtype=torch.float64)
    lo = -hi
    ref = single_relu(lo, hi)[2]
    assert ref.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    for dl in (-1, 0, 1):
        for du in (-1, 0, 1):
            lo2 = lo * (1 + dl * 2.0 ** -52)
            hi2 = hi * (1 + du * 2.0 ** -52)
            assert torch.equal(single_relu(lo2, hi2)[2], ref), (dl, du)
    # away from the tie, CROWN's choice
    assert single_relu(lo, hi * 1.001)[2].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert single_relu(lo * 1.001, hi)[2].tolist() == [[0.0, 0.0, 0.0, 0.0]]
