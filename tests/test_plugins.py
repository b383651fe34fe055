"""Plugins: entry-point discovery and validation, explicit loading, and the three
first-party plugins in plugins/ (example, torchvision, smp).

Entry-point discovery is tested the pluggy way: ``importlib.metadata.entry_points`` is
monkeypatched to return the entry points of a real distribution written to a temporary
directory (a ``.dist-info`` with ``entry_points.txt``), whose plugin module is a real
file on a temporary ``sys.path`` entry. The first-party plugins must be installed
(``pip install --no-deps -e plugins/certcompress-torchvision -e plugins/certcompress-smp
-e plugins/certcompress-example``); one test checks that they are.
"""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import _soundness as sh
import pytest
import torch
from torch import Tensor, fx, nn

import certcompress as cc
from certcompress.bounds.pathnorm import graph_path_norm
from certcompress.capture import Adapter, Converted, PluginManager, trace
from certcompress.capture import plugins as plugins_mod
from certcompress.ir.ops import AffineParams, IROp, NodeKind
from certcompress.loading import load_model

FIRST_PARTY = {"torchvision": "certcompress_torchvision:TorchvisionPlugin",
               "smp": "certcompress_smp:SmpPlugin",
               "example": "certcompress_example:ExamplePlugin"}

# --------------------------------------------------------------- a fake distribution
_PLUGIN_SOURCE = '''
import torch
from torch import nn
from certcompress.capture import Adapter, Converted, Plugin
from certcompress.ir.ops import ReLUOp


class Twice(nn.Module):
    def forward(self, x):
        return torch.relu(x)  # what it computes does not matter to registration


class TwiceAdapter(Adapter):
    name = "twice"

    def _convert(self, node, ctx):
        return Converted(ReLUOp(), (ctx.tensor_arg(node.args[0]),))


class GoodPlugin(Plugin):
    name = "good-plugin"

    def register_adapters(self, registry):
        registry.register_module(Twice, TwiceAdapter())


class SameNamePlugin(Plugin):
    name = "good-plugin"


class NotAPlugin:
    name = "not-a-plugin"


class BrokenPlugin(Plugin):
    name = "broken-plugin"

    def register_adapters(self, registry):
        raise RuntimeError("boom while registering")


class GrabsReLUPlugin(Plugin):
    name = "grabs-relu"

    def register_adapters(self, registry):
        registry.register_module(nn.ReLU, TwiceAdapter())


class ReplacesReLUPlugin(Plugin):
    name = "replaces-relu"

    def register_adapters(self, registry):
        registry.register_module(nn.ReLU, TwiceAdapter(), replace=True)


class BadAdapterPlugin(Plugin):
    name = "bad-adapter"

    def register_adapters(self, registry):
        registry.register_module(Twice, object())
'''

_counter = itertools.count()


@dataclass
class FakeDist:
    module: str  # the plugin module's (unique) name
    dist: importlib.metadata.Distribution
    install: Callable[[], None]  # monkeypatch entry_points to return only this dist's


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDist]:
    """``make(**entry_points)`` writes a distribution 'fake-plugins' 1.0 whose entry
    points (name -> attribute of the generated plugin module) are in our group."""

    def make(**entry_points: str) -> FakeDist:
        module = f"cc_fake_plugins_{next(_counter)}"
        (tmp_path / f"{module}.py").write_text(_PLUGIN_SOURCE)
        info = tmp_path / f"fake_plugins-1.0.{module}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\n"
                                       "Version: 1.0\n")
        lines = [f"{name} = {value.replace('MOD', module)}"
                 for name, value in entry_points.items()]
        (info / "entry_points.txt").write_text(
            "[certcompress.plugins]\n" + "\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        dist = importlib.metadata.PathDistribution(info)

        def fake_entry_points(**params: Any) -> importlib.metadata.EntryPoints:
            return dist.entry_points.select(**params)

        def install() -> None:
            monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)

        return FakeDist(module, dist, install)

    return make


