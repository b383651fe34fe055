"""VNN-LIB parsing, bad inputs with clear errors, the result file, the CLI and the
executors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _pairs import compress, mlp

import certcompress as cc
from certcompress import cli
from certcompress.domain import InputDomain
from certcompress.equivalence import parse_vnnlib, read_vnnlib
from certcompress.errors import ConfigurationError

VALID = """
; ACAS-like property
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 -0.5))
(assert (and (>= X_1 0.1) (<= X_1 0.2)))
(assert (<= Y_0 Y_1))
"""


def test_vnnlib_valid_box_and_outputs() -> None:
    spec = parse_vnnlib(VALID, "p.vnnlib")
    assert spec.n_inputs == 2 and spec.n_outputs == 2
    assert spec.boxes == (((-0.5, 0.1), (0.5, 0.2)),)
    assert spec.output_constraints == ("(<= Y_0 Y_1)",)
    (dom,) = spec.domains()
    assert dom.shape == (1, 2)
    assert dom.lower_tensor().tolist() == [[-0.5, 0.1]]


def test_vnnlib_disjunction_and_flipped_constants(tmp_path: Path) -> None:
    text = """(declare-const X_0 Real)
    (assert (or (and (<= 0 X_0) (>= 1 X_0)) (and (>= X_0 2) (<= X_0 3))))"""
    p = tmp_path / "d.vnnlib"
    p.write_text(text)
    spec = read_vnnlib(p)
    assert spec.boxes == (((0.0,), (1.0,)), ((2.0,), (3.0,)))


def test_input_domain_from_vnnlib(tmp_path: Path) -> None:
    """``InputDomain.from_vnnlib``: the file's single box, in the model's input shape;
    output assertions ignored; several boxes or a wrong feature count refused by name."""
    p = tmp_path / "p.vnnlib"
    p.write_text(VALID)
    dom = InputDomain.from_vnnlib(p)
    assert dom.shape == (1, 2)
    assert dom.lower_tensor().tolist() == [[-0.5, 0.1]]
    assert dom.upper_tensor().tolist() == [[0.5, 0.2]]
    assert dom == read_vnnlib(p).domains()[0]
    four = cc.InputDomain.from_vnnlib(p, shape=(1, 1, 1, 2))  # e.g. an ONNX model's input
    assert four.shape == (1, 1, 1, 2)
    assert four.lower_tensor().reshape(-1).tolist() == [-0.5, 0.1]
    with pytest.raises(ConfigurationError, match="declares 2 inputs"):
        InputDomain.from_vnnlib(p, shape=(1, 3))
    d = tmp_path / "d.vnnlib"
    d.write_text("(declare-const X_0 Real)\n"
                 "(assert (or (and (<= 0 X_0) (>= 1 X_0)) (and (>= X_0 2) (<= X_0 3))))")
    with pytest.raises(ConfigurationError, match="2 boxes"):
        InputDomain.from_vnnlib(d)
    with pytest.raises(ConfigurationError, match="does not exist"):
        InputDomain.from_vnnlib(tmp_path / "missing.vnnlib")


@pytest.mark.parametrize("text, match", [
    ("", "empty VNN-LIB"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "unclosed"),
    ("(declare-const X_0 Real))", "unbalanced"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 1))", "lack a lower or an upper bound"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 0))\n(assert (>= X_0 1))", "empty box"),
    ("(declare-const X_0 Real)\n(assert (<= X_1 0))\n(assert (>= X_0 1))", "not declared"),
    ("(declare-const X_0 Int)", "malformed declaration"),
    ("(declare-const Z Real)", "neither X_i nor Y_j"),
    # more digits than int() converts (4300): a ConfigurationError, not a ValueError
    ("(declare-const X_" + "1" * 5000 + " Real)", "neither X_i nor Y_j"),
    ("(declare-const X_0 Real)\n(assert (<= X_" + "1" * 5000 + " 1))",
     "unsupported input constraint"),
    ("(declare-const X_1 Real)", "inputs must be X_0"),
    ("(declare-const X_0 Real)\n(assert (<= (* 2 X_0) 1))", "unsupported input constraint"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))", "mixes"),
    ("(declare-const X_0 Real)\n(check-sat)", "unsupported command"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 inf))\n(assert (>= X_0 0))", "non-finite"),
])
def test_vnnlib_malformed(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_vnnlib(text, "bad.vnnlib")


def test_vnnlib_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_vnnlib(tmp_path / "nope.vnnlib")


def test_vnnlib_shape_mismatch() -> None:
    with pytest.raises(ConfigurationError, match="declares 2 inputs"):
        parse_vnnlib(VALID).domains((1, 3))


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    net = mlp(2, 8, 2, 3, 1)
    return net, compress(net, "round")


def test_bad_inputs(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    net, comp = pair
    dom = InputDomain.box(-1, 1, shape=(1, 2))
    with pytest.raises(ConfigurationError, match="epsilon must be a finite number > 0"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.0)
    with pytest.raises(ConfigurationError, match="epsilon must be a finite number > 0"):
        cc.verify_equivalence(net, comp, dom, epsilon=math.nan)
    with pytest.raises(ConfigurationError, match="needs epsilon"):
        cc.verify_equivalence(net, comp, dom, property="epsilon")
    for conf in (0.5, 1.0, 0.2, 1.5):
        with pytest.raises(ConfigurationError, match=r"between 0.5 and 1"):
            cc.verify_equivalence(net, comp, dom, property="top1", confidence=conf)
    with pytest.raises(ConfigurationError, match="domain is required"):
        cc.verify_equivalence(net, comp, None, epsilon=0.1)
    with pytest.raises(ConfigurationError, match="norm must be"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.1, norm="l2")
    with pytest.raises(ConfigurationError, match="property must be"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.1, property="top5")
    with pytest.raises(ConfigurationError, match="timeout"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.1, timeout=0)
    with pytest.raises(ConfigurationError, match="executor"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.1, executor="gpu")
    with pytest.raises(ConfigurationError, match="does not fit the original"):
        cc.verify_equivalence(net, comp, InputDomain.box(-1, 1, shape=(1, 3)), epsilon=0.1)
    other = mlp(2, 8, 2, 4, 1)
    with pytest.raises(ConfigurationError, match="output shapes differ"):
        cc.verify_equivalence(net, other, dom, epsilon=0.1)
    # empty and non-finite domains are refused by InputDomain itself
    with pytest.raises(ConfigurationError, match="exceeds upper"):
        InputDomain.box(1, -1, shape=(1, 2))
    with pytest.raises(ConfigurationError, match="finite"):
        InputDomain.box(-math.inf, 1, shape=(1, 2))


def test_result_json_and_atomic_file(pair: tuple[torch.nn.Module, torch.nn.Module],
                                     tmp_path: Path) -> None:
    net, comp = pair
    dom = InputDomain.box(-1, 1, shape=(1, 2))
    out = tmp_path / "r.json"
    res = cc.verify_equivalence(net, comp, dom, epsilon=1e-6, timeout=5, out=str(out))
    assert res.status == "falsified"
    data = json.loads(out.read_text())
    assert data["status"] == "falsified" and len(data["counterexample"]) == 2
    assert data == json.loads(res.to_json())
    assert not [p for p in tmp_path.iterdir() if p.name != "r.json"]  # no temporary left
    with pytest.raises(ConfigurationError, match="does not exist"):
        res.save(tmp_path / "missing" / "r.json")


NET_PY = """
import torch
from torch import nn

def make():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()

def make_half():
    m = make()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().double())
    return m
"""


def test_cli_equiv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(NET_PY)
    spec = tmp_path / "p.vnnlib"
    spec.write_text(VALID)
    m, mh = f"{tmp_path / 'net.py'}:make", f"{tmp_path / 'net.py'}:make_half"
    out = tmp_path / "res.json"
    rc = cli.main(["equiv", m, mh, "--vnnlib", str(spec), "--epsilon", "0.05",
                   "--timeout", "10", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    assert json.loads(out.read_text())["status"] == "verified"
    rc = cli.main(["equiv", m, mh, "--domain=-1:1", "--input-shape", "1", "2",
                   "--epsilon", "1e-9", "--timeout", "10", "--no-progress"])
    assert rc == 3
    assert "counterexample" in capsys.readouterr().out
    assert cli.main(["equiv", m, mh, "--domain=1:-1", "--input-shape", "1", "2",
                     "--epsilon", "0.1", "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err
