"""Hostile review of the ReLU-split sub-domain attack and of ``split="auto"`` as the
default of ``verify_equivalence`` (certcompress/equivalence/relu_split.py,
docs/equivalence.md "ReLU splitting"): pairs the other tests do not cover (small CNNs
with BatchNorm, 16 and 25 inputs, pruned / float16 / rounded, l_inf, l1, top-1,
confidence top-1) checked one-sidedly against the shared harness's attack
(tests/_soundness.py: random points, vertices, PGD on the float64 networks); the same
call repeats itself; degenerate boxes, identical twins, image and flat domains, the
region budget; every point the attack proposes lies in the box; and the first
ReLU-split call of a process does not import torch._dynamo (seconds of every ``equiv``
command)."""

from __future__ import annotations

import copy

import _soundness as sh
import pytest
import torch
from _nets import deterministic_copy
from _pairs import check_eps, check_top1, deviation
from torch import nn

import certcompress as cc
from certcompress.domain import InputDomain
from certcompress.equivalence import relu_split


def _cnn(side: int, seed: int, bn: bool = True) -> nn.Module:
    """conv(1->2, 3x3, pad 1) [+ BatchNorm] + ReLU + flatten + linear(->6) + ReLU +
    linear(->3), float64, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 2, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(2))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(2 * side * side, 6), nn.ReLU(),
               nn.Linear(6, 3)]
    net = nn.Sequential(*layers).double()
    if bn:
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.3, 0.3)
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.uniform_(-0.2, 0.2)
    return net.eval()


def _mlp(n: int, seed: int, width: int = 24) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).double().eval()


def _box(shape: tuple[int, ...], half: float) -> InputDomain:
    n = 1
    for s in shape:
        n *= s
    c = torch.linspace(-0.3, 0.4, n, dtype=torch.float64).reshape(shape)
    return InputDomain.box(c - half, c + half, shape=shape)


def _attack_points(net: nn.Module, comp: nn.Module, dom: InputDomain, seed: int
                   ) -> torch.Tensor:
    """The harness's points (centre, uniform, vertices, PGD on the l1 and on each output's
    deviation) and the iterates of margin PGD on the compressed model for every class."""
    found = sh.attack_models(net, comp, dom, dom.shape, seed, per_output=True,
                             n_uniform=400, n_vertices=200)
    lo, hi = sh.box(dom, dom.shape)
    gen = torch.Generator().manual_seed(seed)
    xs = [found.x] + [sh.margin_pgd(sh.f64(comp), lo, hi, c, gen) for c in range(3)]
    return torch.cat(xs)


# ------------------------------------------------------------------ soundness
@pytest.mark.parametrize("kind,side,seed,bn", [("prune", 4, 0, True), ("float16", 4, 1, True),
                                               ("round", 5, 2, False), ("prune", 5, 3, True)])
def test_default_split_on_small_cnns_is_one_sided(kind: str, side: int, seed: int,
                                                  bn: bool) -> None:
    """CNNs of 16 and 25 inputs run ReLU splitting by default; epsilon at 0.95x and
    1.05x the attack's worst deviation in l_inf and l1, top-1 and confident top-1:
    never verified where the attack finds a violation, every counterexample real."""
    net = _cnn(side, seed, bn)
    comp = deterministic_copy(net, kind)
    dom = _box((1, 1, side, side), 0.3)
    x = _attack_points(net, comp, dom, seed)
    statuses: list[str] = []
    for norm in ("inf", "l1"):
        worst = float(deviation(net, comp, x, norm).max())
        assert worst > 0.0
        for factor in (0.95, 1.05):
            res = check_eps(net, comp, dom, x, worst * factor, norm, max_regions=60)
            assert res.details["split"] == "relu"
            statuses.append(res.status)
    for conf in (None, 0.6):
        statuses.append(check_top1(net, comp, dom, x, conf, max_regions=60).status)
    assert statuses.count("unknown") < len(statuses), statuses


def test_penalty_and_corner_weights_only_shape_the_search(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge hinge-penalty weight (or a negative one, the wrong direction) and no
    corner starts change which points are tried, never the one-sided verdicts."""
    net = _cnn(4, 5)
    comp = deterministic_copy(net, "float16")
    dom = _box((1, 1, 4, 4), 0.3)
    x = _attack_points(net, comp, dom, 5)
    worst = float(deviation(net, comp, x, "inf").max())
    for penalty, corners in ((1e9, True), (-1e9, True), (1.0, False)):
        monkeypatch.setattr(relu_split, "PENALTY", penalty)
        monkeypatch.setattr(relu_split, "CORNER_STARTS", corners)
        for factor in (0.95, 1.05):
            check_eps(net, comp, dom, x, worst * factor, "inf", max_regions=40)
        check_top1(net, comp, dom, x, None, max_regions=40)