# ------------------------------------------------------------ entry-point discovery
def test_entry_point_discovery_registers_adapters_and_records_provenance(
        fake_dist: Callable[..., FakeDist]) -> None:
    fd = fake_dist(good="MOD:GoodPlugin")
    fd.install()
    pm = PluginManager()
    assert [lp.plugin.name for lp in pm.plugins] == ["good-plugin"]
    source = pm.plugins[0].source
    assert source == f"fake-plugins (entry point good = {fd.module}:GoodPlugin)"
    twice_rows = [r for r in pm.registry.entries() if r[1].endswith(".Twice")]
    assert twice_rows == [("module", f"{fd.module}.Twice", "twice", "good-plugin")]
    # the built-in adapters are still there, attributed to the core
    assert ("module", "torch.nn.modules.activation.ReLU", "relu", "certcompress") in \
        pm.registry.entries()
    pm.load_entry_points()  # loading again skips what is loaded
    assert len(pm.plugins) == 1


def test_entry_point_that_fails_to_import_names_it(fake_dist: Callable[..., FakeDist]) -> None:
    fd = fake_dist(missing="MOD:NoSuchPlugin")
    fd.install()
    with pytest.raises(cc.PluginError, match=rf"entry point 'missing' \({fd.module}:NoSuchPlugin"
                                             r"\) failed to import: AttributeError"):
        PluginManager()


def test_entry_point_not_a_plugin_subclass(fake_dist: Callable[..., FakeDist]) -> None:
    fake_dist(notplugin="MOD:NotAPlugin").install()
    with pytest.raises(cc.PluginError) as info:
        PluginManager()
    msg = str(info.value)
    assert "fake-plugins (entry point notplugin" in msg
    assert "is not a certcompress.capture.Plugin subclass or instance" in msg


def test_failing_register_adapters_names_plugin_and_reason(
        fake_dist: Callable[..., FakeDist]) -> None:
    fake_dist(broken="MOD:BrokenPlugin").install()
    with pytest.raises(cc.PluginError, match=r"plugin 'broken-plugin' \(fake-plugins \(entry "
                                             r"point broken = .*\)\) failed in register_adapters:"
                                             r" RuntimeError: boom while registering"):
        PluginManager()


def test_duplicate_plugin_name_is_refused(fake_dist: Callable[..., FakeDist]) -> None:
    fake_dist(a="MOD:GoodPlugin", b="MOD:SameNamePlugin").install()
    with pytest.raises(cc.PluginError,
                       match=r"entry point b = .*a plugin named 'good-plugin' is already loaded"):
        PluginManager()


def test_conflicting_adapter_needs_replace(fake_dist: Callable[..., FakeDist]) -> None:
    fd = fake_dist()
    pm = PluginManager(load_entry_points=False)
    with pytest.raises(cc.PluginError) as info:
        pm.load_path(f"{fd.module}:GrabsReLUPlugin")
    msg = str(info.value)
    assert msg.startswith("grabs-relu: torch.nn.modules.activation.ReLU already has adapter "
                          "'relu' from certcompress")
    assert "pass replace=True" in msg
    assert pm.registry.for_module(nn.ReLU()).source == "certcompress"  # type: ignore[union-attr]
    pm.load_path(f"{fd.module}:ReplacesReLUPlugin")
    reg = pm.registry.for_module(nn.ReLU())
    assert reg is not None and (reg.source, reg.adapter.name) == ("replaces-relu", "twice")


def test_registering_a_non_adapter_is_refused(fake_dist: Callable[..., FakeDist]) -> None:
    fd = fake_dist()
    pm = PluginManager(load_entry_points=False)
    with pytest.raises(cc.PluginError, match=r"bad-adapter: cannot register 'object' for "
                                             r".*\.Twice: adapters must be instances of "
                                             r"certcompress.capture.Adapter"):
        pm.load_path(f"{fd.module}:BadAdapterPlugin")


