"""choose_bitwidths with activation quantizers as decision variables (certified by the
bounds tier) and with the equivalence certifier (proven by branch-and-bound); every
result is attacked one-sidedly (tests/_soundness.py)."""

from __future__ import annotations

import _soundness as S
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.compress.quantization.activations import quantizers_of

DOM = cc.InputDomain.box(0.0, 1.0, shape=(1, 3))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2)).eval()


def _act_bound(model: nn.Module, wbits: int, abits: int) -> float:
    _, cert = cc.quantize(model, cc.QuantConfig.uniform(model, wbits), domain=DOM,
                          activations=abits, search_steps=0)
    return cert.bound


def test_activations_are_decision_variables_and_the_result_is_sound() -> None:
    model = _mlp()
    # a budget between the all-4-bit and the all-8-bit certificates
    hi, lo = _act_bound(model, 4, 4), _act_bound(model, 8, 8)
    assert lo < hi
    budget = (lo * hi) ** 0.5
    al = cc.choose_bitwidths(model, budget=budget, domain=DOM, activations=8,
                             candidates=(4, 6, 8), activation_candidates=(4, 6, 8),
                             search_steps=10, search_restarts=2)
    assert al.bound <= budget
    acts = quantizers_of(al.model)
    assert set(al.activation_bits) <= set(acts) and al.activation_bits
    for name, b in al.activation_bits.items():  # the model holds the chosen widths
        assert acts[name].op.qmax == 2 ** b - 1 and acts[name].enabled
    assert set(al.bits.values()) <= {4, 6, 8}
    # not everything at the widest: the budget is above the all-8 bound
    assert min([*al.bits.values(), *al.activation_bits.values()]) < 8
    assert al.original is not None
    found = S.attack_models(al.original, al.model, DOM, DOM.shape, seed=1)
    S.assert_sound(found, al.bound, what="joint allocation")
    S.record("joint weight+activation allocation", al.bound, float(found.l1.max()))
    # a budget below every configuration is refused with what to do
    with pytest.raises(cc.ConfigurationError, match="raise the budget"):
        cc.choose_bitwidths(model, budget=lo * 1e-3, domain=DOM, activations=8,
                            candidates=(8,), activation_candidates=(8,))


def test_equivalence_certifier_proves_the_chosen_widths() -> None:
    model = _mlp(1)
    eps = 2.0 * _act_bound(model, 6, 6)
    al = cc.choose_bitwidths(model, domain=DOM, certifier="equivalence", epsilon=eps,
                             activations=8, candidates=(2, 4, 6, 8),
                             activation_candidates=(4, 6, 8), timeout=20.0,
                             search_steps=10, search_restarts=2)
    proof = al.equivalence
    assert proof is not None and proof.status == "verified" and proof.bound <= eps
    assert any("proven by verify_equivalence" in n for n in al.certificate.notes)
    assert al.original is not None
    found = S.attack_models(al.original, al.model, DOM, DOM.shape, seed=2)
    S.assert_sound(found, proof.bound, what="equivalence-proven allocation")
    S.record("equivalence-proven allocation", proof.bound, float(found.l1.max()))


def test_equivalence_certifier_weights_only_and_errors() -> None:
    model = _mlp(2)
    _, c8 = cc.quantize(model, cc.QuantConfig.uniform(model, 8), domain=DOM, search_steps=0)
    eps = 4.0 * c8.bound
    al = cc.choose_bitwidths(model, domain=DOM, certifier="equivalence", epsilon=eps,
                             candidates=(2, 4, 8), timeout=20.0)
    assert al.equivalence.status == "verified" and not al.activation_bits
    found = S.attack_models(al.original, al.model, DOM, DOM.shape, seed=3)
    S.assert_sound(found, al.equivalence.bound, what="equivalence, weights only")
    with pytest.raises(cc.ConfigurationError, match="epsilon"):
        cc.choose_bitwidths(model, domain=DOM, certifier="equivalence")
    with pytest.raises(cc.ConfigurationError, match="domain"):
        cc.choose_bitwidths(model, epsilon=eps, certifier="equivalence")
    with pytest.raises(cc.ConfigurationError, match="activation_candidates"):
        cc.choose_bitwidths(model, budget=1.0, domain=DOM, activations=6,
                            activation_candidates=(8,))
