"""Reports (tables, the side-by-side comparison with onnxruntime's int8 weights, the
bound-vs-bits curve, CSV and PNG files) and the ``certcompress quantize`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.cli.quantize import register
from certcompress.compress.quantization import (
    QuantConfig,
    QuantGrid,
    bits_table,
    bound_vs_bits,
    choose_bitwidths,
    compare_with_ort,
    quantize,
    write_report,
)
from certcompress.compress.quantization.report import ORT_LABEL
from certcompress.errors import ConfigurationError

SHAPE = (1, 6)

MODEL_PY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8),
                         nn.ReLU(), nn.Linear(8, 3))
'''


def _model() -> nn.Module:
    ns: dict = {}
    exec(MODEL_PY, ns)  # the same factory the command line loads
    m = ns["make"]()
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_comparison_and_curve() -> None:
    model = _model()
    x = torch.rand(40, 6) * 2 - 1
    al = choose_bitwidths(model, avg_bits=4.0, input_shape=SHAPE, input_radius=1.0)
    table = bits_table(model, al.config, al.sensitivity)
    assert list(table.index) == ["0", "3", "5"]
    assert (table["bits"] == [al.bits[n] for n in table.index]).all()
    assert table.loc["0", "bound_alone"] == al.sensitivity.bound("0", al.bits["0"])
    comp = compare_with_ort(model, al, SHAPE, 1.0, x, search_steps=5)
    ort = comp.loc[ORT_LABEL]
    _, cert8 = quantize(model, QuantConfig.uniform(model, 8), SHAPE, 1.0, search_steps=0)
    assert ort["certified_bound"] == cert8.bound and ort["average_bits"] == 8.0
    assert comp.loc["chosen allocation", "certified_bound"] == pytest.approx(al.bound)
    for _, row in comp.iterrows():  # measured never above certified
        assert row["deviation_max"] <= row["certified_bound"]
        assert row["adversarial_max"] <= row["certified_bound"]
    curve = bound_vs_bits(model, [2.5, 4.0], candidates=[2, 4, 8], input_shape=SHAPE,
                          input_radius=1.0)
    uni = curve[curve["kind"] == "uniform"].sort_values("average_bits")["certified_bound"]
    assert uni.is_monotonic_decreasing
    alloc = curve[curve["kind"] == "allocated"]
    assert (alloc["average_bits"] <= alloc["budget_bits"]).all()


def test_write_report_files(tmp_path: Path) -> None:
    model = _model()
    al = choose_bitwidths(model, avg_bits=3.0, candidates=[2, 4, 8], input_shape=SHAPE,
                          input_radius=1.0)
    curve = bound_vs_bits(model, [3.0], candidates=[2, 4], input_shape=SHAPE, input_radius=1.0)
    comp = compare_with_ort(model, al, SHAPE, 1.0, search_steps=0)
    files = write_report(tmp_path, model, al, comparison=comp, curve=curve)
    assert set(files) == {"bits", "sensitivity", "bits_png", "comparison", "curve", "curve_png"}
    for key in ("bits_png", "curve_png"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bound@8bit" in files["sensitivity"].read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporary file


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="certcompress")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("goal", [["--bits", "6"], ["--budget", "BUDGET"], ["--avg-bits", "3.5"]])
def test_quantize_command(tmp_path: Path, goal: list[str], capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "model.py"
    spec.write_text(MODEL_PY)
    model = _model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", (torch.rand(30, 6) * 2 - 1).numpy())
    if goal[1] == "BUDGET":
        _, c6 = quantize(model, QuantConfig.uniform(model, 6), SHAPE, 1.0, search_steps=0)
        goal = ["--budget", repr(c6.bound)]
    out = tmp_path / "out"
    rc = _run(["quantize", f"{spec}:make", "--weights", str(tmp_path / "w.pt"),
               "--input-shape", "1", "6", "--radius", "1", "--reference-data",
               str(tmp_path / "x.npy"), "--search-steps", "3", "--out", str(out), *goal])
    assert rc == 0
    text = capsys.readouterr().out
    assert "bits" in text and "packed size at these widths:" in text and "certified bound:" in text
    on_disk = (out / "quantized_state_dict.pt").stat().st_size
    assert f"quantized_state_dict.pt ({on_disk:,} bytes)" in text  # sizes as the files are
    assert "measured deviation on 30 reference inputs" in text
    cert = cc.Certificate.load(out / "certificate.json")
    state = torch.load(out / "quantized_state_dict.pt", weights_only=True)
    qmodel = _model()
    qmodel.load_state_dict(state)
    assert cert.compressed_digest == cc.parameter_digest(qmodel)
    grid = QuantGrid.load(out / "quant_grid.json", state)  # codes recovered bit for bit
    cfg = QuantConfig.load(out / "quant_config.json", model)
    assert grid.config == cfg
    assert cc.certify(model, qmodel, SHAPE, 1.0, search_steps=0).bound == pytest.approx(
        cert.bound, rel=1e-12)
    if goal[0] == "--bits":
        assert set(cfg.bits.values()) == {6}
    if goal[0] == "--budget":
        assert cert.bound <= float(goal[1])
    if goal[0] == "--avg-bits":
        assert cfg.average_bits(model) <= 3.5
    assert json.loads((out / "quant_grid.json").read_text())["schema"].startswith("certcompress")


def test_quantize_command_errors(tmp_path: Path) -> None:
    spec = tmp_path / "model.py"
    spec.write_text(MODEL_PY)
    base = ["quantize", f"{spec}:make", "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigurationError, match="--input-shape is required"):
        _run([*base, "--bits", "8"])
    with pytest.raises(ConfigurationError, match="--radius is required"):
        _run([*base, "--bits", "8", "--input-shape", "1", "6"])
    with pytest.raises(ConfigurationError, match="bits"):
        _run([*base, "--bits", "9", "--input-shape", "1", "6", "--radius", "1"])
    with pytest.raises(ConfigurationError, match="budget must be a finite number > 0"):
        _run([*base, "--budget", "0", "--input-shape", "1", "6", "--radius", "1"])
    with pytest.raises(SystemExit):  # argparse: exactly one goal
        _run([*base, "--bits", "8", "--avg-bits", "4"])
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_demo_section_prints_the_allocation_and_writes_the_report(tmp_path: Path) -> None:
    from certcompress.demo.digits import DigitsCNN, DigitsData
    from certcompress.demo.quantization import demo_section

    torch.manual_seed(0)
    model = DigitsCNN(channels=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((40, 1, 8, 8), generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    data = DigitsData(x[:20], y[:20], x[20:], y[20:])
    lines: list[str] = []
    al = demo_section(model, data, out_dir=tmp_path / "q", search_steps=2,
                      print_fn=lines.append)
    text = "\n".join(lines)
    assert "geometric mean" in text and "certified bound" in text and "test accuracy" in text
    assert "onnxruntime default int8" in text
    budget = float(text.split("budget: ")[1].split(" ")[0])
    assert al.bound <= budget * (1 + 1e-3) and al.locally_minimal  # printed to 4 digits
    assert al.certificate.compressed_digest == cc.parameter_digest(al.model)
    assert {p.name for p in (tmp_path / "q").iterdir()} >= {
        "bits.csv", "sensitivity.csv", "bits_per_layer.png", "comparison.csv"}