def test_attack_points_stay_in_their_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point the sub-domain attack hands to the float64 check lies in the box of
    the search (before the check's own clamp), also with huge weights whose input
    coefficients overflow."""
    seen: list[torch.Tensor] = []
    orig = relu_split._ReluSearch._check_points

    def spy(self: relu_split._ReluSearch, x: torch.Tensor) -> bool:
        seen.append(x.detach().clone())
        return orig(self, x)

    monkeypatch.setattr(relu_split._ReluSearch, "_check_points", spy)
    for scale in (1.0, 1e150):
        net = _mlp(16, 7)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        comp = deterministic_copy(net, "prune")
        dom = _box((1, 16), 0.5)
        seen.clear()
        cc.verify_equivalence(net, comp, dom, epsilon=1e-3 * scale, split="relu",
                              max_regions=30)
        lo, hi = sh.box(dom, dom.shape)
        assert seen
        for pts in seen:
            assert bool(torch.isfinite(pts).all())
            assert bool(((pts >= lo.reshape(1, -1)) & (pts <= hi.reshape(1, -1))).all())


# ---------------------------------------------------------------- determinism
def test_the_same_call_repeats_itself_and_a_seed_only_reorders() -> None:
    net = _mlp(16, 3)
    comp = deterministic_copy(net, "float16")
    dom = _box((1, 16), 0.5)
    x = _attack_points(net, comp, dom, 0)
    worst = float(deviation(net, comp, x, "inf").max())

    def key(r: cc.EquivalenceResult) -> tuple[object, ...]:
        return (r.status, r.regions, r.bound, r.found, r.counterexample, r.proven_fraction,
                r.details["rounds"], r.details["relu_splits"], r.details["input_splits"])

    for eps in (worst * 0.95, worst * 1.3):
        runs = [cc.verify_equivalence(net, comp, dom, epsilon=eps, max_regions=60)
                for _ in range(2)]
        assert runs[0].details["split"] == "relu"
        assert key(runs[0]) == key(runs[1])
        for seed in (1, 2):
            other = check_eps(net, comp, dom, x, eps, "inf", max_regions=60, seed=seed)
            assert {other.status, runs[0].status} != {"verified", "falsified"}


# ----------------------------------------------------------------- robustness
def test_degenerate_boxes_and_identical_twins() -> None:
    """A point box, a box with half its dimensions of zero width, and an identical twin:
    ReLU splitting gives input splitting's verdict and bound, no crash; auto picks input
    splitting for the first two (0 and 8 inputs of nonzero width)."""
    net = _mlp(16, 0, width=12)
    comp = deterministic_copy(net, "float16")
    c = torch.linspace(-0.3, 0.4, 16, dtype=torch.float64)[None]
    lo, hi = c - 0.2, c + 0.2
    lo[:, ::2] = c[:, ::2]
    hi[:, ::2] = c[:, ::2]
    cases = [(comp, InputDomain.box(c, c, shape=(1, 16)), 1e-3),
             (comp, InputDomain.box(lo, hi, shape=(1, 16)), 1e-3),
             (copy.deepcopy(net), InputDomain.box(c - 0.5, c + 0.5, shape=(1, 16)), 1e-9)]
    for (twin, dom, eps), mode in zip(cases, ("input", "input", "relu")):
        auto = cc.verify_equivalence(net, twin, dom, epsilon=eps, max_regions=50)
        relu = cc.verify_equivalence(net, twin, dom, epsilon=eps, split="relu",
                                     max_regions=50)
        ref = cc.verify_equivalence(net, twin, dom, epsilon=eps, split="input",
                                    max_regions=50)
        assert auto.details["split"] == mode  # counts inputs of nonzero width only
        assert ref.status == "verified"
        assert (auto.status, auto.bound) == (relu.status, relu.bound) == \
            (ref.status, ref.bound)
        top = cc.verify_equivalence(net, twin, dom, property="top1", max_regions=50)
        assert top.status != "falsified" or twin is comp


@pytest.mark.parametrize("seed,kind,free", [(3, "float16", 2), (5, "prune", 2),
                                            (6, "round", 3)])
def test_auto_counts_inputs_of_nonzero_width(seed: int, kind: str, free: int) -> None:
    """16 inputs of which 2-3 vary (fixed pixels, a patch's box): auto ran ReLU splitting
    (counting all 16) and stayed unknown after 3,000 regions where input splitting
    verifies in 15-173 (epsilon 1.2x the attack's worst); now it bisects the box."""
    net = _mlp(16, seed)
    comp = deterministic_copy(net, kind)
    c = torch.linspace(-0.3, 0.4, 16, dtype=torch.float64)[None]
    lo, hi = c.clone(), c.clone()
    lo[:, :free] -= 1.0
    hi[:, :free] += 1.0
    dom = InputDomain.box(lo, hi, shape=(1, 16))
    x = _attack_points(net, comp, dom, seed)
    worst = float(deviation(net, comp, x, "inf").max())
    res = check_eps(net, comp, dom, x, 1.2 * worst, "inf", max_regions=400)
    assert res.details["split"] == "input"
    assert res.status == "verified", res.summary()


def test_image_and_flat_domains_run_the_same_search() -> None:
    """The same weights behind a flatten over a 1x4x4 image and over 16 flat inputs:
    the same split, verdict, regions and bound."""
    torch.manual_seed(4)
    lin = nn.Sequential(nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3)).double().eval()
    img = nn.Sequential(nn.Flatten(), *copy.deepcopy(lin)).eval()
    kw = {"epsilon": 2e-4, "max_regions": 40}
    flat = cc.verify_equivalence(lin, deterministic_copy(lin, "float16"), _box((1, 16), 0.4),
                                 **kw)
    image = cc.verify_equivalence(img, deterministic_copy(img, "float16"),
                                  _box((1, 1, 4, 4), 0.4), **kw)
    assert flat.details["split"] == image.details["split"] == "relu"
    assert (flat.status, flat.regions, flat.counterexample) == \
        (image.status, image.regions, image.counterexample)
    # the image graph's flatten adds a rounding-margin layer (eta 9.9e-12 vs 6.8e-12)
    assert flat.bound is not None and image.bound is not None
    assert flat.bound <= image.bound <= flat.bound * (1 + 1e-6)


def test_region_budget_counts_sub_domains_like_input_splitting() -> None:
    net = _mlp(16, 3)
    comp = deterministic_copy(net, "float16")
    dom = _box((1, 16), 0.5)
    for budget in (1, 2, 7, 50):
        for split in ("auto", "input"):
            res = cc.verify_equivalence(net, comp, dom, epsilon=1.14e-4, split=split,
                                        max_regions=budget, batch=4, timeout=600)
            assert res.status == "unknown"
            assert budget <= res.regions <= budget + 1, (split, budget, res.regions)


# ---------------------------------------------------------------- performance
def test_relu_split_does_not_construct_torch_optim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constructing ``torch.optim.Adam`` imports torch._dynamo (3-6 s measured on the
    shared machine, once per process): the split constraints' multipliers must not pay
    it on every ``equiv`` command now that ReLU splitting is the default from 16 inputs
    (the multipliers' steps are written out, relu_split._adam_step)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.optim.Adam constructed (imports torch._dynamo)")

    monkeypatch.setattr(torch.optim, "Adam", refuse)
    net = _mlp(16, 3)
    comp = deterministic_copy(net, "float16")
    res = cc.verify_equivalence(net, comp, _box((1, 16), 0.5), epsilon=1.14e-4,
                                max_regions=7)
    assert res.details["split"] == "relu" and res.details["relu_splits"] > 0
