"""Structured channel pruning through torch-pruning: the physically smaller model and the
zeroed equivalent compute the same function, the certificate is sound, path-magnitude
channel importance is the exact path-metric of removing the channel, plans save and
reload without unpickling model objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from pruning_nets import conv_chain

import certcompress as cc
from certcompress.compress.pruning import (
    PathMagnitudeImportance,
    load_structured,
    prune_channels,
    read_structured_certificate,
)
from certcompress.demo.digits import DigitsCNN
from certcompress.measure import float64_function


def _agree(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, ...], radius: float,
           n: int = 6) -> float:
    gen = torch.Generator().manual_seed(123)
    x = (torch.rand((n,) + shape[1:], generator=gen, dtype=torch.float64) * 2 - 1) * radius
    with torch.no_grad():
        fa, fb = float64_function(a)(x), float64_function(b)(x)
    assert fa.shape == fb.shape
    scale = float(fb.abs().max())
    diff = float((fa - fb).abs().max())
    assert diff <= 1e-9 * max(1.0, scale), (diff, scale)
    return diff


@pytest.mark.parametrize("importance", ["magnitude", "path-magnitude"])
def test_digits_cnn_channel_pruning(importance: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DigitsCNN(channels=8).eval()
    shape = (1, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune_channels(model, 0.5, importance=importance, input_shape=shape, input_radius=1.0,
                         reference_inputs=torch.rand(8, 1, 8, 8), search_steps=10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert res.model.conv1.out_channels == 4 and res.model.fc.out_features == 10
    assert res.parameters_after < res.parameters_before
    assert res.parameter_fraction == pytest.approx(res.parameters_after / res.parameters_before)
    assert res.parameter_fraction < 0.5  # a channel ratio of 0.5 removes more parameters
    _agree(res.model, res.zeroed, shape, 1.0)
    cert = res.certificate
    assert cert.path_metric_exact and cert.sign_changes == 0
    assert cert.measurements.adversarial_max <= cert.bound
    assert cert.compressed_digest == cc.parameter_digest(res.zeroed)
    path = res.save(tmp_path / "structured.pt")
    raw = torch.load(path, weights_only=True)  # no model object inside
    assert set(raw) >= {"history", "state_dict", "certificate"}
    again = load_structured(DigitsCNN(channels=8).eval(), path)
    _agree(again, res.model, shape, 1.0)
    assert read_structured_certificate(path).bound == cert.bound


def test_path_magnitude_channel_importance_is_the_exact_channel_metric() -> None:
    model = conv_chain(seed=3)
    shape = (1, 1, 4, 4)
    g = cc.trace(model, shape)
    scores = cc.path_magnitude_scores(g)
    by_module = {n.module: scores[n.name] for n in g.affine_nodes}
    names = {m: n for n, m in model.named_modules()}
    imp = PathMagnitudeImportance(by_module, names)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(shape))
    c = model.conv1.out_channels
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(c)))
    values = imp(group)
    assert values is not None and values.shape == (c,)
    for ch in range(c):
        zeroed = conv_chain(seed=3)
        with torch.no_grad():
            zeroed.conv1.weight[ch] = 0.0
            zeroed.conv1.bias[ch] = 0.0
        pm = cc.path_metric(model, zeroed, shape)
        assert pm.computed == pytest.approx(float(values[ch]), rel=1e-9)


def test_ratio_round_to_and_ignored_layers() -> None:
    torch.manual_seed(1)
    model = DigitsCNN(channels=16).eval()
    res = prune_channels(model, 0.3, input_shape=(1, 1, 8, 8), input_radius=1.0, round_to=4,
                         ignored_layers=["conv1"], search_steps=0)
    assert res.model.conv1.out_channels == 16  # coupled to conv2 by the residual add
    plain = prune_channels(model, 0.3, input_shape=(1, 1, 8, 8), input_radius=1.0,
                           round_to=4, search_steps=0)
    assert plain.model.conv1.out_channels % 4 == 0 and plain.model.conv1.out_channels < 16


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.0}, r"ratio must be a channel fraction in \[0, 1\)"),
    ({"ratio": 0.5, "importance": "taylor"}, "importance 'taylor' is unknown"),
    ({"ratio": 0.5, "ignored_layers": ["head"]}, r"ignored_layers\[0\] = 'head' matches no"),
    ({"ratio": 0.5, "round_to": 0}, "round_to must be a positive integer"),
])
def test_structured_argument_errors(kwargs, message) -> None:
    with pytest.raises(cc.ConfigurationError, match=message):
        prune_channels(DigitsCNN().eval(), input_shape=(1, 1, 8, 8), input_radius=1.0,
                       **kwargs)


def test_loading_into_another_architecture_fails_clearly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    res = prune_channels(DigitsCNN(channels=8).eval(), 0.5, input_shape=(1, 1, 8, 8),
                         input_radius=1.0, search_steps=0)
    path = res.save(tmp_path / "s.pt")
    with pytest.raises(cc.ModelLoadError):
        load_structured(DigitsCNN(channels=16).eval(), path)
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(cc.ModelLoadError, match="cannot read structured pruning file"):
        load_structured(DigitsCNN().eval(), tmp_path / "junk.pt")


@pytest.mark.slow
def test_torchvision_resnet18_structured(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    shape = (1, 3, 64, 64)
    res = prune_channels(model, 0.3, importance="path-magnitude", input_shape=shape,
                         input_radius=2.64, round_to=8, search_steps=0)
    assert res.model.fc.out_features == 1000
    assert res.model.layer1[0].conv1.out_channels < 64
    _agree(res.model, res.zeroed, shape, 2.64, n=3)
    assert res.certificate.path_metric_exact
    again = load_structured(torchvision.models.resnet18(weights=None).eval(),
                            res.save(tmp_path / "rn18.pt"))
    _agree(again, res.model, shape, 2.64, n=2)


@pytest.mark.slow
def test_smp_unet_structured() -> None:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None).eval()
    shape = (1, 3, 64, 64)
    res = prune_channels(model, 0.3, importance="magnitude", input_shape=shape,
                         input_radius=2.64, search_steps=0, check_samples=3)
    assert res.parameter_fraction < 0.75
    _agree(res.model, res.zeroed, shape, 2.64, n=3)
    assert res.certificate.path_metric_exact
