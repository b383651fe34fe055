"""The ``certcompress`` command line, end to end on models saved in a temporary
directory: the printed certificate and its JSON agree with the Python API; every user
error is one line on stderr with exit code 2, no traceback and no output file."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress import cli
from certcompress.bounds.propagation.lowering import default_lowerings
from certcompress.capture import PluginManager
from certcompress.capture import plugins as plugins_module
from certcompress.cli import tiers as tiers_cli

SHAPE = (1, 1, 6, 6)
RADIUS = 1.5

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

    class WithGelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(36, 8)
            self.act = nn.GELU()
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.act(self.fc(torch.flatten(x, 1))))

    def make():
        return Net()

    def make_wide():
        return Net(width=6)

    def make_gelu():
        return WithGelu()
''')


@dataclass(frozen=True)
class Saved:
    """A model file, the original and pruned state dicts, reference data, and the same
    models built in this process (not through certcompress.loading)."""

    dir: Path
    model_py: Path
    orig: Path
    pruned: Path
    ref: Path
    original: nn.Module
    compressed: nn.Module
    x: torch.Tensor

    @property
    def spec(self) -> str:
        return f"{self.model_py}:make"


@pytest.fixture
def saved(tmp_path: Path) -> Saved:
    model_py = tmp_path / "model.py"
    model_py.write_text(MODEL_PY)
    ns: dict[str, object] = {}
    exec(compile(MODEL_PY, str(model_py), "exec"), ns)
    torch.manual_seed(0)
    original = ns["make"]()  # type: ignore[operator]
    assert isinstance(original, nn.Module)
    original.bn.running_mean.uniform_(-0.5, 0.5)
    original.bn.running_var.uniform_(0.5, 2.0)
    original.eval()
    compressed = ns["make"]()  # type: ignore[operator]
    assert isinstance(compressed, nn.Module)
    compressed.load_state_dict(original.state_dict())
    compressed.eval()
    with torch.no_grad():  # magnitude pruning: the smaller half of each weight -> 0
        for layer in (compressed.conv, compressed.fc):
            w = layer.weight
            w[w.abs() <= w.abs().flatten().median()] = 0.0
    torch.save(original.state_dict(), tmp_path / "orig.pt")
    torch.save(compressed.state_dict(), tmp_path / "pruned.pt")
    x = torch.rand((10,) + SHAPE[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1
    np.savez(tmp_path / "ref.npz", x=x.numpy())
    return Saved(tmp_path, model_py, tmp_path / "orig.pt", tmp_path / "pruned.pt",
                 tmp_path / "ref.npz", original, compressed, x)


def _certify_args(s: Saved, *extra: str) -> list[str]:
    return ["certify", s.spec, s.spec, "--weights", str(s.orig), "--compressed-weights",
            str(s.pruned), "--input-shape", *map(str, SHAPE), "--radius", str(RADIUS),
            "--reference-data", str(s.ref), "--search-steps", "5", *extra]


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("certcompress: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.suffix in (".json", ".tmp"))


# ------------------------------------------------------------------ certify
def test_certify_matches_the_api(saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    out = saved.dir / "cert.json"
    assert cli.main(_certify_args(saved, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    cert = cc.Certificate.load(out)
    api = cc.certify(saved.original, saved.compressed, SHAPE, RADIUS,
                     reference_inputs=saved.x.double(), search_steps=5)
    assert cert.bound == pytest.approx(api.bound, rel=1e-12)
    assert cert.per_output == pytest.approx(api.per_output, rel=1e-12)
    assert cert.path_metric == pytest.approx(api.path_metric, rel=1e-12)
    assert cert.original_digest == cc.parameter_digest(saved.original)
    assert cert.compressed_digest == cc.parameter_digest(saved.compressed)
    assert cert.original_digest != cert.compressed_digest
    assert cert.radius == RADIUS and cert.input_shape == SHAPE
    assert cert.measurements.reference_count == 10
    assert cert.measurements.deviation_max == pytest.approx(api.measurements.deviation_max)
    assert cert.changed_parameters == api.changed_parameters > 0
    assert cert.bound > 0
    assert f"certified bound      {cert.bound:.6g}" in printed
    assert f"certificate written to {out.resolve()}" in printed
    assert _leftovers(saved.dir) == ["cert.json"]


def test_identical_models_certify_zero(saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    out = saved.dir / "same.json"
    args = ["certify", saved.spec, saved.spec, "--weights", str(saved.orig),
            "--compressed-weights", str(saved.orig), "--input-shape", *map(str, SHAPE),
            "--radius", "1", "--search-steps", "0", "--out", str(out)]
    assert cli.main(args) == 0
    cert = cc.Certificate.load(out)
    assert cert.bound == 0.0 and cert.changed_parameters == 0
    assert cert.measurements.adversarial_max is None


def _console_script() -> list[str]:
    found = shutil.which("certcompress", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "certcompress.cli"]


def test_console_script_subprocess(saved: Saved) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(_console_script() + _certify_args(saved), cwd=saved.dir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    default = saved.dir / "certificate.json"  # the default output, in the working directory
    assert f"certificate written to {default}" in run.stdout
    cert = cc.Certificate.load(default)
    assert f"{cert.bound:.6g}" in run.stdout
    api = cc.certify(saved.original, saved.compressed, SHAPE, RADIUS, search_steps=0)
    assert cert.bound == pytest.approx(api.bound, rel=1e-12)
    # a failing run through `python -m certcompress.cli`: one line, exit 2, no file
    default.unlink()
    bad = subprocess.run([sys.executable, "-m", "certcompress.cli", *_certify_args(saved)[:1],
                          f"{saved.dir / 'absent.py'}:make", saved.spec, "--radius", "1",
                          "--input-shape", *map(str, SHAPE)],
                         cwd=saved.dir, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    line = _one_line_error(bad.stderr)
    assert "absent.py' does not exist" in line
    assert _leftovers(saved.dir) == []


# ------------------------------------------------------------------ certify errors
@pytest.mark.parametrize("case", [
    "missing_model", "syntax_error", "no_factory", "whole_pickle", "truncated",
    "wrong_architecture", "reference_shape", "reference_corrupt", "missing_dir",
    "parent_is_file", "out_is_dir", "no_radius", "no_input_shape", "missing_plugin", "other_architecture", "pt2",
    "negative_radius",
])
def test_certify_errors(saved: Saved, case: str, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    d = saved.dir
    out = d / "cert.json"
    args = _certify_args(saved, "--out", str(out))
    expected = ""
    if case == "missing_model":
        args[1] = f"{d / 'nomodel.py'}:make"
        expected = "model file '" + str(d / "nomodel.py") + "' does not exist"
    elif case == "syntax_error":
        (d / "broken.py").write_text("def make(:\n")
        args[1] = f"{d / 'broken.py'}:make"
        expected = "SyntaxError at line 1"
    elif case == "no_factory":
        args[1] = f"{saved.model_py}:build"
        expected = "defines no 'build'; it defines: Net, WithGelu, make, make_gelu, make_wide"
    elif case == "whole_pickle":
        torch.save(nn.Sequential(nn.Linear(36, 3)), d / "whole.pt")  # a whole model
        args[4] = str(d / "whole.pt")
        expected = "certcompress only loads state dicts"
    elif case == "truncated":
        data = saved.pruned.read_bytes()
        (d / "cut.pt").write_bytes(data[: len(data) // 3])
        args[6] = str(d / "cut.pt")
        expected = "corrupt or truncated"
    elif case == "wrong_architecture":
        args[2] = f"{saved.model_py}:make_wide"
        expected = "shape mismatch(es) (conv.weight: file (4, 1, 3, 3), model (6, 1, 3, 3)"
    elif case == "reference_shape":
        np.savez(d / "ref.npz", x=np.zeros((4, 6, 6)))
        expected = "has shape (4, 6, 6); expected (n, 1, 6, 6)"
    elif case == "reference_corrupt":
        (d / "ref.npz").write_bytes(b"PK\x03\x04garbage")
        expected = "cannot read reference data"
    elif case == "missing_dir":
        out = d / "no" / "such" / "cert.json"
        args[-1] = str(out)
        expected = "directory '" + str(d / "no" / "such") + "' does not exist"
    elif case == "parent_is_file":
        out = saved.orig / "cert.json"
        args[-1] = str(out)
        expected = f"'{saved.orig}' is not a directory"
    elif case == "out_is_dir":
        (d / "cert.json").mkdir()
        expected = "is a directory; name a file"
    elif case == "no_radius":
        i = args.index("--radius")
        del args[i:i + 2]
        expected = "--radius is required"
    elif case == "no_input_shape":
        i = args.index("--input-shape")
        del args[i:i + 1 + len(SHAPE)]
        expected = "--input-shape is required"
    elif case == "missing_plugin":
        args[1] = "torchvision:resnet18"
        expected = "needs the certcompress-torchvision plugin"
    elif case == "other_architecture":
        args[2] = f"{saved.model_py}:make_wide"
        del args[5:7]  # no --compressed-weights: both load, the graphs differ
        expected = "the compressed model does not have the original's architecture"
    elif case == "pt2":
        torch.export.save(torch.export.export(saved.original, (torch.zeros(SHAPE),)),
                          d / "net.pt2")
        args[2] = str(d / "net.pt2")
        del args[5:7]
        expected = "certify needs nn.Module models"
    elif case == "negative_radius":
        args[args.index("--radius") + 1] = "-1"
        expected = "input_radius must be a finite number >= 0"
    monkeypatch.setattr(plugins_module, "_manager", PluginManager(load_entry_points=False))
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 2, captured
    line = _one_line_error(captured.err)
    assert expected in line
    if case == "out_is_dir":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists()
        assert _leftovers(d) == []


def test_debug_shows_the_traceback(saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{saved.dir / 'absent.py'}:make"
    for args in (["--debug", "inspect", spec], ["inspect", spec, "--debug"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "ModelLoadError" in err
        assert err.strip().splitlines()[-1].startswith("certcompress: error: model file")


# ------------------------------------------------------------------ inspect
def test_inspect_supported(saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["inspect", saved.spec, "--weights", str(saved.orig), "--input-shape",
                     *map(str, SHAPE)])
    out = capsys.readouterr().out
    assert code == 0
    assert str(cc.trace(saved.original, SHAPE)) in out
    assert "supported (a ReLU-DAG certcompress certifies)" in out
    assert f"path-norm ||Phi(theta)||_1 = {cc.path_norm(saved.original, SHAPE):.6g}" in out


def test_inspect_gelu_names_the_node(saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["inspect", f"{saved.model_py}:make_gelu", "--input-shape", *map(str, SHAPE)])
    captured = capsys.readouterr()
    assert code == 2
    assert "NOT SUPPORTED" in captured.out
    assert "GELU (e.g. act): GELU is smooth" in captured.out
    assert "path-norm" not in captured.out
    assert "Traceback" not in captured.err and captured.err == ""


def test_inspect_exported_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    p = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, 5),)), p)
    assert cli.main(["inspect", str(p)]) == 0  # the input shape comes from the archive
    out = capsys.readouterr().out
    assert "captured with torch.export" in out and "input shape (2, 5)" in out
    assert f"= {cc.path_norm(net, (2, 5)):.6g}" in out
    assert cli.main(["inspect", str(p), "--input-shape", "2", "5"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(p), "--input-shape", "1", "5"]) == 2
    assert "declares input shape (2, 5), not (1, 5)" in _one_line_error(
        capsys.readouterr().err)
    assert cli.main(["inspect", str(p), "--weights", str(tmp_path / "w.pt")]) == 2
    assert "carries its own weights" in _one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------ plugins, adapters
PLUGIN_PY = textwrap.dedent('''
    import torch
    from torch import nn
    from certcompress.capture import Plugin
    from certcompress.capture.adapters.activations import ReLUAdapter
    from certcompress.domain import InputSpec

    class MyReLU(nn.Module):
        def forward(self, x):
            return x * (x > 0)   # a product of input-dependent tensors, unless adapted

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.fc1 = nn.Linear(4, 6)
            self.act = MyReLU()
            self.fc2 = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    def make():
        return Tiny()

    class TinyPlugin(Plugin):
        name = "tiny-cli-plugin"
        model_prefixes = ("tiny",)

        def register_adapters(self, registry):
            registry.register_module(MyReLU, ReLUAdapter())

        def resolve_model(self, spec):
            return Tiny() if spec == "tiny:mlp" else None

        def input_spec(self, model):
            if isinstance(model, Tiny):
                return InputSpec((1, 4), 2.0, "test inputs in [-2, 2]")
            return None
''')


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable plugin module ``ccclitiny`` and a fresh process-wide plugin manager."""
    (tmp_path / "ccclitiny.py").write_text(PLUGIN_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins_module, "_manager", PluginManager(load_entry_points=False))
    yield tmp_path
    sys.modules.pop("ccclitiny", None)


