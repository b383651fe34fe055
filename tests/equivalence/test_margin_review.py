"""Review of the chain pass's dead-neuron magnitude mask (docs/equivalence.md,
"Rounding"): the magnitudes are 0 at ReLUs dead in both networks, so no back-substituted
form may carry a nonzero coefficient through such a neuron, in any path.

* :func:`test_zero_width_interval_at_zero_carries_no_form`: a neuron whose compressed
  pre-activation interval is exactly ``[0, 0]`` (a valid prior: the compressed neuron is
  pruned) and whose original one is ``<= 0`` is dead in both networks, but
  ``single_relu`` reads ``[0, 0]`` as *active* (and ``mixed_chords`` routes it through
  the difference's chords), so :meth:`ChainState._pack` carried the pre-activation's form
  through it with no margin: the bound came out 1.0 below the exact value 0 (fixed: the
  pack is 0 there, as :meth:`ChainState._drop_dead` in the other paths).
* :func:`test_split_priors_point_boxes_exact`: deep MLPs with cancelling pre-activations
  (exact values about 1 from sums of about 1e8) against pruned and float16 twins, point
  boxes, priors clamped as ReLU splits clamp them (signs read from the exact values), every
  back-substitution path with ``mixed_chords``: each bound at least the exact value
  (:class:`fractions.Fraction`), and the pack / rows 0 at every dead neuron."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
from _pairs import cancelling_mlp, check_eps, deviation, exact_layers, grid
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.relax import SPLIT_TIES
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import ChainPair, ChainState, chain_from_pair
from certcompress.equivalence.relu_split import Split, beta_bounds

PATHS = (("crown", "choose", 0), ("both", "choose", 0), ("crown", "default", 0),
         ("crown", "ramp", 0), ("crown", "min2", 2), ("forward", "choose", 0))


def _pair(net: nn.Module, comp: nn.Module, n_in: int) -> ChainPair:
    chain = chain_from_pair(lower_pair(cc.trace(net, (1, n_in)), cc.trace(comp, (1, n_in))))
    assert chain is not None
    return chain


def _assert_no_form_through_dead(state: ChainState) -> None:
    for j, dead in state.dead.items():
        pack = state._pack(j)
        assert bool((pack[:, dead] == 0).all()), f"ReLU layer {j}: pack nonzero at a dead neuron"


# ------------------------------------------------------------------ the found bug
def _tiny() -> tuple[nn.Sequential, nn.Sequential]:
    """``z = 1e16 x1 - x2 - 1e16 x3 + 1`` (exactly 0 at ``x = 1``, computed in float64 as
    a sum that rounds), the compressed neuron pruned (``c = 0``), output ``ReLU``."""
    def mk() -> nn.Sequential:
        return nn.Sequential(nn.Linear(3, 1, dtype=torch.float64), nn.ReLU(),
                             nn.Linear(1, 1, dtype=torch.float64)).eval()
    net, comp = mk(), mk()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1e16, -1.0, -1e16]], dtype=torch.float64))
        net[0].bias.fill_(1.0)
        comp[0].weight.zero_()
        comp[0].bias.zero_()
        for m in (net[2], comp[2]):
            m.weight.fill_(1.0)
            m.bias.fill_(0.0)
    return net, comp


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("intermediate", ["crown", "forward", "both"])
def test_zero_width_interval_at_zero_carries_no_form(mixed: bool, intermediate: str) -> None:
    net, comp = _tiny()
    chain = _pair(net, comp, 3)
    x = torch.ones((1, 3), dtype=torch.float64)
    assert exact_layers(net, x)[0] == [Fraction(0)] and exact_layers(comp, x)[0] == [Fraction(0)]
    plain = ChainState(chain, x, x, intermediate="crown", quantities=("z", "d"))
    p0 = plain.pre_bounds()[0]
    assert p0 is not None
    p0 = p0.clone()
    # valid on the box: z(x) = 0 <= 0 exactly, c = 0 exactly (pruned), d = z - c <= 0
    p0[:, 1] = 0.0
    p0[:, 2] = 0.0
    p0[:, 3] = 0.0
    p0[:, 5] = 0.0
    st = ChainState(chain, x, x, intermediate=intermediate, quantities=("z", "d"),
                    prior=[p0, None, None], mixed_chords=mixed)
    assert bool(st.dead[1].all())
    _assert_no_form_through_dead(st)
    # upper bound of -(f - f') (exact 0); was -1.0 with mixed_chords before the fix
    for steps in (0, 2):
        ub, _ = st.upper_bounds(None, torch.tensor([[-1.0]], dtype=torch.float64),
                                torch.tensor([0]), optimize=steps)
        assert Fraction(float(ub[0])) >= 0, float(ub[0])


# ------------------------------------------------------------------ adversarial exact
N_IN, WIDTH, N_OUT = 3, 8, 2


def _x0(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(500 + seed)
    return torch.rand((1, N_IN), generator=gen, dtype=torch.float64) * 2 - 1


def _thirds(shift: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Biases by thirds: ``-pre + U(0, 1)`` (alive, about 1), ``-pre - shift`` (0 or just
    below, to within rounding) and ``-|pre| - 1 - U(0, 1)`` (dead)."""
    def bias(pre: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k = torch.arange(pre.shape[0]) % 3
        off = torch.rand(pre.shape[0], generator=gen, dtype=torch.float64)
        return torch.where(k == 0, -pre + off, torch.where(
            k == 1, -pre - shift, -pre.abs() - 1.0 - off))
    return bias


def _deep(seed: int, depth: int) -> nn.Sequential:
    """Weights about 1e3-1e4 of both signs; a third of each layer's biases cancel the
    pre-activation at :func:`_x0` to about 1 (sums about 1e8), a third to within rounding,
    the rest negative (dead)."""
    return cancelling_mlp(torch.Generator().manual_seed(seed), _x0(seed), WIDTH, depth, N_OUT,
                          lambda i: 3e3 if i < 3 else 1.0, _thirds(0.0), last_bias=False)


def _twin(net: nn.Sequential, kind: str) -> nn.Sequential:
    """``"half"``: every parameter cast to float16; ``"pruned"``: every fourth neuron of
    each hidden layer removed (its row and bias 0: ``c = 0`` exactly)."""
    out = nn.Sequential(*[nn.Linear(m.in_features, m.out_features, dtype=torch.float64)
                          if isinstance(m, nn.Linear) else nn.ReLU() for m in net]).eval()
    lins = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(net, out)):
            if not isinstance(a, nn.Linear):
                continue
            assert isinstance(b, nn.Linear)
            if kind == "half":
                b.weight.copy_(a.weight.half().double())
                b.bias.copy_(a.bias.half().double())
            else:
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
                if a is not lins[-1]:
                    b.weight[(i // 2) % 4::4] = 0.0
                    b.bias[(i // 2) % 4::4] = 0.0
    return out


def _split_prior(chain: ChainPair, x: torch.Tensor, ez: list[list[Fraction]],
                 ec: list[list[Fraction]], every: int) -> list[torch.Tensor | None]:
    """The plain pass's layer bounds at the point box, with the sign constraints a ReLU
    split would add clamped in (``z <= 0`` / ``z >= 0`` and ``c`` likewise, read from the
    exact values: valid on the box) at every ``every``-th unstable neuron."""
    plain = ChainState(chain, x, x, intermediate="crown", quantities=("z", "d"))
    pre = plain.pre_bounds()
    out: list[torch.Tensor | None] = []
    a = 0
    for k, p in enumerate(pre):
        if p is None:
            out.append(None)
            continue
        t = p.clone()
        if k + 1 < len(chain.layers):
            for n in range(t.shape[2]):
                for vals, lo, hi in ((ez, 0, 1), (ec, 2, 3)):
                    if not (float(t[0, lo, n]) < 0 < float(t[0, hi, n])):
                        continue
                    a += 1
                    if a % every:
                        continue
                    if vals[k // 2][n] <= 0:
                        t[0, hi, n] = 0.0
                    if vals[k // 2][n] >= 0:
                        t[0, lo, n] = 0.0
        out.append(t)
    return out


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(N_OUT, dtype=torch.float64)
    zero = torch.zeros_like(eye)
    return torch.cat([zero, zero, eye, -eye]), torch.cat([eye, -eye, zero, zero])


@pytest.mark.parametrize("ties", ["tolerant", "strict"])
@pytest.mark.parametrize("kind", ["half", "pruned"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_priors_point_boxesexact_layers(kind: str, seed: int, ties: str) -> None:
    """(Both near-tie rules, :data:`SPLIT_TIES`: every candidate the rules may take within
    ``TIE_REL`` is a valid bound, so both stay above the exact value.)"""
    token = SPLIT_TIES.set(ties)
    try:
        _split_priors_case(kind, seed)
    finally:
        SPLIT_TIES.reset(token)


def _split_priors_case(kind: str, seed: int) -> None:
    depth = 6 + 2 * seed
    net = _deep(seed, depth)
    comp = _twin(net, kind)
    chain = _pair(net, comp, N_IN)
    x = _x0(seed)
    ez, ec = exact_layers(net, x), exact_layers(comp, x)
    cz, cd = _rows()
    r = cz.shape[0]
    dead_seen = 0
    for every in (1, 2):
        prior = _split_prior(chain, x, ez, ec, every)
        for intermediate, relaxation, steps in PATHS:
            for mixed in (False, True):
                st = ChainState(chain, x, x, intermediate=intermediate, quantities=("z", "d"),
                                relaxation=relaxation, prior=prior, mixed_chords=mixed,
                                empty_ok=True)
                assert not bool(st.infeasible.any())
                _assert_no_form_through_dead(st)
                dead_seen += int(sum(int(d.sum()) for d in st.dead.values()))
                ub, _ = st.upper_bounds(cz, cd, torch.zeros(r, dtype=torch.long),
                                        optimize=steps)
                z, c = ez[-1], ec[-1]
                for q in range(r):
                    exact = sum((Fraction(float(cz[q, o])) * z[o]
                                 + Fraction(float(cd[q, o])) * (z[o] - c[o])
                                 for o in range(N_OUT)), Fraction(0))
                    assert Fraction(float(ub[q])) >= exact, \
                        (every, intermediate, relaxation, steps, mixed, q, float(ub[q]),
                         float(exact))
    assert dead_seen > 0


# ------------------------------------------------------------------ end to end
def _deep2(seed: int, n_in: int, depth: int) -> nn.Sequential:
    """:func:`_deep`'s construction on ``n_in`` inputs (cancelling sums about 1e7 at the
    centre 0.1, many neurons dead in both networks)."""
    return cancelling_mlp(torch.Generator().manual_seed(seed),
                          torch.full((1, n_in), 0.1, dtype=torch.float64), WIDTH, depth, N_OUT,
                          lambda i: 1e3 if i < 2 else 1.0, _thirds(1e-3), last_bias=False)


@pytest.mark.parametrize("split", ["input", "relu"])
@pytest.mark.parametrize("n_in,kind", [(1, "half"), (2, "pruned")])
def test_verify_equivalence_never_verifies_below_the_grid(split: str, n_in: int,
                                                          kind: str) -> None:
    """``verify_equivalence`` just below the dense grid's worst deviation is never
    "verified"; just above it, a verified bound is at least the grid's worst
    (tests/equivalence/_pairs.py ``check_eps``)."""
    net = _deep2(3 + n_in, n_in, 6)
    comp = _twin(net, kind)
    c = torch.full((1, n_in), 0.1, dtype=torch.float64)
    dom = InputDomain.box(c - 1e-6, c + 1e-6, shape=(1, n_in))
    worst = float(deviation(net, comp, grid(dom, n_in), "inf").max())
    assert worst > 0
    for eps in (worst * (1 - 1e-9), worst * (1 + 1e-3), worst * 2):
        check_eps(net, comp, dom, n_in, eps, "inf", split=split, timeout=4.0,
                  max_regions=400)


@pytest.mark.parametrize("kind", ["half", "pruned"])
@pytest.mark.parametrize("seed", [0, 1])
def test_beta_bounds_with_split_constraintsexact_layers(kind: str, seed: int) -> None:
    """:func:`beta_bounds` with ReLU-split constraints on original and compressed neurons
    (signs read from the exact pre-activations at the point, so the sub-domain holds the
    point; the prior clamped as the search clamps it): at least the exact value."""
    net = _deep(seed, 6 + 2 * seed)
    comp = _twin(net, kind)
    chain = _pair(net, comp, N_IN)
    x = _x0(seed)
    ez, ec = exact_layers(net, x), exact_layers(comp, x)
    plain = ChainState(chain, x, x, intermediate="crown", quantities=("z", "d"))
    pre = [None if p is None else p.clone() for p in plain.pre_bounds()]
    splits: list[Split] = []
    for k, t in enumerate(pre):
        if t is None or k + 1 >= len(chain.layers):
            continue
        for n in range(t.shape[2]):
            for q, vals, lo, hi in (("z", ez, 0, 1), ("c", ec, 2, 3)):
                # every neuron with a nonzero exact value: a constraint that its bounds
                # already imply is still a valid (redundant) split, and charges the margin
                v = vals[k // 2][n]
                if v == 0:
                    continue
                sign = 1 if v > 0 else -1
                if float(t[0, lo, n]) < 0 < float(t[0, hi, n]):
                    t[0, lo if sign > 0 else hi, n] = 0.0
                splits.append((k, n, q, sign))
    assert {(q, s) for _, _, q, s in splits} == {("z", 1), ("z", -1), ("c", 1), ("c", -1)}
    st = ChainState(chain, x, x, intermediate="crown", quantities=("z", "d"), prior=pre,
                    mixed_chords=True, empty_ok=True)
    assert not bool(st.infeasible.any())
    cz, cd = _rows()
    r = cz.shape[0]
    ub = beta_bounds(st, cz, cd, torch.zeros(r, dtype=torch.long), [tuple(splits)], 6)
    for q in range(r):
        exact = sum((Fraction(float(cz[q, o])) * ez[-1][o]
                     + Fraction(float(cd[q, o])) * (ez[-1][o] - ec[-1][o])
                     for o in range(N_OUT)), Fraction(0))
        assert Fraction(float(ub[q])) >= exact, (q, float(ub[q]), float(exact))
