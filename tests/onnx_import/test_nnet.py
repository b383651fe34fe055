"""The NNet (.nnet) reader: round trips through the writer (outputs compared exactly), a
hand-written file in the sisl/NNet layout and in ReluDiff's (no header comments), the
normalization helpers against the published ACAS-Xu property boxes, ``FILE.nnet`` model
specs through ``equiv``/``equiv-batch``, and the refusal of malformed files (file and
line named)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from certcompress import cli
from certcompress.capture.nnet import NNetFile, is_nnet_spec, load_nnet, read_nnet, write_nnet
from certcompress.equivalence import read_vnnlib
from certcompress.errors import ModelLoadError
from certcompress.loading import load_model, load_module

# The normalization of the ACAS-Xu networks (the header of ACASXU_run2a_*.nnet and of
# sisl/NNet's TestNetwork.nnet): raw units ft, rad, rad, ft/s, ft/s.
ACAS_MINS = [0.0, -3.141593, -3.141593, 100.0, 0.0]
ACAS_MAXES = [60760.0, 3.141593, 3.141593, 1200.0, 1200.0]
ACAS_MEANS = [19791.091, 0.0, 0.0, 650.0, 600.0, 7.5188840201]
ACAS_RANGES = [60261.0, 6.28318530718, 6.28318530718, 1100.0, 1200.0, 373.94992]


def _mlp(sizes: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double().eval()


def _half(net: nn.Module) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.half().double())
    return out


@pytest.mark.parametrize("sizes", [[5, 50, 50, 50, 50, 50, 50, 5], [3, 1], [2, 7, 4]])
def test_round_trip_is_exact(tmp_path: Path, sizes: list[int]) -> None:
    net = _mlp(sizes, seed=len(sizes))
    path = write_nnet(tmp_path / "n.nnet", net, input_mins=[-1.0] * sizes[0],
                      input_maxes=[2.0] * sizes[0], means=[0.5] * (sizes[0] + 1),
                      ranges=[3.0] * (sizes[0] + 1))
    loaded = load_nnet(path)
    assert isinstance(loaded, nn.Sequential) and not loaded.training
    assert [type(m) for m in loaded] == [type(m) for m in net]
    for p in loaded.parameters():
        assert p.dtype == torch.float64
    x = torch.randn(200, sizes[0], dtype=torch.float64) * 3
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    f = read_nnet(path)
    assert f.layer_sizes == tuple(sizes) and f.input_size == sizes[0]
    assert f.output_size == sizes[-1]
    assert f.input_mins == (-1.0,) * sizes[0] and f.ranges == (3.0,) * (sizes[0] + 1)
    # NNetFile -> file -> NNetFile keeps every value and the normalization
    again = read_nnet(write_nnet(tmp_path / "again.nnet", f))
    assert all(torch.equal(a, b) for a, b in zip(again.weights, f.weights))
    assert all(torch.equal(a, b) for a, b in zip(again.biases, f.biases))
    assert (again.input_mins, again.input_maxes, again.means, again.ranges) == \
        (f.input_mins, f.input_maxes, f.means, f.ranges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.nnet", "n.nnet"]


# y = relu(x0 - 2 x1 + 0.5), relu(3 x1 - 1); out = y0 - y1 + 0.25 (normalized units)
HAND = """// Neural Network File Format by Kyle Julian, Stanford 2016
// a hand-written test network
2,2,1,2,
2,2,1,
0,
-10.0,-10.0,
10.0,10.0,
1.0,2.0,0.0,
2.0,4.0,1.0,
1.0,-2.0,
0.0,3.0,
0.5,
-1.0,
1.0,-1.0,
0.25,
"""


@pytest.mark.parametrize("variant", ["sisl", "reludiff", "no-trailing-commas", "crlf"])
def test_hand_written_file(tmp_path: Path, variant: str) -> None:
    text = HAND
    if variant == "reludiff":  # ReluDiff's writer emits no header comments
        text = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    elif variant == "no-trailing-commas":
        text = "\n".join(line.rstrip(",") for line in text.splitlines()) + "\n\n"
    elif variant == "crlf":
        text = text.replace("\n", "\r\n")
    path = tmp_path / "hand.nnet"
    path.write_bytes(text.encode())
    f = read_nnet(path)
    assert f.layer_sizes == (2, 2, 1)
    assert f.means == (1.0, 2.0, 0.0) and f.ranges == (2.0, 4.0, 1.0)
    net = load_nnet(path)
    x = torch.tensor([[0.3, -0.2], [-1.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
    y0 = torch.relu(x[:, 0] - 2 * x[:, 1] + 0.5)
    y1 = torch.relu(3 * x[:, 1] - 1)
    with torch.no_grad():
        assert torch.equal(net(x)[:, 0], y0 - y1 + 0.25)
    # raw -> normalized: clip to [min, max], then (x - mean) / range
    raw = torch.tensor([[3.0, -2.0], [50.0, -50.0]], dtype=torch.float64)
    assert f.normalize_input(raw).tolist() == [[1.0, -1.0], [4.5, -3.0]]
    assert f.denormalize_output(torch.tensor([2.0])).tolist() == [2.0]


def test_normalized_acas_boxes_match_the_published_properties(tmp_path: Path) -> None:
    """The raw ACAS-Xu property boxes (Katz et al. 2017, ReluVal's load_inputs) mapped
    by the file's normalization give the normalized boxes of the VNN-LIB files."""
    net = _mlp([5, 4, 5], seed=0)
    f = read_nnet(write_nnet(tmp_path / "acas.nnet", net, input_mins=ACAS_MINS,
                             input_maxes=ACAS_MAXES, means=ACAS_MEANS, ranges=ACAS_RANGES))
    raw = {  # property: (raw low, raw high, published normalized low, high)
        1: ([55947.691, -3.141592, -3.141592, 1145, 0], [60760, 3.141592, 3.141592, 1200, 60],
            [0.6, -0.5, -0.5, 0.45, -0.5], [0.6798577687, 0.5, 0.5, 0.5, -0.45]),
        3: ([1500, -0.06, 3.10, 980, 960], [1800, 0.06, 3.141592, 1200, 1200],
            [-0.3035311561, -0.0095492966, 0.4933803236, 0.3, 0.3],
            [-0.2985528119, 0.0095492966, 0.5, 0.5, 0.5]),
        4: ([1500, -0.06, 0, 1000, 700], [1800, 0.06, 0, 1200, 800],
            [-0.3035311561, -0.0095492966, 0.0, 0.3181818182, 0.0833333333],
            [-0.2985528119, 0.0095492966, 0.0, 0.5, 0.1666666667]),
    }
    for prop, (lo, hi, want_lo, want_hi) in raw.items():
        got_lo, got_hi = f.normalized_box(lo, hi)
        assert got_lo == pytest.approx(want_lo, abs=2e-7), prop
        assert got_hi == pytest.approx(want_hi, abs=2e-7), prop
    with pytest.raises(ValueError, match="empty box"):
        f.normalized_box([1.0] * 5, [0.0] * 5)
    with pytest.raises(ValueError, match="needs 5 lower and upper values"):
        f.normalized_box([0.0] * 4, [1.0] * 4)
    flat = read_nnet(write_nnet(tmp_path / "flat.nnet", net, ranges=[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="non-positive input range"):
        flat.normalized_box([0.0] * 5, [1.0] * 5)


def _pair(tmp_path: Path) -> tuple[str, str, str]:
    net = _mlp([5, 20, 20, 5], seed=3)
    a = write_nnet(tmp_path / "A.nnet", net, means=[0.0] * 6, ranges=[1.0] * 6)
    b = write_nnet(tmp_path / "B.nnet", _half(net), means=[0.0] * 6, ranges=[1.0] * 6)
    lines = [f"(declare-const X_{i} Real)" for i in range(5)] + ["(declare-const Y_0 Real)"]
    box = [(0.6, 0.6798577687), (-0.5, 0.5), (-0.5, 0.5), (0.45, 0.5), (-0.5, -0.45)]
    lines += [f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))"
              for i, (lo, hi) in enumerate(box)]
    spec = tmp_path / "p1.vnnlib"
    spec.write_text("\n".join(lines) + "\n")
    return str(a), str(b), str(spec)


def test_nnet_specs_load_and_run_equiv(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b, spec = _pair(tmp_path)
    assert is_nnet_spec(a) and is_nnet_spec(" X.NNET ") and not is_nnet_spec("m.onnx")
    model = load_model(a)
    assert isinstance(model, nn.Sequential) and not model.training
    with pytest.raises(ModelLoadError, match="carries its own weights"):
        load_model(a, weights=str(tmp_path / "w.pt"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_module(str(tmp_path / "missing.nnet"), needed_by="equiv")
    out = tmp_path / "res.json"
    rc = cli.main(["equiv", a, b, "--vnnlib", spec, "--epsilon", "0.05", "--no-progress",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    data = json.loads(out.read_text())
    assert data["status"] == "verified" and data["found"] <= data["bound"] <= 0.05
    # a tiny epsilon: falsified, with a counterexample in the box that really violates it
    rc = cli.main(["equiv", a, b, "--vnnlib", spec, "--epsilon", "1e-9", "--no-progress",
                   "--out", str(out)])
    assert rc == 3
    data = json.loads(out.read_text())
    x = torch.tensor(data["counterexample"], dtype=torch.float64).reshape(1, 5)
    (dom,) = read_vnnlib(spec).domains()
    assert bool(dom.contains(x).all())
    with torch.no_grad():
        dev = (load_nnet(a)(x) - load_nnet(b)(x)).abs().max()
    assert float(dev) > 1e-9
    # equiv-batch: the same instance, paths relative to the CSV
    inst = tmp_path / "instances.csv"
    inst.write_text("A.nnet,B.nnet,p1.vnnlib\nA.nnet,A.nnet,p1.vnnlib,30\n")
    res = tmp_path / "res.csv"
    assert cli.main(["equiv-batch", str(inst), "--epsilon", "0.05", "--no-progress",
                     "--out", str(res)]) == 0
    rows = res.read_text().splitlines()
    assert len(rows) == 3 and all(",verified," in r for r in rows[1:])
    capsys.readouterr()


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _edit(line: int, new: str | None) -> str:
    """HAND with its line ``line`` (1-based) replaced (deleted when ``new`` is None)."""
    lines = _lines(HAND)
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    return "\n".join(lines) + "\n"


MALFORMED = [
    # (file text, expected line or None, words in the message)
    ("", None, "ends before the header"),
    ("// only a comment\n", None, "truncated"),
    (_edit(3, "2,2,1,"), 3, "expected 4 integers, found 3"),
    (_edit(3, "2,2,x,2,"), 3, "'x' is not an integer"),
    (_edit(3, "2.5,2,1,2,"), 3, "'2.5' is not an integer"),
    (_edit(3, "0,2,1,2,"), 3, "must be positive"),
    (_edit(4, "2,2,"), 4, "expected 3 integers, found 2"),
    (_edit(4, "3,2,1,"), 4, "do not chain"),
    (_edit(4, "2,2,2,"), 4, "do not chain"),
    (_edit(3, "2,2,1,5,"), 4, "do not chain"),
    (_edit(4, "2,-2,1,"), 4, "must be positive"),
    (_edit(3, "2,100000,1,100000,").replace("2,2,1,\n", "100000,100000,1,\n", 1), 4,
     "refused before reading"),
    (_edit(5, "zero,"), 5, "not an integer"),
    # more digits than int() converts (4300): refused by the reader, not a ValueError
    (_edit(3, "2,2,1," + "9" * 5000 + ","), 3, "too large an integer"),
    (_edit(5, "1" * 19 + ","), 5, "too large an integer"),
    (_edit(6, "-10.0,"), 6, "expected 2 numbers, found 1"),
    (_edit(7, "10.0,nan,"), 7, "'nan' is not a number"),
    (_edit(8, "1.0,2.0,"), 8, "expected 3 numbers"),
    (_edit(9, "2.0,4.0,inf,"), 9, "'inf' is not a number"),
    (_edit(10, "1.0,1e400,"), 10, "not finite"),
    (_edit(10, "1.0,1_0,"), 10, "'1_0' is not a number"),
    (_edit(11, "0.0,0x1p3,"), 11, "not a number"),
    (_edit(11, "0.0,__import__('os'),"), 11, "not a number"),
    (_edit(11, "0.0,,"), 11, "'' is not a number"),
    (_edit(11, "0.0,3.0,4.0,"), 11, "layer 1 weight row 2 of 2: expected 2 numbers, found 3"),
    (_edit(12, "0.5,1.0,"), 12, "layer 1 bias 1 of 2: expected 1 numbers, found 2"),
    (_edit(15, None), None, "ends before layer 2 bias 1 of 1"),
    (HAND + "7.0,\n", 16, "data after the last bias"),
    ("\n".join(_lines(HAND)[:10]), None, "ends before layer 1 weight row 2 of 2 (truncated"),
]


@pytest.mark.parametrize("text,line,words", MALFORMED)
def test_malformed_files_are_refused_naming_file_and_line(
        tmp_path: Path, text: str, line: int | None, words: str) -> None:
    path = tmp_path / "bad.nnet"
    path.write_text(text)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    msg = str(info.value)
    assert f"NNet file '{path}'" in msg and words in msg, msg
    if line is not None:
        assert f"line {line}:" in msg, msg
    else:
        assert ", line " not in msg, msg


def test_a_long_field_that_is_no_number_is_refused_in_linear_time(tmp_path: Path) -> None:
    """A hostile file with a run of two million digits that ends in a letter: the number
    pattern must not backtrack over every split of the run (quadratic: hours at this
    size with the former ``[0-9]+\\.?[0-9]*``, which made this test hang)."""
    path = tmp_path / "long.nnet"
    path.write_text(_edit(11, "0.0," + "1" * 2_000_000 + "x,"))
    with pytest.raises(ModelLoadError, match="line 11: layer 1 weight row 2 of 2: '1111"):
        read_nnet(path)
    path.write_text(_edit(11, "0.0,1." + "5" * 2_000_000 + "e-3,"))
    w = read_nnet(path).weights[0]
    assert float(w[1, 1]) == float("1." + "5" * 2_000_000 + "e-3")
    # leading zeros do not count as digits of an integer field
    path.write_text(_edit(3, "2,2,1," + "0" * 30 + "2,"))
    assert read_nnet(path).layer_sizes == (2, 2, 1)


def test_unreadable_files(tmp_path: Path) -> None:
    binary = tmp_path / "bin.nnet"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 10)
    with pytest.raises(ModelLoadError, match="not UTF-8 text"):
        read_nnet(binary)
    folder = tmp_path / "dir.nnet"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match="is not a file"):
        read_nnet(folder)


def test_writer_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Linear, ReLU, Linear"):
        write_nnet(tmp_path / "x.nnet", nn.Sequential(nn.Linear(2, 2), nn.Tanh(),
                                                      nn.Linear(2, 1)))
    with pytest.raises(ValueError, match="Linear, ReLU, Linear"):
        write_nnet(tmp_path / "x.nnet", nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    net = _mlp([2, 3, 1], seed=1)
    with torch.no_grad():
        net[0].weight[0, 0] = math.inf
    with pytest.raises(ValueError, match="non-finite"):
        write_nnet(tmp_path / "x.nnet", net)
    with pytest.raises(ValueError, match="means needs 3 values"):
        write_nnet(tmp_path / "x.nnet", _mlp([2, 3, 1], seed=1), means=[0.0, 0.0])
    assert not list(tmp_path.iterdir())


def test_nnet_file_is_a_value() -> None:
    f = NNetFile("x", (1, 1), (torch.ones(1, 1, dtype=torch.float64),),
                 (torch.zeros(1, dtype=torch.float64),), (0.0,), (1.0,), (0.0, 0.0),
                 (1.0, 1.0))
    with pytest.raises(AttributeError):
        f.path = "y"  # type: ignore[misc]