def test_first_party_plugins_are_installed() -> None:
    found = {ep.name: ep.value
             for ep in importlib.metadata.entry_points(group="certcompress.plugins")}
    assert {k: found.get(k) for k in FIRST_PARTY} == FIRST_PARTY
    pm = PluginManager()
    by_name = {lp.plugin.name: lp.source for lp in pm.plugins}
    assert by_name["certcompress-torchvision"].startswith("certcompress-torchvision (entry point")
    assert by_name["certcompress-smp"].startswith("certcompress-smp (entry point")
    assert by_name["certcompress-example"].startswith("certcompress-example (entry point")
    assert {"smp", "torchvision"} <= set(pm.prefixes())


# ------------------------------------------------------------------ explicit loading
@pytest.fixture
def fresh_manager(monkeypatch: pytest.MonkeyPatch) -> PluginManager:
    """A process-wide manager without installed plugins, restored after the test."""
    pm = PluginManager(load_entry_points=False)
    monkeypatch.setattr(plugins_mod, "_manager", pm)
    return pm


def test_load_plugin_explicitly(fresh_manager: PluginManager) -> None:
    from certcompress_example import ExamplePlugin, ScaledReLU

    assert not fresh_manager.registry.has_module_adapter(ScaledReLU(2.0))
    plugin = cc.load_plugin("certcompress_example:ExamplePlugin")
    assert isinstance(plugin, ExamplePlugin)
    assert fresh_manager.plugins[-1].source == "explicit: certcompress_example:ExamplePlugin"
    reg = fresh_manager.registry.for_module(ScaledReLU(2.0))
    assert reg is not None and reg.source == "certcompress-example"


@pytest.mark.parametrize("spec, message", [
    ("certcompress_example", r"plugin 'certcompress_example': expected "
                             r"'package.module:Attribute'"),
    (":ExamplePlugin", r"expected 'package.module:Attribute'"),
    ("no_such_pkg_cc.mod:Plugin", r"plugin 'no_such_pkg_cc.mod:Plugin': cannot import "
                                  r"no_such_pkg_cc.mod: No module named 'no_such_pkg_cc'"),
    ("certcompress_example:NoSuchPlugin", r"plugin 'certcompress_example:NoSuchPlugin': "
                                          r"certcompress_example has no attribute "
                                          r"'NoSuchPlugin'"),
    ("certcompress_example:ScaledReLU", r"explicit: certcompress_example:ScaledReLU: .* is not "
                                        r"a certcompress.capture.Plugin"),
])
def test_load_plugin_errors(fresh_manager: PluginManager, spec: str, message: str) -> None:
    with pytest.raises(cc.PluginError, match=message) as info:
        cc.load_plugin(spec)
    assert isinstance(info.value, ImportError)  # the nearest built-in
    assert fresh_manager.plugins == []


# ------------------------------------------------------------------- example plugin
def _example_registry() -> cc.AdapterRegistry:
    pm = PluginManager(load_entry_points=False)
    pm.load_path("certcompress_example:ExamplePlugin")
    return pm.registry


def test_example_module_needs_the_plugin() -> None:
    from certcompress_example import ScaledReLU

    model = nn.Sequential(nn.Linear(3, 4), ScaledReLU(2.0)).eval()
    bare = PluginManager(load_entry_points=False).registry
    with pytest.raises(cc.UnsupportedModelError) as info:
        trace(model, (1, 3), registry=bare)
    targets = {o.target for o in info.value.offenders}
    assert {"_operator.gt", "torch.where"} <= targets
    g = trace(model, (1, 3), registry=_example_registry())
    assert [n.op.describe() for n in g.nodes[1:]] == ["Linear", "ScaledReLU(2.0)"]  # type: ignore[union-attr]


