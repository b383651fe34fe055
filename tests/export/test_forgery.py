"""Forgeries of an exported file, by someone who recomputes every digest (``seal``):
changed weights, edited bounds, another network under a copied certificate, deleted or
rewritten metadata. Each is caught by ``recertify`` (recomputation from the original)
and, for a signed file, by the public key; a bare verify says "integrity only". Benign
re-saves (onnx.load then onnx.save) pass every mode."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _onnx_helpers import MLP_SHAPE, certify, export_commands, inputs, mlp, one_line_error, pruned
from onnx import numpy_helper

import certcompress as cc
from certcompress import cli
from certcompress.export import VerificationFailed, export_onnx, verify_onnx
from certcompress.export.metadata import (
    EXPECTED_KEYS,
    KEY_CERTIFICATE,
    KEY_EXPORT,
    KEY_FORMAT,
    merge_props,
    props_of,
    seal,
)
from certcompress.export.verify import NOT_AUTHENTICATED


@dataclass(frozen=True)
class Signed:
    unsigned: Path
    signed: Path
    private: Path
    public: Path
    other_public: Path
    original: torch.nn.Module
    compressed: torch.nn.Module
    other: Path   # another network's export (same architecture)
    x: torch.Tensor
    cert: cc.Certificate


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    d = tmp_path_factory.mktemp("forgery")
    model = mlp(seed=3)
    comp = pruned(model, 0.5)
    x = inputs(MLP_SHAPE, n=16)
    cert = certify(model, comp, MLP_SHAPE, x, steps=0)
    private, public = cc.generate_signing_key(d / "key")
    _, other_public = cc.generate_signing_key(d / "other")
    export_onnx(comp, d / "unsigned.onnx", certificate=cert, original=model, search_steps=0)
    export_onnx(comp, d / "signed.onnx", certificate=cert, original=model, search_steps=0,
                signing_key=private)
    comp2 = pruned(model, 0.3)
    cert2 = certify(model, comp2, MLP_SHAPE, x, steps=0)
    export_onnx(comp2, d / "other.onnx", certificate=cert2, original=model, search_steps=0)
    return Signed(d / "unsigned.onnx", d / "signed.onnx", private, public, other_public,
                  model, comp, d / "other.onnx", x, cert)


def _check(f: Signed, path: Path, *, recertify: bool = False, key: Path | None = None
           ) -> cc.VerificationReport:
    return verify_onnx(path, original=f.original if recertify else None, search_steps=0,
                       recertify=recertify, public_key=key, inputs=f.x)


def test_keys_and_plain_verification(files: Signed) -> None:
    assert stat.S_IMODE(os.stat(files.private).st_mode) == 0o600
    assert b"PRIVATE KEY" in files.private.read_bytes()
    assert b"PUBLIC KEY" in files.public.read_bytes()
    with pytest.raises(cc.ConfigurationError, match="already exists"):
        cc.generate_signing_key(files.private)
    report = _check(files, files.signed, recertify=True, key=files.public)
    assert report.authenticated
    status = {c.name: c.status for c in report.checks}
    assert status["signature"] == status["recertify"] == status["metadata"] == "passed"
    bare = _check(files, files.unsigned)
    assert not bare.authenticated
    sig = {c.name: c for c in bare.checks}["signature"]
    assert sig.status == "skipped" and NOT_AUTHENTICATED in sig.detail
    assert NOT_AUTHENTICATED in bare.summary()
    with pytest.raises(VerificationFailed, match="check 'signature' failed: the file is not "
                                                 "signed"):
        _check(files, files.unsigned, key=files.public)
    with pytest.raises(VerificationFailed, match="signed by another key"):
        _check(files, files.signed, key=files.other_public)
    with pytest.raises(cc.ConfigurationError, match="pass its .pub file"):
        _check(files, files.signed, key=files.private)


# ------------------------------------------------------------------ forgeries
Edit = Callable[[onnx.ModelProto, Signed], None]


def _weights(m: onnx.ModelProto, f: Signed) -> None:
    t = next(t for t in m.graph.initializer if t.name == "2.weight")
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[np.flatnonzero(arr)[0]] *= np.float32(1.01)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _bound(factor: float) -> Edit:
    def edit(m: onnx.ModelProto, f: Signed) -> None:
        data = json.loads(props_of(m)[KEY_CERTIFICATE])
        data["bound"] *= factor
        for tier in data["by_method"].values():
            tier["bound"] *= factor
        merge_props(m, {KEY_CERTIFICATE: json.dumps(data, sort_keys=True)})
    return edit


def _swap_network(m: onnx.ModelProto, f: Signed) -> None:
    other = onnx.load(str(f.other))
    keep = {k: v for k, v in props_of(m).items()}
    m.CopyFrom(other)
    onnx.helper.set_model_props(m, keep)


def _delete(key: str) -> Edit:
    def edit(m: onnx.ModelProto, f: Signed) -> None:
        props = {k: v for k, v in props_of(m).items() if k != key}
        onnx.helper.set_model_props(m, props)
    return edit


def _rewrite(key: str, value: Callable[[str], str]) -> Edit:
    def edit(m: onnx.ModelProto, f: Signed) -> None:
        merge_props(m, {key: value(props_of(m)[key])})
    return edit


def _export_info(change: Callable[[dict], None]) -> Callable[[str], str]:
    def value(text: str) -> str:
        info = json.loads(text)
        change(info)
        return json.dumps(info, sort_keys=True)
    return value


FORGERIES: dict[str, Edit] = {
    "weights-changed": _weights,
    "bound-lowered": _bound(0.5),
    "bound-raised": _bound(3.0),
    "network-swapped": _swap_network,
    **{f"deleted-{k.split('.', 1)[1]}": _delete(k) for k in EXPECTED_KEYS},
    "rewritten-format": _rewrite(KEY_FORMAT, lambda v: "certcompress.onnx/1"),
    "rewritten-export-quantized": _rewrite(KEY_EXPORT, _export_info(
        lambda i: i.__setitem__("quantized", [{"name": "2.weight", "storage": "int8"}]))),
    "deleted-export-quantized": _rewrite(KEY_EXPORT, _export_info(
        lambda i: i.pop("quantized"))),
    "rewritten-export-tolerance": _rewrite(KEY_EXPORT, _export_info(
        lambda i: i.__setitem__("tolerance", {"rtol": 1.0, "atol": 1.0}))),
    "rewritten-exported-digest": _rewrite(KEY_EXPORT, _export_info(
        lambda i: i.__setitem__("exported_digest", "0" * 64))),
    "unknown-key": lambda m, f: merge_props(m, {"certcompress.note": "trust me"}),
    "certificate-field": _rewrite(KEY_CERTIFICATE, lambda v: json.dumps(
        {**json.loads(v), "vacuous": False, "radius": 0.5}, sort_keys=True)),
}
# What recertification alone cannot see (it checks the certificate against the weights,
# not the bookkeeping of the export); the signature and the metadata check catch these.
NOT_RECERTIFY = {"rewritten-export-tolerance"}


def _forge(f: Signed, src: Path, name: str, tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    m = onnx.load(str(src))
    FORGERIES[name](m, f)
    seal(m)  # every digest recomputed (which would restore a deleted digest key...)
    if name.startswith("deleted-") and not name.startswith("deleted-export-"):
        FORGERIES[name](m, f)  # ...so deletions come after
    out = tmp_path / f"{name}.onnx"
    onnx.save_model(m, str(out))
    return out


def _caught(run: Callable[[], object]) -> bool:
    try:
        run()
    except cc.VerificationError:
        return True
    return False


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_is_caught(files: Signed, tmp_path: Path, name: str) -> None:
    signed = _forge(files, files.signed, name, tmp_path)
    assert _caught(lambda: _check(files, signed, key=files.public)), "public key"
    unsigned = _forge(files, files.unsigned, name, tmp_path / "u")
    if name not in NOT_RECERTIFY:
        assert _caught(lambda: _check(files, unsigned, recertify=True)), "recertify"


def test_forged_bound_names_the_recomputation(files: Signed, tmp_path: Path) -> None:
    path = _forge(files, files.unsigned, "bound-lowered", tmp_path)
    _check(files, path)  # digests recomputed: a bare verify cannot tell
    with pytest.raises(VerificationFailed) as info:
        _check(files, path, recertify=True)
    rec = {c.name: c for c in info.value.report.checks}["recertify"]
    assert rec.status == "failed" and "SMALLER than the recomputed" in rec.detail
    raised = _forge(files, files.unsigned, "bound-raised", tmp_path)
    with pytest.raises(VerificationFailed, match="larger than the recomputed"):
        _check(files, raised, recertify=True)


def test_metadata_layout_is_checked_without_a_key(files: Signed, tmp_path: Path) -> None:
    for name, expected in (("deleted-export-quantized", "no 'quantized' list"),
                           ("unknown-key", "unknown metadata key(s) certcompress.note"),
                           ("rewritten-format", "this certcompress reads"),
                           ("deleted-sha256", "expected metadata key(s) certcompress.sha256")):
        with pytest.raises(VerificationFailed, match="check 'metadata' failed: .*"
                                                     + expected.replace("(", r"\(")
                                                     .replace(")", r"\)")):
            _check(files, _forge(files, files.unsigned, name, tmp_path))


def test_benign_resave_passes(files: Signed, tmp_path: Path) -> None:
    for src in (files.signed, files.unsigned):
        out = tmp_path / src.name
        onnx.save(onnx.load(str(src)), str(out))
        key = files.public if src == files.signed else None
        assert _check(files, out, recertify=True, key=key).passed


def test_cli_keygen_sign_verify(files: Signed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "net.py"
    spec.write_text("from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Linear(12, 32), "
                    "nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))\n")
    torch.save(files.original.state_dict(), tmp_path / "orig.pt")
    forged = _forge(files, files.signed, "bound-lowered", tmp_path)
    with export_commands(monkeypatch):
        assert cli.main(["keygen", str(tmp_path / "k")]) == 0
        assert (tmp_path / "k.pub").is_file()
        base = ["verify", "--search-steps", "0", "--original", f"{spec}:make",
                "--original-weights", str(tmp_path / "orig.pt")]
        capsys.readouterr()
        assert cli.main([*base, str(files.signed), "--recertify", "--public-key",
                         str(files.public)]) == 0
        out = capsys.readouterr().out
        assert "[PASSED ] recertify" in out and "[PASSED ] signature" in out
        assert NOT_AUTHENTICATED not in out
        assert cli.main(["verify", "--search-steps", "0", str(forged)]) == 0
        assert NOT_AUTHENTICATED in capsys.readouterr().out
        assert cli.main([*base, str(forged), "--recertify"]) == 2
        assert "check 'recertify' failed" in one_line_error(capsys.readouterr().err)
        assert cli.main(["verify", str(forged), "--public-key", str(files.public)]) == 2
        assert "check 'signature' failed" in one_line_error(capsys.readouterr().err)
        assert cli.main(["verify", str(files.signed), "--recertify"]) == 2
        assert "--recertify needs --original" in one_line_error(capsys.readouterr().err)


def test_recertify_quantized_with_both_tiers(tmp_path: Path) -> None:
    """A quantized MLP certified over a box with both tiers: recertification recomputes
    path-metric and bound propagation from the dequantized weights the runtime uses, and
    a one-step change of one integer code (digests recomputed) is caught."""
    from _onnx_helpers import quantized

    model = mlp(seed=5)
    comp, grid = quantized(model, 6)
    domain = cc.InputDomain.box(0.0, 1.0, shape=MLP_SHAPE)
    cert = cc.certify(model, comp, domain=domain, search_steps=0)
    assert set(cert.by_method) == {"path-metric", "bounds"}
    path = tmp_path / "q.onnx"
    export_onnx(comp, path, certificate=cert, original=model, grids=grid, search_steps=0)
    report = verify_onnx(path, original=model, recertify=True, search_steps=0)
    rec = {c.name: c for c in report.checks}["recertify"]
    assert rec.status == "passed" and "bounds, path-metric" in rec.detail
    m = onnx.load(str(path))
    t = next(t for t in m.graph.initializer if t.name.endswith("_quantized"))
    codes = numpy_helper.to_array(t).copy()
    i = int(np.argmax(np.abs(codes.reshape(-1))))
    codes.reshape(-1)[i] -= np.sign(codes.reshape(-1)[i]).astype(codes.dtype)
    t.CopyFrom(numpy_helper.from_array(codes, t.name))
    seal(m)
    onnx.save_model(m, str(path))
    verify_onnx(path, search_steps=0)  # every digest recomputed: integrity holds
    with pytest.raises(VerificationFailed, match="check 'recertify' failed: .*not the "
                                                 "certified weights"):
        verify_onnx(path, original=model, recertify=True, search_steps=0)
