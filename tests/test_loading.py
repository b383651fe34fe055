"""certcompress.loading: model specs, strict state-dict loading, reference data, and the
error for every way a spec or file can be wrong (one line, naming the spec or file)."""

from __future__ import annotations

import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.capture import Plugin, PluginManager
from certcompress.capture import plugins as plugins_module
from certcompress.domain import InputSpec
from certcompress.loading import (
    exported_input_shape,
    load_model,
    load_reference_inputs,
    load_state_dict_file,
)

MODEL_PY = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width * 36, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    def make():
        return Net()

    def make_wide():
        return Net(width=6)

    def not_a_model():
        return 42

    def broken():
        raise RuntimeError("cannot build: config missing")

    def needs_arg(width):
        return Net(width)

    NUMBER = 3
''')


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    p = tmp_path / "model.py"
    p.write_text(MODEL_PY)
    return p


def _trained(model_py: Path) -> nn.Module:
    """A Net with random weights and BatchNorm statistics, built without load_model."""
    ns: dict[str, object] = {}
    exec(compile(model_py.read_text(), str(model_py), "exec"), ns)
    torch.manual_seed(0)
    net = ns["make"]()  # type: ignore[operator]
    assert isinstance(net, nn.Module)
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _message(exc: pytest.ExceptionInfo[cc.ModelLoadError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text  # one line
    return text


# ------------------------------------------------------------------ specs that work
def test_file_factory_with_weights_is_exact_and_in_eval_mode(model_py: Path,
                                                             tmp_path: Path) -> None:
    net = _trained(model_py)
    w = tmp_path / "w.pt"
    torch.save(net.state_dict(), w)
    model = load_model(f"{model_py}:make", str(w))
    assert isinstance(model, nn.Module)
    assert not any(m.training for m in model.modules())
    loaded = model.state_dict()
    assert loaded.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v), k
    x = torch.randn(5, 1, 6, 6)
    assert torch.equal(model(x), net(x))
    assert cc.parameter_digest(model) == cc.parameter_digest(net)


def test_same_file_twice_gives_the_same_classes(model_py: Path) -> None:
    a = load_model(f"{model_py}:make")
    b = load_model(f"{model_py}:make_wide")
    assert type(a) is type(b)


def test_factory_in_an_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "ccpkg_loading"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODEL_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("ccpkg_loading.models:make")
    assert type(model).__name__ == "Net" and not model.training
    nested = load_model("ccpkg_loading.models:Net")  # a class is a factory too
    assert type(nested).__name__ == "Net"
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("ccpkg_loading.models:missing")
    assert "has no attribute 'missing'" in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("ccpkg_loading.nope:make")
    assert "no module named 'ccpkg_loading.nope'" in _message(exc)


class _TinyNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))


class _TinyPlugin(Plugin):
    name = "tiny-loading-plugin"
    model_prefixes = ("tiny",)

    def resolve_model(self, spec: str) -> nn.Module | None:
        name = spec.split(":", 1)[1]
        if name == "broken":
            raise RuntimeError("weights not cached")
        if name == "notmodule":
            return "a string"  # type: ignore[return-value]
        return _TinyNet() if name == "mlp" else None

    def input_spec(self, model: nn.Module) -> InputSpec | None:
        return InputSpec((1, 4), 1.0, "test") if isinstance(model, _TinyNet) else None


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> PluginManager:
    """A process-wide plugin manager with no installed plugins, restored afterwards."""
    pm = PluginManager(load_entry_points=False)
    monkeypatch.setattr(plugins_module, "_manager", pm)
    return pm


def test_plugin_prefix(fresh_plugins: PluginManager) -> None:
    fresh_plugins.add(_TinyPlugin, "test")
    model = load_model("tiny:mlp")
    assert isinstance(model, _TinyNet) and not model.training
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("tiny:resnet")
    assert _message(exc) == "plugin 'tiny-loading-plugin' does not know the model 'tiny:resnet'"
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("tiny:broken")
    assert "failed to build 'tiny:broken': RuntimeError: weights not cached" in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("tiny:notmodule")
    assert "returned str" in _message(exc)


def test_missing_plugin_says_which_to_install(fresh_plugins: PluginManager) -> None:
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("torchvision:resnet18")
    msg = _message(exc)
    assert "pip install -e plugins/certcompress-torchvision" in msg and "installed prefixes: none" in msg
    fresh_plugins.add(_TinyPlugin, "test")
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model("nosuchprefix:thing")
    msg = _message(exc)
    assert "no module named 'nosuchprefix'" in msg and "installed: tiny" in msg


def test_exported_program_round_trip(tmp_path: Path) -> None:
    net = _TinyNet().eval()
    p = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(3, 4),)), p)
    program = load_model(str(p))
    assert isinstance(program, torch.export.ExportedProgram)
    assert exported_input_shape(program) == (3, 4)
    assert cc.path_norm(program, (3, 4)) == pytest.approx(cc.path_norm(net, (3, 4)), rel=1e-12)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(str(p), weights=str(tmp_path / "w.pt"))
    assert "carries its own weights" in _message(exc)


def test_corrupt_exported_archives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = _TinyNet().eval()
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 4),)), good)
    data = good.read_bytes()
    (tmp_path / "half.pt2").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt2").write_bytes(b"not an archive")
    for name in ("half.pt2", "junk.pt2"):
        with pytest.raises(cc.ModelLoadError) as exc:
            load_model(str(tmp_path / name))
        assert "torch.export" in _message(exc) and name in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(str(tmp_path / "absent.pt2"))
    assert "does not exist" in _message(exc)
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ bad specs
@pytest.mark.parametrize("spec, expected", [
    ("{dir}/absent.py:make", "model file '{dir}/absent.py' does not exist"),
    ("{dir}/model.py:nothing", "defines no 'nothing'; it defines: Net, broken, make, "
                               "make_wide, needs_arg, not_a_model"),
    ("{dir}/model.py:NUMBER", "names a int, not a callable factory"),
    ("{dir}/model.py:not_a_model", "returned int, expected a torch.nn.Module"),
    ("{dir}/model.py:broken", "raised RuntimeError: cannot build: config missing"),
    ("{dir}/model.py:needs_arg", "(the factory is called with no arguments)"),
    ("{dir}/model.py", "names a Python file but no factory: use"),
    ("{dir}/model.py:make-it", "'make-it' is not a valid factory name"),
    ("{dir}/w.pt", "is a weights file, not a model"),
    ("model", "malformed model spec 'model'"),
    (":make", "malformed model spec ':make'"),
    ("some dir/x:make", "is neither a .py file, an importable module nor a plugin prefix"),
    ("   ", "empty model spec"),
])
def test_bad_specs(model_py: Path, spec: str, expected: str) -> None:
    d = str(model_py.parent)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(spec.format(dir=d))
    assert expected.format(dir=d) in _message(exc)


def test_python_file_that_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text("def make(:\n    pass\n")
    (tmp_path / "raises.py").write_text("import torch\nraise ValueError('bad config')\n")
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{tmp_path / 'syntax.py'}:make")
    assert "SyntaxError at line 1" in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{tmp_path / 'raises.py'}:make")
    assert "raised ValueError: bad config" in _message(exc)


def test_file_imports_its_sibling_modules(tmp_path: Path) -> None:
    (tmp_path / "ccsibling_layers.py").write_text(
        "from torch import nn\ndef block():\n    return nn.Sequential(nn.Linear(2, 2), nn.ReLU())\n")
    (tmp_path / "net.py").write_text("import ccsibling_layers\n"
                                     "def make():\n    return ccsibling_layers.block()\n")
    try:
        model = load_model(f"{tmp_path / 'net.py'}:make")
    finally:
        sys.modules.pop("ccsibling_layers", None)
    assert isinstance(model, nn.Sequential)
    assert str(tmp_path) not in sys.path


# ------------------------------------------------------------------ weights files
class _Marker:
    """Unpickling this would create a file: weights_only must refuse it unexecuted."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_whole_pickled_model_is_refused_without_running_it(model_py: Path,
                                                           tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(_TinyNet(), whole)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(whole))
    msg = _message(exc)
    assert "is not a state dict" in msg and "torch.save(model.state_dict(), path)" in msg
    assert "_TinyNet" in msg
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": _Marker(str(marker))}, evil)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_state_dict_file(_TinyNet(), str(evil))
    assert "only loads state dicts" in _message(exc)
    assert not marker.exists()


def test_corrupt_and_truncated_weights(model_py: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_trained(model_py).state_dict(), good)
    data = good.read_bytes()
    cases = {"half.pt": data[: len(data) // 2], "empty.pt": b"", "junk.pt": b"hello world",
             "pickle.pt": pickle.dumps([1, 2, 3])[:5]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(cc.ModelLoadError) as exc:
            load_model(f"{model_py}:make", str(tmp_path / name))
        msg = _message(exc)
        assert f"cannot read weights file '{tmp_path / name}': corrupt or truncated" in msg
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path / "absent.pt"))
    assert "does not exist" in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path))
    assert "is not a file" in _message(exc)


def test_files_that_are_not_state_dicts(model_py: Path, tmp_path: Path) -> None:
    sd = _trained(model_py).state_dict()
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"model": sd, "epoch": 7}, tmp_path / "ckpt.pt")
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path / "tensor.pt"))
    assert "holds a Tensor, not a state dict" in _message(exc)
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path / "ckpt.pt"))
    msg = _message(exc)
    assert "entries model, epoch are not tensors" in msg
    assert "torch.save(checkpoint['model'], path)" in msg


def test_wrong_architecture_lists_keys_and_shapes(model_py: Path, tmp_path: Path) -> None:
    wide = load_model(f"{model_py}:make_wide")
    sd = {k: v for k, v in wide.state_dict().items() if not k.startswith("bn.")}
    sd["head.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "wide.pt")
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path / "wide.pt"))
    msg = _message(exc)
    assert f"does not fit '{model_py}:make'" in msg
    assert ("5 missing key(s) (bn.weight, bn.bias, bn.running_mean, bn.running_var, "
            "bn.num_batches_tracked)") in msg
    assert "1 unexpected key(s) (head.weight)" in msg
    assert "conv.weight: file (6, 1, 3, 3), model (4, 1, 3, 3)" in msg
    assert "fc.weight: file (3, 216), model (3, 144)" in msg


def test_dataparallel_prefix_hint(model_py: Path, tmp_path: Path) -> None:
    sd = {f"module.{k}": v for k, v in _trained(model_py).state_dict().items()}
    torch.save(sd, tmp_path / "dp.pt")
    with pytest.raises(cc.ModelLoadError) as exc:
        load_model(f"{model_py}:make", str(tmp_path / "dp.pt"))
    assert "save model.module.state_dict() instead" in _message(exc)


# ------------------------------------------------------------------ reference data
def test_reference_data_formats(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((7, 1, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "named.npz", y=np.zeros(3), x=x)
    np.savez(tmp_path / "single.npz", inputs=x)
    np.save(tmp_path / "plain.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "t.pt")
    torch.save({"x": torch.from_numpy(x), "labels": torch.zeros(7)}, tmp_path / "d.pt")
    np.save(tmp_path / "one.npy", x[0])
    for name in ("named.npz", "single.npz", "plain.npy", "t.pt", "d.pt"):
        got = load_reference_inputs(str(tmp_path / name), (1, 1, 6, 6))
        assert got.dtype == torch.float64 and torch.equal(got, torch.from_numpy(x).double())
    one = load_reference_inputs(str(tmp_path / "one.npy"), (1, 1, 6, 6))
    assert one.shape == (1, 1, 6, 6)


def test_malformed_reference_data(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 6, 6))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    np.save(tmp_path / "shape.npy", np.zeros((4, 6, 6, 1)))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    torch.save([1, 2], tmp_path / "list.pt")
    cases = {
        "two.npz": "holds arrays a, b; name the inputs 'x'",
        "shape.npy": "has shape (4, 6, 6, 1); expected (n, 1, 6, 6)",
        "nan.npy": "contains NaN or infinite values",
        "obj.npy": "cannot read reference data",
        "trunc.npz": "cannot read reference data",
        "data.csv": "unknown format '.csv'",
        "list.pt": "holds a list; expected a tensor",
        "absent.npz": "does not exist",
    }
    for name, expected in cases.items():
        with pytest.raises(cc.ConfigurationError) as exc:
            load_reference_inputs(str(tmp_path / name), (1, 1, 6, 6))
        assert expected in str(exc.value) and "\n" not in str(exc.value), name


def test_executor_runs_need_specs_and_local_runs_need_modules() -> None:
    """Workers load the model themselves: a module object with executor= is refused, and
    a spec string without one is refused, both naming what to pass instead."""
    from certcompress.compress.pruning import pruning_report
    from certcompress.compress.quantization import bound_vs_bits

    net = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.zeros(2, 4)
    with pytest.raises(cc.ConfigurationError, match="never module objects.*Sequential"):
        pruning_report(net, sparsities=[0.5], data=x, input_shape=(1, 4), input_radius=1.0,
                       executor="serial")
    with pytest.raises(cc.ConfigurationError, match="never module objects"):
        bound_vs_bits(net, [6.0], input_shape=(1, 4), input_radius=1.0, executor="serial")
    with pytest.raises(cc.ConfigurationError, match="is a spec: .*run the report on workers"):
        pruning_report("torchvision:resnet18", sparsities=[0.5], data=x,
                       input_shape=(1, 4), input_radius=1.0)
    with pytest.raises(cc.ConfigurationError, match="is a spec: .*run the sweep on workers"):
        bound_vs_bits("torchvision:resnet18", [6.0], input_shape=(1, 4), input_radius=1.0)