def test_example_path_norm_matches_hand_computation() -> None:
    # x -> w*x + b -> s*relu(.) -> v*y + c: paths x->out (|w||s||v|), b->out
    # (|b||s||v|) and c (|c|); a negative scale counts with its absolute value.
    from certcompress_example import ScaledReLU

    w, b, s, v, c = 0.75, -0.5, -3.0, 2.0, 0.25
    first, last = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        first.weight.fill_(w), first.bias.fill_(b), last.weight.fill_(v), last.bias.fill_(c)
    model = nn.Sequential(first, ScaledReLU(s), last).eval()
    g = trace(model, (1, 1), registry=_example_registry())
    expected = abs(s) * abs(v) * (abs(w) + abs(b)) + abs(c)
    assert cc.path_norm(g) == pytest.approx(expected, rel=1e-12)


def _example_net(seed: int) -> nn.Module:
    from certcompress_example import ScaledReLU

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), ScaledReLU(-1.5), nn.Linear(12, 6), ScaledReLU(0.5),
                         nn.Linear(6, 3)).double().eval()


def test_example_trace_equals_eager() -> None:
    model = _example_net(0)
    g = trace(model, (1, 5), registry=_example_registry())
    x = torch.randn(64, 5, dtype=torch.float64) * 3
    torch.testing.assert_close(g.run(x), model(x), rtol=1e-12, atol=1e-12)


def test_example_certificate_is_sound() -> None:
    model = _example_net(1)
    compressed = copy.deepcopy(model)
    with torch.no_grad():
        for p in compressed.parameters():
            p.copy_(torch.round(p * 8) / 8)  # quantize to a 1/8 grid (no sign flips)
    radius = 2.0
    lo, hi = sh.box(radius, (1, 5))
    x = sh.points(lo, hi, torch.Generator().manual_seed(0), 4096, 0)  # every corner too
    cert = cc.certify(model, compressed, (1, 5), radius, reference_inputs=x[:64],
                      search_steps=10, search_restarts=2)
    found = sh.measure(sh.f64(model), sh.f64(compressed), x)
    assert found.worst > 0
    sh.assert_sound(found, cert.bound, cert.per_output, "plugin model")
    assert cert.measurements.adversarial_max is not None
    assert sh.within(cert.measurements.adversarial_max, cert.bound, float(found.size.max()))


def test_example_adapter_refuses_a_tensor_scale() -> None:
    from certcompress_example import ScaledReLU

    act = ScaledReLU(1.0)
    act.scale = torch.tensor(2.0)  # type: ignore[assignment]
    model = nn.Sequential(nn.Linear(2, 2), act).eval()
    with pytest.raises(cc.UnsupportedModelError) as info:
        trace(model, (1, 2), registry=_example_registry())
    (offender,) = info.value.offenders
    assert "ScaledReLU.scale must be a Python number" in offender.reason
    assert "[adapter 'scaled-relu' from certcompress-example]" in offender.reason


# A plugin op with a constant term (``relu(z) + offset``: an identity neuron with bias
# ``offset``) whose attribute is not named like any core op's. Its constant must count
# even where the engine has rescaled values by a power of two (values above 2**512).
class OffsetReLU(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x) + self.offset


@dataclass(frozen=True)
class OffsetReLUOp(IROp):
    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION
    offset: float

    def forward(self, inputs: Any, params: AffineParams | None) -> Tensor:
        return torch.relu(inputs[0]) + self.offset

    def magnitude(self, inputs: Any, params: AffineParams | None, constants: bool) -> Tensor:
        return inputs[0] + abs(self.offset) if constants else inputs[0]


class OffsetReLUAdapter(Adapter):
    name = "offset-relu"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        return Converted(OffsetReLUOp(float(ctx.module(node).offset)),
                         (ctx.tensor_arg(node.args[0]),))


