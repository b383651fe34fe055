"""``certcompress export`` and ``certcompress verify`` end to end: exit 0 only when every
check passes; bad files and paths are one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _onnx_helpers import export_commands, one_line_error
from onnx import numpy_helper

import certcompress as cc
from certcompress import cli
from certcompress.export.metadata import KEY_CERTIFICATE

SHAPE = (1, 10)

MODEL_PY = textwrap.dedent('''
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    (d / "model.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    original = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 3)).eval()
    compressed = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                                     torch.nn.Linear(16, 3)).eval()
    compressed.load_state_dict(original.state_dict())
    with torch.no_grad():
        for layer in (compressed[0], compressed[2]):
            w = layer.weight
            w[w.abs() < w.abs().median()] = 0.0
    torch.save(original.state_dict(), d / "orig.pt")
    torch.save(compressed.state_dict(), d / "comp.pt")
    x = torch.rand(12, 10, generator=torch.Generator().manual_seed(2)) * 2 - 1
    np.savez(d / "x.npz", x=x.numpy())
    cc.certify(original, compressed, SHAPE, 1.0, reference_inputs=x,
               search_steps=2).save(d / "cert.json")
    return {"dir": d, "spec": d / "model.py", "orig": d / "orig.pt", "comp": d / "comp.pt",
            "x": d / "x.npz", "cert": d / "cert.json", "onnx": d / "model.onnx"}


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def _run(*argv: str) -> tuple[int, str, str]:
        with export_commands(monkeypatch):
            code = cli.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err
    return _run


def _export(run, f: dict[str, Path], out: Path) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    return run("export", f"{f['spec']}:make", "--weights", f["comp"], "--certificate",
               f["cert"], "--out", out, "--reference-data", f["x"], "--original",
               f"{f['spec']}:make", "--original-weights", f["orig"], "--search-steps", "2")


def test_export_then_verify(run, files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _export(run, files, files["onnx"])
    assert code == 0, err
    assert "verification of" in out and "PASSED" in out and files["onnx"].is_file()
    report = files["dir"] / "report.json"
    code, out, err = run("verify", files["onnx"], "--original", f"{files['spec']}:make",
                         "--original-weights", files["orig"], "--compressed",
                         f"{files['spec']}:make", "--compressed-weights", files["comp"],
                         "--inputs", files["x"], "--report", report, "--search-steps", "2")
    assert code == 0, err
    assert out.count("[PASSED ]") == 7 and "FAILED" not in out and report.is_file()


def test_verify_fails_on_a_changed_weight(run, files: dict[str, Path],  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    if not files["onnx"].exists():
        assert _export(run, files, files["onnx"])[0] == 0
    bad = tmp_path / "bad.onnx"
    model = onnx.load(str(files["onnx"]))
    t = next(t for t in model.graph.initializer if t.name == "0.weight")
    arr = numpy_helper.to_array(t).copy()
    arr[0, 0] += np.float32(0.25)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save_model(model, str(bad))
    code, out, err = run("verify", bad, "--search-steps", "0")
    assert code == 2
    line = one_line_error(err)
    assert "check 'digest' failed: the graph or its initializers changed" in line
    assert "[FAILED ] digest" in out


def _no_certificate(tmp_path: Path, files: dict[str, Path]) -> Path:
    model = onnx.load(str(files["onnx"]))
    kept = [p for p in model.metadata_props if p.key != KEY_CERTIFICATE]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    path = tmp_path / "nocert.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("directory", "is not a file"),
    ("empty", "is empty"),
    ("truncated", "is not an ONNX model"),
    ("text", "is not an ONNX model"),
    ("nocert", "has no embedded certificate"),
])
def test_bad_files_are_one_line_errors(run, files: dict[str, Path], tmp_path: Path,  # type: ignore[no-untyped-def]
                                       case: str, expected: str) -> None:
    if not files["onnx"].exists():
        assert _export(run, files, files["onnx"])[0] == 0
    if case == "missing":
        path = tmp_path / "nope.onnx"
    elif case == "directory":
        path = tmp_path
    elif case == "empty":
        path = tmp_path / "empty.onnx"
        path.write_bytes(b"")
    elif case == "truncated":
        path = tmp_path / "cut.onnx"
        data = files["onnx"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "text":
        path = tmp_path / "notes.onnx"
        path.write_text("this is not a model\n" * 20)
    else:
        path = _no_certificate(tmp_path, files)
    code, out, err = run("verify", path)
    assert code == 2
    line = one_line_error(err)
    assert expected in line and "check '" in line


def test_export_errors_are_one_line_and_leave_nothing(run, files: dict[str, Path],  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    # the certificate is about the compressed model, not about the original
    code, _, err = run("export", f"{files['spec']}:make", "--weights", files["orig"],
                       "--certificate", files["cert"], "--out", out)
    assert code == 2 and "check 'binding' failed" in one_line_error(err)
    code, _, err = run("export", f"{files['spec']}:make", "--weights", files["comp"],
                       "--certificate", tmp_path / "missing.json", "--out", out)
    assert code == 2 and "does not exist" in one_line_error(err)
    code, _, err = run("export", f"{files['spec']}:make", "--weights", files["comp"],
                       "--certificate", files["cert"], "--out", tmp_path / "no" / "m.onnx")
    assert code == 2 and "does not exist" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_quantized_with_its_grid(run, files: dict[str, Path],  # type: ignore[no-untyped-def]
                                        tmp_path: Path) -> None:
    from certcompress.compress.quantization import QuantConfig, quantization_grid

    original = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 3)).eval()
    original.load_state_dict(torch.load(files["orig"], weights_only=True))
    grid = quantization_grid(original, QuantConfig.from_bits({"0": 4, "2": 8}))
    qmodel = grid.apply(original)
    torch.save(qmodel.state_dict(), tmp_path / "q.pt")
    grid.save(tmp_path / "grid.json")
    cc.certify(original, qmodel, SHAPE, 1.0, search_steps=0).save(tmp_path / "qcert.json")
    out = tmp_path / "q.onnx"
    code, printed, err = run("export", f"{files['spec']}:make", "--weights", tmp_path / "q.pt",
                             "--certificate", tmp_path / "qcert.json", "--grid",
                             tmp_path / "grid.json", "--out", out, "--opset", "21",
                             "--search-steps", "0")
    assert code == 0, err
    assert "[PASSED ] quantized-weights  2 dequantized weight tensors" in printed
    types = {t.name: t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert types["0.weight_quantized"] == onnx.TensorProto.INT4
    assert types["2.weight_quantized"] == onnx.TensorProto.INT8


def test_verify_with_a_file_copy(run, files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not files["onnx"].exists():
        assert _export(run, files, files["onnx"])[0] == 0
    path = tmp_path / "copy.onnx"
    shutil.copyfile(files["onnx"], path)
    code, out, err = run("verify", path, "--search-steps", "0")
    assert code == 0, err
    assert "[SKIPPED] bound" in out and "needs the original torch model" in out
