"""A certificate over a box domain (``InputDomain``, bound-propagation tier): export and
verification search and count inputs in that box, not in the larger ball
``||x||_inf <= radius``, where the certified bound does not hold."""

from __future__ import annotations

from pathlib import Path

import torch
from _onnx_helpers import MLP_SHAPE, mlp, pruned

import certcompress as cc
from certcompress.export import export_onnx, verify_onnx


def test_box_certificate_exports_and_verifies_inside_its_box(tmp_path: Path) -> None:
    model = mlp(seed=2)
    comp = pruned(model, 0.5)
    dom = cc.InputDomain.box(0.0, 1.0, shape=MLP_SHAPE)
    gen = torch.Generator().manual_seed(0)
    x_in = torch.rand((12,) + MLP_SHAPE[1:], generator=gen)
    cert = cc.certify(model, comp, domain=dom, methods=("path-metric", "bounds"),
                      reference_inputs=x_in, search_steps=5)
    assert cert.by_method["bounds"].bound < cert.by_method["path-metric"].bound
    lo, hi = cert.input_box()
    assert torch.equal(lo, torch.zeros(MLP_SHAPE[1:], dtype=torch.float64))
    assert torch.equal(hi, torch.ones(MLP_SHAPE[1:], dtype=torch.float64))
    path = tmp_path / "box.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x_in, original=model,
                         search_steps=10)
    assert report.passed and report.inputs_outside_domain == 0
    assert "box" in report.summary() or "[0, 1]" in report.summary()
    # inputs in [-1, 0): inside the ball ||x||_inf <= 1, outside the certified box
    x_out = -torch.rand((5,) + MLP_SHAPE[1:], generator=gen)
    again = verify_onnx(path, original=model, inputs=torch.cat([x_in, x_out]),
                        search_steps=10)
    assert again.inputs_outside_domain == 5