@pytest.mark.parametrize("big", [1.0, 1e200])
def test_plugin_op_constants_survive_rescaling(big: float) -> None:
    pm = PluginManager(load_entry_points=False)
    pm.registry.register_module(OffsetReLU, OffsetReLUAdapter(), source="test")
    lin = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[big, big], [0.0, 0.0]], dtype=torch.float64))
    g = trace(nn.Sequential(lin, OffsetReLU(-3.0)).eval(), (1, 2), registry=pm.registry)
    pn = graph_path_norm(g)  # per output: the total hides the constant next to 2*big
    # output 0: paths x1, x2 (weight big each) and the offset; output 1: the offset only
    assert pn.per_output[0] == pytest.approx(2 * big + 3.0, rel=1e-12)
    assert pn.per_output[1] == pytest.approx(3.0, rel=1e-12)


# ------------------------------------------------------------------ torchvision plugin
def test_torchvision_resolves_resnet18_with_imagenet_spec() -> None:
    from torchvision.models import ResNet

    model = load_model("torchvision:resnet18")
    assert isinstance(model, ResNet)
    assert not any(m.training for m in model.modules())
    spec = cc.input_spec_for(model)
    assert spec is not None
    assert spec.input_shape == (1, 3, 224, 224)
    assert spec.radius == pytest.approx(2.64, abs=1e-2)
    assert "ImageNet" in spec.description and "0.229" in spec.description
    assert cc.input_spec_for(nn.Linear(2, 2)) is None


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnt18", r"torchvision has no model 'resnt18' \(spec 'torchvision:resnt18'\);"
                            r" closest: resnet18"),
    ("torchvision:", r"model spec 'torchvision:' names no model: use torchvision:NAME"),
])
def test_torchvision_rejects_unknown_names(spec: str, message: str) -> None:
    with pytest.raises(cc.ModelLoadError, match=message):
        load_model(spec)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "alexnet", "vgg11_bn"])
def test_torchvision_families_trace_with_builtin_adapters(name: str) -> None:
    model = load_model(f"torchvision:{name}")
    spec = cc.input_spec_for(model)
    assert spec is not None and spec.input_shape == (1, 3, 224, 224)
    # built-in adapters only (the plugin registers none); they do not depend on the size
    g = trace(model, (1, 3, 64, 64), registry=PluginManager(load_entry_points=False).registry)
    assert g.output_size == 1000


# -------------------------------------------------------------------------- smp plugin
def test_smp_spec_syntax() -> None:
    from certcompress_smp import parse_spec

    p = parse_spec("smp:Unet")
    assert (p.arch, p.encoder, p.options) == ("Unet", "resnet34", {})
    p = parse_spec("smp:Unet:resnet18?classes=2&decoder_channels=64,32,16,8,4&activation=none")
    assert (p.arch, p.encoder) == ("Unet", "resnet18")
    assert p.options == {"classes": 2, "decoder_channels": (64, 32, 16, 8, 4), "activation": None}
    p = parse_spec("smp:FPN?encoder=resnet18&in_channels=1")
    assert (p.arch, p.encoder, p.options) == ("FPN", "resnet18", {"in_channels": 1})


@pytest.mark.parametrize("spec, message", [
    ("smp:", r"malformed smp spec 'smp:': expected smp:ARCH\[:ENCODER\]"),
    ("smp:Unet:a:b", r"malformed smp spec"),
    ("smp:Unet?classes", r"malformed option 'classes'"),
    ("smp:Unet?classes=1&classes=2", r"option 'classes' given twice"),
    ("smp:Unet:resnet18?encoder=resnet34", r"names two encoders \('resnet18' and 'resnet34'\)"),
    ("smp:Unet?encoder_weights=imagenet", r"encoder_weights=imagenet would download weights"),
])
def test_smp_spec_errors(spec: str, message: str) -> None:
    from certcompress_smp import parse_spec

    with pytest.raises(cc.ModelLoadError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize("spec, message", [
    ("smp:Unett", r"smp has no architecture 'Unett' \(spec 'smp:Unett'\); closest: Unet"),
    ("smp:Unet:resnet19", r"smp has no encoder 'resnet19' .*closest: resnet18"),
    ("smp:Unet:resnet18?clases=2", r"unknown option\(s\) clases for Unet; options: .*classes"),
])
def test_smp_rejects_unknown_names(spec: str, message: str) -> None:
    with pytest.raises(cc.ModelLoadError, match=message):
        load_model(spec)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["smp:Unet:resnet18?classes=2",
                                  "smp:Unet?encoder=resnet34&classes=2"])
