"""Exact sparsity, deterministic tie-breaking, exclusion by name and pattern, and the
user's model never mutated."""

from __future__ import annotations

import copy

import pytest
import torch
from pruning_nets import mlp, res_bn_net

import certcompress as cc
from certcompress.compress.pruning import PruningPlan, apply_masks, prune
from certcompress.compress.pruning._layers import prunable_layers

SHAPE = (1, 1, 4, 4)


def _pruned_counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: int((~m).sum()) for k, m in masks.items()}


@pytest.mark.parametrize("criterion", ["magnitude", "path-magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.73, 1.0])
def test_global_sparsity_is_exact(criterion: str, sparsity: float) -> None:
    model = res_bn_net()
    plan = PruningPlan.by_criterion(model, sparsity, criterion, input_shape=SHAPE)
    masks = plan.masks(model)
    n = sum(ly.numel for ly in prunable_layers(model))
    assert sum(_pruned_counts(masks).values()) == int(sparsity * n + 0.5)
    pruned = apply_masks(model, masks)
    zeros = sum(int((pruned.get_parameter(f"{k}.weight") == 0).sum()) for k in masks)
    assert zeros == int(sparsity * n + 0.5)  # trained-like weights have no zeros of their own


@pytest.mark.parametrize("criterion", ["magnitude", "path-magnitude", "random"])
def test_per_layer_ratio_is_exact_in_every_layer(criterion: str) -> None:
    model = res_bn_net()
    plan = PruningPlan.by_criterion(model, 0.3, criterion, scope="per-layer",
                                    input_shape=SHAPE)
    counts = _pruned_counts(plan.masks(model))
    for ly in prunable_layers(model):
        assert counts[ly.name] == int(0.3 * ly.numel + 0.5)


def test_magnitude_prunes_the_smallest_and_ties_break_by_position() -> None:
    model = mlp([3, 4, 2])
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # 12 equal weights
        model[2].weight.fill_(2.0)
    plan = PruningPlan.magnitude(model, 0.25)  # 5 of 20 weights
    masks = plan.masks(model)
    flat = masks["0"].reshape(-1)
    assert flat[:5].sum() == 0 and bool(flat[5:].all())  # first five by row-major index
    assert bool(masks["2"].all())
    again = PruningPlan.magnitude(copy.deepcopy(model), 0.25).masks(model)
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_random_criterion_is_reproducible_from_the_seed() -> None:
    model = res_bn_net()
    a = PruningPlan.random(model, 0.5, seed=3).masks(model)
    b = PruningPlan.random(model, 0.5, seed=3).masks(model)
    c = PruningPlan.random(model, 0.5, seed=4).masks(model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("exclude", [["fc"], ["fc.weight"], ["conv*"], ["conv2", "f?"]])
def test_excluded_layers_are_untouched(exclude: list[str]) -> None:
    model = res_bn_net()
    plan = PruningPlan.path_magnitude(model, 0.6, input_shape=SHAPE, exclude=exclude)
    pruned, cert = prune(model, plan, SHAPE, 1.0, search_steps=0)
    import fnmatch

    names = [ly.name for ly in prunable_layers(model)]
    ex = {n for n in names for p in exclude
          if fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(f"{n}.weight", p)}
    assert ex
    for n in names:
        same = torch.equal(pruned.get_parameter(f"{n}.weight"), model.get_parameter(f"{n}.weight"))
        assert same == (n in ex), n
    kept = [ly for ly in prunable_layers(model) if ly.name not in ex]
    assert cert.changed_parameters == int(0.6 * sum(ly.numel for ly in kept) + 0.5)


def test_exclusion_that_matches_nothing_is_an_error() -> None:
    model = res_bn_net()
    with pytest.raises(cc.ConfigurationError, match=r"exclude\[0\] = 'fc2' matches no"):
        PruningPlan.magnitude(model, 0.5, exclude=["fc2"])


def test_model_is_not_mutated_and_biases_and_buffers_are_kept() -> None:
    model = res_bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = PruningPlan.magnitude(model, 0.7)
    pruned, _ = prune(model, plan, SHAPE, 1.0, search_steps=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in pruned.state_dict().items():
        if not k.endswith("weight") or k.startswith("bn"):
            assert torch.equal(v, before[k]), k
    assert pruned is not model


def test_pruned_weights_are_positive_zero() -> None:
    model = mlp([4, 5, 3])
    with torch.no_grad():
        model[0].weight.copy_(-model[0].weight.abs() - 0.1)
    pruned = apply_masks(model, PruningPlan.magnitude(model, 1.0).masks(model))
    w = pruned.get_parameter("0.weight")
    assert bool((w == 0).all()) and not bool(torch.signbit(w).any())
