"""Other toolchains' output, accepted: torch.nn.utils.prune models, float masks,
torch.export programs, torch.ao-quantized models and Torch-Pruning's physically pruned
models. Every certificate here is checked one-sidedly against sampled deviations."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

import certcompress as cc
from certcompress.errors import ConfigurationError, UnsupportedModelError
from certcompress.measure import float64_function


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3)).eval()


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


def _sampled_max(f: nn.Module, g: nn.Module, shape: tuple[int, ...], r: float) -> float:
    x = (torch.rand((2048,) + shape[1:], dtype=torch.float64) * 2 - 1) * r
    x[:128] = x[:128].sign() * r
    f64, g64 = float64_function(f), float64_function(g)
    with torch.no_grad():
        return float((f64(x) - g64(x)).abs().sum(1).max())


@pytest.mark.parametrize("remove", [False, True])
def test_torch_nn_utils_prune_models(remove: bool) -> None:
    m = _mlp()
    c = copy.deepcopy(m)
    tprune.l1_unstructured(c[0], "weight", 0.5)
    tprune.random_unstructured(c[2], "weight", 0.3)
    tprune.l1_unstructured(c[2], "weight", 0.2)  # a PruningContainer
    if remove:
        tprune.remove(c[0], "weight")
    cert = cc.certify(m, c, input_shape=(1, 6), input_radius=1.0, search_steps=5)
    assert cert.bound >= _sampled_max(m, c, (1, 6), 1.0)
    assert cert.changed_parameters > 0
    assert any(n.endswith("weight_orig") for n, _ in c.named_parameters())  # untouched


def test_float_masks_are_accepted() -> None:
    m = _mlp()
    mask = (torch.rand(16, 6) > 0.5).float()
    plan = cc.PruningPlan.from_masks({"0": mask})
    pruned, cert = cc.prune(m, plan, input_shape=(1, 6), input_radius=1.0, search_steps=0)
    assert bool((pruned[0].weight[mask == 0] == 0).all())
    with pytest.raises(ConfigurationError, match=r"0 or 1 .*found 0\.5"):
        cc.PruningPlan.from_masks({"0": torch.full((16, 6), 0.5)}).validate(m)


def test_exported_program_everywhere_a_module_goes() -> None:
    m = _mlp().double()
    c = copy.deepcopy(m)
    with torch.no_grad():
        c[2].weight[:, :4] = 0
    x = torch.zeros(1, 6, dtype=torch.float64)
    ep, ep2 = torch.export.export(m, (x,)), torch.export.export(c, (x,))
    cert = cc.certify(ep, ep2, input_shape=(1, 6), input_radius=1.0, search_steps=5)
    ref = cc.certify(m, c, input_shape=(1, 6), input_radius=1.0, search_steps=0)
    assert cert.bound == ref.bound
    assert cert.bound >= _sampled_max(m, c, (1, 6), 1.0)


def _ao_dynamic(m: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {nn.Linear},
                                                      dtype=torch.qint8)


def test_torch_ao_models_are_refused_with_the_recipe() -> None:
    m = _mlp()
    q = _ao_dynamic(m)
    with pytest.raises(UnsupportedModelError, match="dequantized_copy"):
        cc.certify(m, q, input_shape=(1, 6), input_radius=1.0)


def test_dequantized_copy_certifies_weight_rounding() -> None:
    m = _mlp()
    q = _ao_dynamic(m)
    d = cc.dequantized_copy(q)
    assert all(type(x).__module__.startswith("torch.nn.modules") for x in d.modules())
    x = torch.rand(64, 6) * 2 - 1
    with torch.no_grad():
        # the dynamic model rounds its activations too: agreement up to that rounding
        assert torch.allclose(d(x), q(x), atol=0.05)
    cert = cc.certify(m, d, input_shape=(1, 6), input_radius=1.0, search_steps=5)
    assert cert.bound >= _sampled_max(m, d, (1, 6), 1.0)
    assert 0 < cert.bound < 10


def test_dequantized_copy_of_a_static_model() -> None:
    import torch.ao.quantization as tq

    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(2, 4, 3), nn.ReLU(), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        p(torch.rand(8, 2, 5, 5))
        q = tq.convert(p)
    d = cc.dequantized_copy(q)
    assert isinstance(d[1], nn.Conv2d)
    torch.testing.assert_close(d[1].weight, q[1].weight().dequantize())


def test_zeroed_equivalent_of_a_torch_pruning_model() -> None:
    tp = pytest.importorskip("torch_pruning")
    m = _cnn()
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    example = torch.rand(1, 2, 6, 6)
    pruned = copy.deepcopy(m)
    imp = tp.importance.MagnitudeImportance(p=1)
    pruner = tp.pruner.MagnitudePruner(pruned, example, imp, pruning_ratio=0.5,
                                       ignored_layers=[pruned[7]])
    pruner.step()
    assert pruned[0].out_channels < 8
    z = cc.zeroed_equivalent(m, pruned, pruner.pruning_history(), example)
    assert z[0].weight.shape == m[0].weight.shape
    x = torch.rand(32, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(z(x), pruned(x), atol=1e-5, rtol=1e-5)
    cert = cc.certify(m, z, input_shape=(1, 2, 6, 6), input_radius=1.0, search_steps=5)
    assert cert.bound >= _sampled_max(m, z, (1, 2, 6, 6), 1.0)
    other = copy.deepcopy(m)  # pruned differently: the first history does not fit it
    tp.pruner.MagnitudePruner(other, example, imp, pruning_ratio=0.25,
                              ignored_layers=[other[7]]).step()
    with pytest.raises(ConfigurationError, match="does not reproduce|does not apply"):
        cc.zeroed_equivalent(m, other, pruner.pruning_history(), example)