def test_smp_unet_resolves_and_traces(spec: str) -> None:
    from segmentation_models_pytorch import Unet

    model = load_model(spec)
    assert isinstance(model, Unet) and not model.training
    assert model.segmentation_head[0].out_channels == 2
    inp = cc.input_spec_for(model)
    assert inp is not None and inp.input_shape == (1, 3, 256, 256)
    assert inp.radius == pytest.approx(2.64, abs=1e-2)
    g = trace(model, (1, 3, 64, 64), registry=PluginManager(load_entry_points=False).registry)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model64 = copy.deepcopy(model).double()
    torch.testing.assert_close(g.run(x), model64(x).flatten(1), rtol=1e-9, atol=1e-9)


class _NeedsExport(nn.Module):
    """Python control flow on a shape stops torch.fx; torch.export captures it, and then
    eval-mode Dropout2d / AlphaDropout are aten.feature_dropout / aten.alpha_dropout
    (as in smp's PSPNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.drop2d = nn.Dropout2d(0.3)
        self.alpha = nn.AlphaDropout(0.2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2:
            raise ValueError("even widths only")
        return self.alpha(self.drop2d(torch.relu(self.conv(x))))


def test_eval_dropout_in_export_graphs_is_identity() -> None:
    model = _NeedsExport().double().eval()
    g = trace(model, (1, 2, 8, 8), registry=PluginManager(load_entry_points=False).registry)
    assert g.capture == "torch.export"
    assert [n.source for n in g.nodes[-2:]] == ["aten.feature_dropout.default",
                                                "aten.alpha_dropout.default"]
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(g.run(x), model(x).flatten(1), rtol=0, atol=0)


def test_register_when_imported_waits_for_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter for a library's class is registered once the library is imported (a
    model holding one cannot exist before), attributed to the plugin that asked."""
    import sys
    import types

    from certcompress.capture.registry import AdapterRegistry

    class LibModule(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    calls: list[str] = []

    def hook(reg: AdapterRegistry) -> None:
        calls.append(reg._source)
        reg.register_module(LibModule, OffsetReLUAdapter())

    reg = AdapterRegistry()
    name = "certcompress_test_not_imported_lib"
    monkeypatch.delitem(sys.modules, name, raising=False)
    with reg.attributed_to("some-plugin"):
        reg.register_when_imported(name, hook)
    assert reg.for_module(LibModule()) is None and calls == []
    assert not any("LibModule" in row[1] for row in reg.entries())
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    found = reg.for_module(LibModule())
    assert found is not None and found.source == "some-plugin"
    assert calls == ["some-plugin"]
    reg.for_module(LibModule())
    assert calls == ["some-plugin"]  # once
    with pytest.raises(cc.errors.PluginError, match="module name and a callable"):
        reg.register_when_imported("", hook)


def test_plugin_start_does_not_import_torchvision() -> None:
    """Loading the installed plugins (every command does) leaves torchvision unimported:
    an ONNX or a plain torch model never pays for it."""
    import subprocess
    import sys

    code = ("import sys\nfrom certcompress.capture import plugin_manager\n"
            "pm = plugin_manager()\nassert any(p.plugin.name == 'certcompress-torchvision' "
            "for p in pm.plugins)\nprint('torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
