"""Tamper benchmark (issue 13): forgeries of exported certcompress ONNX files, and how
many each verification mode detects.

Two exported models (a magnitude-pruned MLP certified with the path-metric tier over
``||x||_inf <= 1``, and a 6-bit quantized MLP certified with both tiers over the box
``[0, 1]^12``), each exported unsigned and signed. Forgeries, most with every digest
recomputed afterwards (what anyone editing the file can do): a weight changed by 1 %
(with and without recomputed digests), the bound lowered to half, raised to 100, edited
without recomputing, another network swapped in under the copied certificate, each
expected metadata entry deleted, the format rewritten, the ``quantized`` list deleted,
the export tolerance rewritten, an unknown ``certcompress.*`` key added.

Modes: ``bare`` (``verify FILE``), ``original`` (``--original``: bound check on inputs
and a 5-step search), ``recertify`` (``--original --recertify``), ``public-key``
(the signed file, ``--public-key``). Run: ``.venv/bin/python benchmarks/bench_tamper.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from _common import write_results  # type: ignore[import-not-found]
from onnx import numpy_helper
from torch import nn

import certcompress as cc
from certcompress.compress.quantization.config import QuantConfig
from certcompress.compress.quantization.grid import quantization_grid
from certcompress.demo.digits import magnitude_prune_copy
from certcompress.export import export_onnx, verify_onnx
from certcompress.export.metadata import (
    EXPECTED_KEYS,
    KEY_CERTIFICATE,
    KEY_EXPORT,
    KEY_FORMAT,
    merge_props,
    props_of,
    seal,
)

SHAPE = (1, 12)
Edit = Callable[[onnx.ModelProto], None]


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 4)).eval()


def _weights(m: onnx.ModelProto) -> None:
    t = max((t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
            key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[np.flatnonzero(arr)[0]] *= np.float32(1.01)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _cert_edit(change: Callable[[dict], None]) -> Edit:
    def edit(m: onnx.ModelProto) -> None:
        data = json.loads(props_of(m)[KEY_CERTIFICATE])
        change(data)
        merge_props(m, {KEY_CERTIFICATE: json.dumps(data, sort_keys=True)})
    return edit


def _scale_bound(factor: float | None, value: float | None = None) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        for target in (d, *d["by_method"].values()):
            target["bound"] = value if value is not None else target["bound"] * factor
    return change


def _delete(key: str) -> Edit:
    def edit(m: onnx.ModelProto) -> None:
        onnx.helper.set_model_props(m, {k: v for k, v in props_of(m).items() if k != key})
    return edit


def _export_info(change: Callable[[dict], None]) -> Edit:
    def edit(m: onnx.ModelProto) -> None:
        info = json.loads(props_of(m)[KEY_EXPORT])
        change(info)
        merge_props(m, {KEY_EXPORT: json.dumps(info, sort_keys=True)})
    return edit


def forgeries(other: Path) -> dict[str, tuple[Edit, str]]:
    """name -> (edit, when the digests are recomputed: 'before' the edit is never
    sealed, 'after' sealed, 'delete' sealed then deleted)."""
    def swap(m: onnx.ModelProto) -> None:
        keep = props_of(m)
        m.CopyFrom(onnx.load(str(other)))
        onnx.helper.set_model_props(m, keep)

    out: dict[str, tuple[Edit, str]] = {
        "weight +1%, digests kept": (_weights, "before"),
        "weight +1%, digests recomputed": (_weights, "after"),
        "bound x0.5, digests kept": (_cert_edit(_scale_bound(0.5)), "before"),
        "bound x0.5, digests recomputed": (_cert_edit(_scale_bound(0.5)), "after"),
        "bound -> 100, digests recomputed": (_cert_edit(_scale_bound(None, 100.0)), "after"),
        "other network, copied certificate": (swap, "after"),
        "format rewritten": (lambda m: merge_props(m, {KEY_FORMAT: "certcompress.onnx/1"}),
                             "after"),
        "quantized list deleted": (_export_info(lambda i: i.pop("quantized")), "after"),
        "exported digest rewritten": (_export_info(lambda i: i.__setitem__(
            "exported_digest", "0" * 64)), "after"),
        "export tolerance rewritten": (_export_info(lambda i: i.__setitem__(
            "tolerance", {"rtol": 1.0, "atol": 1.0})), "after"),
        "unknown certcompress key": (lambda m: merge_props(m, {"certcompress.note": "ok"}),
                                     "after"),
    }
    for key in EXPECTED_KEYS:
        out[f"{key} deleted"] = (_delete(key), "delete")
    return out


def forge(src: Path, dst: Path, edit: Edit, when: str) -> Path:
    m = onnx.load(str(src))
    edit(m)
    if when != "before":
        seal(m)
    if when == "delete":
        edit(m)
    onnx.save_model(m, str(dst))
    return dst


def detected(run: Callable[[], object]) -> bool:
    try:
        run()
    except cc.VerificationError:
        return True
    return False


def setups(d: Path) -> list[dict]:
    key, pub = cc.generate_signing_key(d / "key")
    out = []
    model = _mlp(3)
    x = (torch.rand((16,) + SHAPE[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1)
    pruned = magnitude_prune_copy(model, 0.5, kinds=(nn.Linear,))
    cert = cc.certify(model, pruned, SHAPE, 1.0, reference_inputs=x, search_steps=0)
    other = magnitude_prune_copy(model, 0.3, kinds=(nn.Linear,))
    cert_o = cc.certify(model, other, SHAPE, 1.0, search_steps=0)
    export_onnx(other, d / "pruned_other.onnx", certificate=cert_o, search_steps=0)
    for signed in (False, True):
        export_onnx(pruned, d / f"pruned_{signed}.onnx", certificate=cert, original=model,
                    search_steps=0, signing_key=key if signed else None)
    out.append({"name": "pruned MLP (path-metric)", "original": model, "x": x,
                "other": d / "pruned_other.onnx"})
    model_q = _mlp(5)
    dom = cc.InputDomain.box(0.0, 1.0, shape=SHAPE)
    grid = quantization_grid(model_q, QuantConfig.uniform(model_q, 6))
    comp = grid.apply(model_q)
    cert_q = cc.certify(model_q, comp, domain=dom, search_steps=0)
    grid_o = quantization_grid(model_q, QuantConfig.uniform(model_q, 4))
    comp_o = grid_o.apply(model_q)
    cert_qo = cc.certify(model_q, comp_o, domain=dom, search_steps=0)
    export_onnx(comp_o, d / "quant_other.onnx", certificate=cert_qo, grids=grid_o,
                search_steps=0)
    for signed in (False, True):
        export_onnx(comp, d / f"quant_{signed}.onnx", certificate=cert_q, original=model_q,
                    grids=grid, search_steps=0, signing_key=key if signed else None)
    out.append({"name": "6-bit MLP (path-metric + bounds)", "original": model_q,
                "x": dom.sample(16, torch.Generator().manual_seed(1)),
                "other": d / "quant_other.onnx"})
    for s, stem in zip(out, ("pruned", "quant")):
        s.update(unsigned=d / f"{stem}_False.onnx", signed=d / f"{stem}_True.onnx", pub=pub)
    return out


def _modes(orig: nn.Module, x: torch.Tensor, pub: Path, steps: int
           ) -> dict[str, Callable[[Path, Path], object]]:
    """mode -> verify(unsigned file, signed file)."""
    return {
        "bare": lambda u, _s: verify_onnx(u, search_steps=0),
        "original": lambda u, _s: verify_onnx(u, original=orig, inputs=x, search_steps=steps),
        "recertify": lambda u, _s: verify_onnx(u, original=orig, inputs=x, search_steps=steps,
                                               recertify=True),
        "public-key": lambda _u, sg: verify_onnx(sg, search_steps=0, public_key=pub),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--search-steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    modes = ("bare", "original", "recertify", "public-key")
    counts = dict.fromkeys(modes, 0)
    rows = []
    benign = dict.fromkeys(modes, 0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for s in setups(d):
            runs = _modes(s["original"], s["x"], s["pub"], args.search_steps)
            resaved_u, resaved_s = d / "resaved_u.onnx", d / "resaved_s.onnx"
            onnx.save(onnx.load(str(s["unsigned"])), str(resaved_u))
            onnx.save(onnx.load(str(s["signed"])), str(resaved_s))
            for mode, fn in runs.items():
                benign[mode] += int(not detected(
                    lambda f=fn, a=resaved_u, b=resaved_s: f(a, b)))
            for i, (name, (edit, when)) in enumerate(forgeries(s["other"]).items()):
                u = forge(s["unsigned"], d / f"f{i}_u.onnx", edit, when)
                sg = forge(s["signed"], d / f"f{i}_s.onnx", edit, when)
                hit = {mode: detected(lambda f=fn, a=u, b=sg: f(a, b))
                       for mode, fn in runs.items()}
                for mode in modes:
                    counts[mode] += int(hit[mode])
                rows.append({"model": s["name"], "forgery": name, **hit})
                print(f"{s['name']:34} {name:40} " +
                      " ".join(f"{m}={'caught' if hit[m] else 'MISSED'}" for m in modes))
    total = len(rows)
    print(f"\n{'mode':12} detected / total")
    for mode in modes:
        print(f"{mode:12} {counts[mode]:3d} / {total}  ({100 * counts[mode] / total:.0f}%)")
    print("benign re-saves passing: " + ", ".join(f"{m} {benign[m]}/2" for m in modes))
    path = write_results("tamper", {"total": total, "detected": counts, "rows": rows,
                                    "benign_resaves_passing": benign,
                                    "search_steps": args.search_steps})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
