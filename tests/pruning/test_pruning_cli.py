"""The pruning commands through the real ``certcompress`` entry point: outputs written,
and a non-zero exit with a message naming the problem for bad plan files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import certcompress as cc
from certcompress import cli
from certcompress.compress.pruning import PruningPlan

MODULE = "certcompress.cli.prune"
MODEL_PY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 5))
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()
'''
SHAPE = ["--input-shape", "1", "1", "4", "4", "--radius", "1"]


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    opt = cli._OPTIONAL_COMMANDS
    if isinstance(opt, dict) and argv[0] not in opt:
        monkeypatch.setitem(opt, argv[0], MODULE)
    return cli.main(argv)


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "model.py").write_text(MODEL_PY)
    monkeypatch.chdir(tmp_path)
    return "model.py:make"


def _model(path: str = "model.py"):
    from certcompress.loading import load_model

    return load_model(f"{path}:make")


def test_prune_sparsity_writes_state_dict_certificate_and_plan(spec, monkeypatch, capsys):
    code = run(["prune", spec, *SHAPE, "--sparsity", "0.5", "--criterion", "path-magnitude",
                "--out", "pruned.pt", "--certificate", "cert.json", "--plan-out", "plan.yaml",
                "--sensitivity", "--search-steps", "3"], monkeypatch)
    assert code == 0
    out = capsys.readouterr().out
    assert "certified bound" in out and "per-layer sensitivity" in out
    state = torch.load("pruned.pt", weights_only=True)
    assert int((state["4.weight"] == 0).sum()) + int((state["0.weight"] == 0).sum()) == 178
    cert = cc.Certificate.load("cert.json")
    model = _model()
    pruned = _model()
    pruned.load_state_dict(state)
    again = cc.certify(model, pruned, (1, 1, 4, 4), 1.0, search_steps=0)
    assert again.bound == cert.bound
    plan = PruningPlan.load("plan.yaml")
    assert plan.sparsity == 0.5 and plan.criterion == "path-magnitude"


def test_prune_budget(spec, monkeypatch, capsys):
    code = run(["prune", spec, *SHAPE, "--budget", "5", "--criterion", "magnitude",
                "--exclude", "0", "--search-steps", "0", "--out", "p.pt"], monkeypatch)
    assert code == 0
    out = capsys.readouterr().out
    assert "budget search" in out and "> budget" in out
    cert = cc.Certificate.load("certificate.json")
    assert 0 < cert.bound <= 5
    state = torch.load("p.pt", weights_only=True)
    assert torch.equal(state["0.weight"], _model().state_dict()["0.weight"])


def test_certify_plan_json_and_yaml(spec, monkeypatch, capsys):
    Path("plan.json").write_text(json.dumps({
        "scope": "per-layer", "criterion": "magnitude",
        "layers": {"0": {"ratio": 0.5}, "4": {"ratio": 0.2, "criterion": "path-magnitude"}},
        "input_shape": [1, 1, 4, 4]}))
    Path("plan.yaml").write_text("scope: global\ncriterion: random\nsparsity: 0.3\nseed: 2\n")
    for name in ("plan.json", "plan.yaml"):
        code = run(["certify-plan", spec, name, *SHAPE, "--search-steps", "2",
                    "--certificate", f"{name}.cert.json", "--out", f"{name}.pt"], monkeypatch)
        assert code == 0
        assert cc.Certificate.load(f"{name}.cert.json").bound > 0
    assert "sensitivity" in capsys.readouterr().out


@pytest.mark.parametrize(("plan", "message"), [
    ({"criterion": "magnitude", "sparsity": 0.5}, "'scope' is missing"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratio": 0.5}}},
     "no prunable layer named 'fc'"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"0": {"ratio": 1.2}}},
     r"layers['0'].ratio must be in [0, 1]"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": "half"},
     "sparsity must be a number"),
])
def test_bad_plan_exits_non_zero_naming_the_field(spec, monkeypatch, capsys, plan, message):
    Path("bad.json").write_text(json.dumps(plan))
    code = run(["certify-plan", spec, "bad.json", *SHAPE, "--certificate", "c.json"],
               monkeypatch)
    assert code == 2
    err = capsys.readouterr().err
    assert "certcompress: error:" in err and message in err and "bad.json" in err
    assert not Path("c.json").exists()


def test_prune_rejects_out_of_range_sparsity(spec, monkeypatch, capsys):
    code = run(["prune", spec, *SHAPE, "--sparsity", "1.5"], monkeypatch)
    assert code == 2
    assert "outside [0, 1]" in capsys.readouterr().err


def test_prune_report_writes_csv_and_png(spec, monkeypatch, capsys):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 4, 4, generator=gen).numpy()
    np.savez("data.npz", x=x, y=np.arange(20) % 5)
    code = run(["prune-report", spec, *SHAPE, "--data", "data.npz", "--sparsities", "0.2",
                "0.8", "--criteria", "magnitude", "path-magnitude", "--search-steps", "2",
                "--csv", "r.csv", "--png", "r.png", "--no-progress"], monkeypatch)
    assert code == 0
    import pandas as pd

    df = pd.read_csv("r.csv")
    assert len(df) == 4 and df["accuracy"].notna().all()
    assert (df["deviation_max"] <= df["certified_bound"]).all()
    assert Path("r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