def test_plugin_adapters_prefix_and_input_spec(plugin_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{plugin_dir / 'ccclitiny.py'}:make"
    assert cli.main(["inspect", spec, "--input-shape", "1", "4"]) == 2  # no adapter yet
    assert "(e.g. mul)" in capsys.readouterr().out
    plugin = ["--plugin", "ccclitiny:TinyPlugin"]
    assert cli.main(["inspect", "tiny:mlp", *plugin]) == 0  # shape from the plugin
    assert "input shape (1, 4)" in capsys.readouterr().out
    assert cli.main(["inspect", "tiny:mlp", *plugin]) == 0  # loading it again is harmless
    capsys.readouterr()
    out = plugin_dir / "c.json"
    assert cli.main(["certify", "tiny:mlp", "tiny:mlp", *plugin, "--search-steps", "2",
                     "--out", str(out)]) == 0
    cert = cc.Certificate.load(out)
    assert cert.radius == 2.0 and cert.input_shape == (1, 4) and cert.bound == 0.0
    assert "test inputs in [-2, 2]" in cert.domain
    capsys.readouterr()
    assert cli.main(["adapters", *plugin]) == 0
    listing = capsys.readouterr().out
    assert "ccclitiny.MyReLU" in listing and "tiny-cli-plugin" in listing
    assert "tiny-cli-plugin  (model prefixes: tiny)  from explicit: ccclitiny:TinyPlugin" \
        in listing
    assert cli.main(["inspect", "tiny:mlp", "--plugin", "ccclitiny:Nothing"]) == 2
    assert "has no attribute 'Nothing'" in _one_line_error(capsys.readouterr().err)


def test_adapters_lists_the_registry(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pm = PluginManager(load_entry_points=False)
    monkeypatch.setattr(plugins_module, "_manager", pm)
    assert cli.main(["adapters"]) == 0
    out = capsys.readouterr().out
    for kind, key, adapter, source in pm.registry.entries():
        assert any(line.split() == [kind, key, adapter, source] for line in out.splitlines())
    assert f"{len(pm.registry.entries())} adapters" in out
    assert "plugins: none loaded" in out and "certcompress.plugins" in out
    # the bound-propagation lowerings, each with its function and who registered it
    builtin = default_lowerings().entries()
    for e in builtin:
        assert [e.op_type.__name__, f"{e.fn.__module__}.{e.fn.__qualname__}", e.source] in \
            [line.split() for line in out.splitlines()], e
    assert f"\n{len(builtin)} lowerings\n" in out and "ScaledReLUOp" not in out
    # a plugin's lowering is listed under its name
    assert cli.main(["adapters", "--plugin", "certcompress_example:ExamplePlugin"]) == 0
    out = capsys.readouterr().out
    assert ["ScaledReLUOp", "certcompress_example.lowering.lower_scaled_relu",
            "certcompress-example"] in [line.split() for line in out.splitlines()]
    assert f"\n{len(builtin) + 1} lowerings\n" in out


TIER_PLUGIN_PY = textwrap.dedent('''
    from certcompress import Plugin
    from certcompress.bounds.tiers import Tier, TierBound

    class ZeroTier(Tier):
        name = "zero-test"
        summary = "a test tier that never runs"

        def _bound(self, pair, domain, options):
            raise AssertionError("not run by the listing")

    class QuietTier(ZeroTier):
        name = "quiet-test"
        summary = ""
        default_with_domain = True

    class TierPlugin(Plugin):
        name = "tier-test-plugin"

        def register_tiers(self, registry):
            registry.register(ZeroTier())
            registry.register(QuietTier())
''')


def _table(out: str) -> dict[str, list[str]]:
    """The tier listing's rows by name: [default, source, description]."""
    lines = out.split("\n\n")[0].splitlines()
    assert lines[0].split() == ["NAME", "DEFAULT", "SOURCE", "DESCRIPTION"]
    rows = {}
    for line in lines[1:]:
        name, rest = line.split(None, 1)
        default = "with --domain" if rest.startswith("with --domain") else rest.split()[0]
        source, text = rest[len(default):].split(None, 1)
        rows[name] = [default, source, text.strip()]
    return rows


def test_tiers_lists_the_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module, "_manager", PluginManager(load_entry_points=False))
    assert cli.main(["tiers"]) == 0
    out = capsys.readouterr().out
    registry = cc.tier_registry()
    rows = _table(out)
    assert list(rows) == list(registry.names()) == ["path-metric", "bounds", "bab"]
    assert rows["path-metric"] == ["always", "certcompress", registry.get("path-metric").summary]
    assert rows["bounds"] == ["with --domain", "certcompress", registry.get("bounds").summary]
    assert rows["bab"] == ["no", "certcompress", registry.get("bab").summary]
    assert "\n3 tiers\n" in out and "scope of every tier: worst case" in out
    assert "certify runs: path-metric (no --domain); path-metric, bounds (with --domain)" in out
    # a plugin's tiers: attributed to it, a default only when it says so
    (tmp_path / "cctiertest.py").write_text(TIER_PLUGIN_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert cli.main(["tiers", "--plugin", "cctiertest:TierPlugin"]) == 0
        out = capsys.readouterr().out
        rows = _table(out)
        assert rows["zero-test"] == ["no", "tier-test-plugin", "a test tier that never runs"]
        assert rows["quiet-test"] == ["with --domain", "tier-test-plugin", "(no summary)"]
        assert [r[0] for r in tiers_cli.tier_rows(cc.tier_registry())] == list(rows)
        assert "path-metric, bounds, quiet-test (with --domain)" in out
        assert cli.main(["tiers", "--plugin", "cctiertest:Nothing"]) == 2
        assert "has no attribute 'Nothing'" in _one_line_error(capsys.readouterr().err)
    finally:
        sys.modules.pop("cctiertest", None)


# ------------------------------------------------------------------ the parser
def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"certcompress {cc.__version__}"
    assert cli.main([]) == 2
    assert "usage: certcompress" in capsys.readouterr().err
    assert cli.main(["certify", "only-one-model"]) == 2
    assert "the following arguments are required: COMPRESSED" in capsys.readouterr().err
    assert cli.main(["inspect", "m.py:make", "--input-shape", "1", "x"]) == 2
    assert "invalid int value: 'x'" in capsys.readouterr().err


def test_optional_commands_are_registered_when_present(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name, module in cli._OPTIONAL_COMMANDS.items():
        present = importlib.util.find_spec(module) is not None
        assert (f"    {name}" in listing) == present, name


BOOM_PY = textwrap.dedent('''
    from certcompress.errors import SoundnessError

    def _run(args):
        if args.kind == "bug":
            raise RuntimeError("kaboom\\nsecond line")
        if args.kind == "unsound":
            raise SoundnessError("measured 2 > bound 1")
        raise PermissionError(13, "Permission denied", "/root/x.json")

    def register(subparsers):
        p = subparsers.add_parser("boom", help="test command")
        p.add_argument("kind")
        p.set_defaults(func=_run)
''')


def test_command_modules_plug_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ccboomcli.py").write_text(BOOM_PY)
    (tmp_path / "ccneedsdep.py").write_text("import cc_not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_OPTIONAL_COMMANDS",
                        {"boom": "ccboomcli", "absent": "ccpkg_absent.cli"})
    try:
        assert cli._optional_register("ccpkg_absent.cli") is None
        with pytest.raises(ModuleNotFoundError, match="cc_not_installed_dependency"):
            cli._optional_register("ccneedsdep")  # a missing dependency is not hidden
        cli.build_parser("inspect")
        assert "ccboomcli" not in sys.modules  # a built-in command imports no optional one
        assert cli.main(["boom", "bug"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            "certcompress: internal error: RuntimeError: kaboom (a bug in certcompress")
        assert cli.main(["boom", "unsound"]) == 1
        assert _one_line_error(capsys.readouterr().err) == \
            "certcompress: error: measured 2 > bound 1"
        assert cli.main(["boom", "denied"]) == 2
        assert "Permission denied: '/root/x.json'" in _one_line_error(capsys.readouterr().err)
        assert cli.main(["--debug", "boom", "bug"]) == 1
        assert "Traceback (most recent call last)" in capsys.readouterr().err
    finally:
        sys.modules.pop("ccboomcli", None)
        sys.modules.pop("ccneedsdep", None)


def test_json_written_is_the_printed_certificate(saved: Saved,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = saved.dir / "c.json"
    assert cli.main(_certify_args(saved, "--out", str(out), "--search-steps", "0")) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    cert = cc.Certificate.from_dict(data)
    assert cert.summary() in printed
    # writing over an existing file replaces it whole
    assert cli.main(_certify_args(saved, "--out", str(out), "--search-steps", "0")) == 0
    assert cc.Certificate.load(out).bound == cert.bound
    assert _leftovers(saved.dir) == ["c.json"]


def test_listing_the_commands_imports_neither_torch_nor_the_library() -> None:
    code = ("import sys, contextlib, io\n"
            "import certcompress.cli as c\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    rc = c.main(['--help'])\n"
            "assert rc == 0 and 'quantize' in out.getvalue(), out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'certcompress.api', 'numpy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# ------------------------------------------------------------------ --domain / --method
@pytest.mark.parametrize("command", [["certify"], ["prune"], ["certify-plan"], ["quantize"],
                                     ["zoo", "certify"]])
def test_every_certifying_command_takes_domain_and_method(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--domain", "--method", "--arithmetic"):
        assert option in text, (command, option)


def _box(lo: float, hi: float) -> cc.InputDomain:
    return cc.InputDomain.box(lo, hi, shape=SHAPE)


def _load_net(saved: Saved, state: Path) -> nn.Module:
    import copy

    net = copy.deepcopy(saved.original)
    net.load_state_dict(torch.load(state, weights_only=True))
    return net.eval()


def test_prune_certifies_over_the_domain_with_the_methods(
        saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["prune", saved.spec, "--weights", str(saved.orig), "--input-shape",
            *map(str, SHAPE), "--search-steps", "0"]
    out, cert_file = saved.dir / "p.pt", saved.dir / "c.json"
    files = ["--out", str(out), "--certificate", str(cert_file)]
    assert cli.main([*base, "--sparsity", "0.5", "--domain", "0:1", *files]) == 0
    assert "box [0, 1]" in capsys.readouterr().out
    cert = cc.Certificate.load(cert_file)
    assert set(cert.by_method) == {"path-metric", "bounds"}  # the default with a domain
    assert cert.input_domain is not None and cert.input_domain.lower == (0.0,) \
        and cert.input_domain.upper == (1.0,)
    api = cc.certify(saved.original, _load_net(saved, out), domain=_box(0.0, 1.0),
                     search_steps=0)
    assert cert.bound == api.bound and cert.by_method["bounds"].bound == \
        api.by_method["bounds"].bound

    assert cli.main([*base, "--sparsity", "0.5", "--domain=-1:1", "--method", "path-metric",
                     *files]) == 0
    only = cc.Certificate.load(cert_file)
    assert set(only.by_method) == {"path-metric"} and only.radius == 1.0

    # the budget search certifies with the bounds tier too: the bound stays in budget
    budget = api.bound
    assert cli.main([*base, "--budget", repr(budget), "--domain", "0:1", "--method", "bounds",
                     *files]) == 0
    found = cc.Certificate.load(cert_file)
    assert set(found.by_method) == {"path-metric", "bounds"} and found.bound <= budget

    out.unlink()
    cert_file.unlink()
    capsys.readouterr()
    assert cli.main([*base, "--sparsity", "0.5", "--domain", "0:1", "--radius", "1",
                     *files]) == 2
    assert "either --domain or --radius" in _one_line_error(capsys.readouterr().err)
    assert not out.exists() and not cert_file.exists()


def test_quantize_certifies_over_the_domain_with_the_methods(
        saved: Saved, capsys: pytest.CaptureFixture[str]) -> None:
    out = saved.dir / "q"
    base = ["quantize", saved.spec, "--weights", str(saved.orig), "--input-shape",
            *map(str, SHAPE), "--search-steps", "0", "--out", str(out)]
    assert cli.main([*base, "--bits", "4", "--domain=-1:1", "--method", "bounds"]) == 0
    assert "box [-1, 1]" in capsys.readouterr().out
    cert = cc.Certificate.load(out / "certificate.json")
    assert set(cert.by_method) == {"bounds"}
    from certcompress.compress.quantization import QuantConfig, quantize

    qcfg = QuantConfig.uniform(saved.original, 4, "per-channel")
    _, api = quantize(saved.original, qcfg, domain=_box(-1.0, 1.0), methods=("bounds",),
                      search_steps=0)
    assert cert.bound == api.bound

    # a certified budget met with both tiers over the box (the allocation uses bounds too)
    assert cli.main([*base, "--budget", repr(api.bound), "--domain=-1:1",
                     "--candidates", "3", "4", "8"]) == 0
    alloc = cc.Certificate.load(out / "certificate.json")
    assert set(alloc.by_method) == {"path-metric", "bounds"} and alloc.bound <= api.bound
    assert alloc.input_domain is not None and alloc.input_domain.upper == (1.0,)

    # --avg-bits allocates with the path-metric bound, then certifies over the box as asked
    assert cli.main([*base, "--avg-bits", "4", "--domain", "0:1"]) == 0
    avg = cc.Certificate.load(out / "certificate.json")
    assert set(avg.by_method) == {"path-metric", "bounds"}
    assert avg.input_domain is not None and avg.input_domain.lower == (0.0,)


def test_the_command_table_is_the_cli_package(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command of the table runs ``--help`` through main, each module registers
    exactly the commands the table maps to it, and every command module of
    certcompress/cli/ is in the table."""
    import argparse
    import importlib
    import pkgutil

    import certcompress.cli as package

    table = {**cli._BUILTIN_COMMANDS, **cli._OPTIONAL_COMMANDS}
    for name in table:
        assert cli.main([name, "--help"]) == 0, name
        assert f"usage: certcompress {name}" in capsys.readouterr().out
    for module in set(table.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert set(sub.choices) == {n for n, m in table.items() if m == module}, module
    names = [m.name for m in pkgutil.iter_modules(package.__path__)
             if m.name != "__main__"]  # __main__ runs the command line when imported
    registering = {f"certcompress.cli.{n}" for n in names
                   if hasattr(importlib.import_module(f"certcompress.cli.{n}"), "register")}
    assert registering == set(table.values())
