"""``certcompress equiv`` through the real command table: ONNX files exported from
small MLPs, a VNN-LIB spec, the shared option groups, the search flags, the JSON result
(written atomically), the certificate of a verified result and the usage errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress import cli
from certcompress.domain import InputDomain
from certcompress.equivalence import read_vnnlib
from certcompress.loading import load_module

N_IN, N_OUT = 5, 3


def _export(net: nn.Module, path: Path) -> str:
    torch.onnx.export(net, (torch.zeros(1, N_IN),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=17)
    return str(path)


def _spec(path: Path, boxes: list[tuple[list[float], list[float]]]) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(N_IN)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(N_OUT)]
    conj = [" ".join(f"(>= X_{i} {lo[i]}) (<= X_{i} {hi[i]})" for i in range(N_IN))
            for lo, hi in boxes]
    if len(conj) == 1:
        lines.append(f"(assert (and {conj[0]}))")
    else:
        lines.append("(assert (or " + " ".join(f"(and {c})" for c in conj) + "))")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("equiv_cli")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_IN, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, N_OUT)).eval()
    half = copy.deepcopy(net)
    with torch.no_grad():
        for p in half.parameters():
            p.copy_(p.half().float())
    lo = [-0.5 + 0.1 * i for i in range(N_IN)]
    hi = [0.5] * N_IN
    return {"A": _export(net, d / "A.onnx"), "B": _export(half, d / "B.onnx"),
            "spec": _spec(d / "spec.vnnlib", [(lo, hi)]),
            "two": _spec(d / "two.vnnlib", [(lo, hi), ([-1.0] * N_IN, [-0.9] * N_IN)])}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["equiv", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_onnx_vnnlib_local_executor(files: dict[str, str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    rc, stdout, err = _run([files["A"], files["B"], "--vnnlib", files["spec"], "--epsilon",
                            "0.05", "--norm", "inf", "--timeout", "60", "--executor",
                            "local", "--workers", "2", "--out", str(out)], capsys)
    assert rc == 0, (stdout, err)
    assert "% proven" in err  # the progress bar
    data = json.loads(out.read_text())
    assert data["status"] == "verified" and data["norm"] == "inf"
    assert data["details"]["executor"] == "local" and data["details"]["workers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]  # no temp leftovers
    # the same answer as the API on the same models and box (serial)
    a, b = load_module(files["A"], needed_by="test"), load_module(files["B"], needed_by="test")
    (dom,) = read_vnnlib(files["spec"]).domains()
    api = cc.verify_equivalence(a, b, domain=dom, epsilon=0.05, norm="inf", timeout=60)
    assert api.status == data["status"] and api.regions == data["regions"]
    assert api.bound == pytest.approx(data["bound"], rel=1e-12)


def test_falsified_writes_a_float64_counterexample(files: dict[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    rc, stdout, _ = _run([files["A"], files["B"], "--vnnlib", files["spec"], "--epsilon",
                          "1e-7", "--timeout", "30", "--no-progress", "--out", str(out)],
                         capsys)
    assert rc == 3 and "counterexample" in stdout
    data = json.loads(out.read_text())
    x = torch.tensor(data["counterexample"], dtype=torch.float64).reshape(1, N_IN)
    (dom,) = read_vnnlib(files["spec"]).domains()
    assert bool(dom.contains(x).all())
    a, b = load_module(files["A"], needed_by="test"), load_module(files["B"], needed_by="test")
    with torch.no_grad():
        dev = (a.double()(x) - b.double()(x)).abs().max()
    assert float(dev) > 1e-7


def test_search_flags_reach_the_search(files: dict[str, str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    flags = ["--optimize-steps", "2", "--split-candidates", "2", "--intermediate", "both",
             "--batch", "8", "--chunk", "4", "--seed", "3", "--max-regions", "400"]
    rc, stdout, err = _run([files["A"], files["B"], "--domain=-2:2", "--input-shape", "1",
                            str(N_IN), "--epsilon", "0.002", "--norm", "l1", "--timeout",
                            "120", "--no-progress", "--out", str(out), *flags], capsys)
    assert rc in (0, 4), (stdout, err)
    data = json.loads(out.read_text())
    assert "2 slope-optimization steps" in data["details"]["method"]
    assert "both intermediate" in data["details"]["method"]
    a, b = load_module(files["A"], needed_by="test"), load_module(files["B"], needed_by="test")
    dom = InputDomain.box(-2.0, 2.0, shape=(1, N_IN))
    api = cc.verify_equivalence(a, b, domain=dom, epsilon=0.002, norm="l1", timeout=120,
                                optimize_steps=2, split_candidates=2, intermediate="both",
                                batch=8, chunk=4, seed=3, max_regions=400)
    assert (api.status, api.regions) == (data["status"], data["regions"])


def test_certificate_of_a_verified_result(files: dict[str, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cert_path = tmp_path / "cert.json"
    rc, stdout, err = _run([files["A"], files["B"], "--radius", "0.5", "--input-shape", "1",
                            str(N_IN), "--epsilon", "0.05", "--no-progress",
                            "--certificate", str(cert_path)], capsys)
    assert rc == 0, (stdout, err)
    cert = cc.Certificate.load(cert_path)
    assert "bab" in cert.by_method and cert.by_method["bab"].details["norm"] == "inf"
    assert cert.input_domain is not None and cert.input_domain.radius == 0.5
    b = load_module(files["B"], needed_by="test")
    assert cert.compressed_digest == cc.parameter_digest(b)


@pytest.mark.parametrize("extra,match", [
    ([], "exactly one of --domain"),
    (["--domain=-1:1", "--vnnlib", "SPEC"], "exactly one of --domain"),
    (["--domain=1:-1"], "empty"),
    (["--domain=-1:1", "--workers", "0"], "--workers"),
    (["--vnnlib", "TWO", "--certificate", "CERT"], "one box"),
    (["--domain=-1:1", "--out", "MISSING/res.json"], "MISSING"),
    (["--domain=-1:1", "--epsilon", "-1"], "epsilon"),
])
def test_usage_errors(files: dict[str, str], tmp_path: Path, extra: list[str], match: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    sub = {"SPEC": files["spec"], "TWO": files["two"], "CERT": str(tmp_path / "c.json"),
           "MISSING/res.json": str(tmp_path / "missing" / "res.json")}
    args = [files["A"], files["B"], "--input-shape", "1", str(N_IN), "--no-progress"]
    if "--epsilon" not in extra:
        args += ["--epsilon", "0.05"]
    rc, _, err = _run(args + [sub.get(a, a) for a in extra], capsys)
    assert rc == 2
    assert match.lower() in err.lower(), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_shows_the_shared_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["equiv", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--plugin", "--weights", "--compressed-weights", "--input-shape", "--radius",
                 "--domain", "--vnnlib", "--executor", "--workers", "--out", "--certificate",
                 "--optimize-steps", "--split-candidates", "--intermediate", "--max-regions"):
        assert flag in text, flag


def test_equiv_batch_runs_every_instance_in_one_process(
        files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``equiv-batch``: lines ORIGINAL,COMPRESSED,SPEC[,TIMEOUT] relative to the CSV's
    folder, one result row per instance (written atomically), the combined exit status;
    malformed lines named before any work."""
    folder = Path(files["A"]).parent
    out = tmp_path / "res.csv"
    # absolute paths work from anywhere; a missing spec is named before any work
    inst = tmp_path / "instances.csv"
    inst.write_text(f"# a comment\n{files['A']},{files['B']},{files['spec']}\n\n"
                    f"{files['A']},{files['A']},missing.vnnlib,30\n")
    assert cli.main(["equiv-batch", str(inst), "--epsilon", "0.05", "--no-progress",
                     "--out", str(out)]) == 2
    assert "line 4" in capsys.readouterr().err and not out.exists()
    # relative paths are taken from the CSV's own folder
    inst2 = folder / "instances.csv"
    inst2.write_text("A.onnx,B.onnx,spec.vnnlib\nA.onnx,A.onnx,two.vnnlib,30\n")
    rc = cli.main(["equiv-batch", str(inst2), "--epsilon", "0.05", "--no-progress",
                   "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap
    rows = out.read_text().splitlines()
    assert rows[0] == "original,compressed,vnnlib,status,bound,found,regions,seconds"
    assert len(rows) == 3 and all(",verified," in r for r in rows[1:])
    first = rows[1].split(",")
    assert float(first[5]) <= float(first[4]) <= 0.05  # found <= bound <= epsilon
    same = rows[2].split(",")  # a model against itself: deviation 0, bound its float slack
    assert float(same[5]) == 0.0 and 0.0 <= float(same[4]) <= 1e-8
    assert "2 instances" in cap.out and "2 verified" in cap.out
    # the same as equiv on the first instance
    single = cli.main(["equiv", files["A"], files["B"], "--vnnlib", files["spec"],
                       "--epsilon", "0.05", "--no-progress"])
    capsys.readouterr()
    assert single == 0
    # malformed lines: every one named, nothing written
    bad = tmp_path / "bad.csv"
    bad.write_text("A.onnx,B.onnx\nA.onnx,B.onnx,spec.vnnlib,-3\n")
    out2 = tmp_path / "never.csv"
    assert cli.main(["equiv-batch", str(bad), "--epsilon", "0.05", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "line 2" in err and "TIMEOUT" in err
    assert not out2.exists()
