"""The report (sizes, onnxruntime latencies at batch 1 and 64 as ratios measured in one
run, the certificate) and the README job's closing section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _onnx_helpers import certify, inputs, pruned, quantized

from certcompress.demo.digits import DigitsCNN
from certcompress.demo.export import demo_section
from certcompress.export import build_report, to_onnx

SHAPE = (1, 1, 8, 8)


def test_demo_section_exports_verifies_and_reports(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    comp, grid = quantized(pruned(model, 0.3), 4)
    x = inputs(SHAPE, n=16)
    cert = certify(model, comp, SHAPE, x, steps=2)
    report = demo_section(model, comp, cert, x, tmp_path / "out", grids=grid, rounds=2)
    out = capsys.readouterr().out
    assert "verification of" in out and "PASSED" in out and "ONNX report" in out
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["model.onnx", "onnx_report.json", "original.onnx"]
    data = json.loads((tmp_path / "out" / "onnx_report.json").read_text())
    assert data["baseline"] == "original" and data["batches"] == [1, 64]
    labels = [m["label"] for m in data["models"]]
    assert labels == ["original", "compressed"]
    orig, small = data["models"]
    assert orig["size_ratio"] == 1.0 and orig["latency_ratio"] == {"1": 1.0, "64": 1.0}
    # 4-bit codes: the ~5k weights take an eighth of their float32 bytes (biases,
    # BatchNorm, scales, the graph and the certificate stay)
    assert small["size_ratio"] < 0.75
    assert small["file_bytes"] == (tmp_path / "out" / "model.onnx").stat().st_size
    for b in ("1", "64"):
        assert len(small["latency_samples_ms"][b]) == 2
        assert small["latency_ratio"][b] == pytest.approx(
            small["latency_ms"][b] / orig["latency_ms"][b])
    assert data["certificate"]["bound"] == cert.bound
    assert data["verification"]["passed"] is True
    assert report.size_ratio("compressed") == small["size_ratio"]


def test_build_report_rejects_bad_arguments(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    import onnx

    onnx.save_model(to_onnx(DigitsCNN().eval(), SHAPE), str(path))
    report = build_report({"a": path, "b": path}, batches=(3,), rounds=1)
    assert report.input_shape == SHAPE and report.size_ratio("b") == 1.0
    assert "ONNX report" in report.summary()
    from certcompress.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least one model"):
        build_report({})
    with pytest.raises(ConfigurationError, match=">= 1"):
        build_report({"a": path}, rounds=0)
