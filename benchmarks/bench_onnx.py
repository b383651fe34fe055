"""ONNX benchmark (issue 5): file size and onnxruntime latency (batch 1 and 64) of
torchvision resnet18 (random weights, 224x224) as ratios original : structured-pruned :
8-bit : chosen mixed bits, measured in one run (interleaved rounds, medians; one
onnxruntime thread by default, which is what stays stable on a shared 2-core machine).

Every compressed model is certified (inputs ||x||_inf <= 2.64, ImageNet normalization),
exported with its certificate and verified before it is timed. The mixed widths are
chosen by ``choose_bitwidths`` (candidates 4 and 8, at most ``--avg-bits`` bits per
weight on average). Run: ``.venv/bin/python benchmarks/bench_onnx.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from _common import write_results  # type: ignore[import-not-found]

from certcompress import certify
from certcompress._io import atomic_path
from certcompress.compress.pruning import prune_channels
from certcompress.compress.quantization import QuantConfig, choose_bitwidths, quantization_grid
from certcompress.export import build_report, export_onnx, to_onnx

RADIUS = 2.64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads (default 1: stable on a shared machine; "
                        "0: onnxruntime's default)")
    p.add_argument("--channel-ratio", type=float, default=0.3)
    p.add_argument("--avg-bits", type=float, default=5.0)
    p.add_argument("--search-steps", type=int, default=2)
    a = p.parse_args()
    shape = (1, 3, a.size, a.size)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((4,) + shape[1:], generator=gen) * 2 - 1) * RADIUS
    steps = {"search_steps": a.search_steps, "search_restarts": 2}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {"original": d / "original.onnx"}
        with atomic_path(files["original"]) as t:
            import onnx

            onnx.save_model(to_onnx(model, shape), str(t))
        certs = {}
        structured = prune_channels(model, a.channel_ratio, input_shape=shape,
                                    input_radius=RADIUS, round_to=8, reference_inputs=x,
                                    search_steps=0)
        files["structured"] = d / "structured.onnx"
        export_onnx(structured.model, files["structured"], certificate=structured.certificate,
                    certified=structured.zeroed, reference_inputs=x, original=model, **steps)
        certs["structured"] = structured.certificate
        cfg8 = QuantConfig.uniform(model, 8)
        grid8 = quantization_grid(model, cfg8)
        q8 = grid8.apply(model)
        certs["int8"] = certify(model, q8, shape, RADIUS, reference_inputs=x, search_steps=0)
        files["int8"] = d / "int8.onnx"
        export_onnx(q8, files["int8"], certificate=certs["int8"], grids=grid8,
                    reference_inputs=x, original=model, **steps)
        alloc = choose_bitwidths(model, avg_bits=a.avg_bits, candidates=(4, 8),
                                 input_shape=shape, input_radius=RADIUS)
        grid_m = quantization_grid(model, alloc.config)
        grid_m.check(alloc.model)
        certs["mixed"] = alloc.certificate
        files["mixed"] = d / "mixed.onnx"
        export_onnx(alloc.model, files["mixed"], certificate=alloc.certificate, grids=grid_m,
                    reference_inputs=x, original=model, **steps)
        prepared = time.perf_counter() - t0
        report = build_report(files, batches=(1, 64), rounds=a.rounds, input_shape=shape,
                              threads=a.threads or None)
    print(report.summary())
    rows = report.to_dict()
    for m in rows["models"]:
        m.pop("path")
        cert = certs.get(m["label"])
        if cert is not None:
            m["certified_bound"] = cert.bound
            m["vacuous"] = cert.vacuous
    rows["mixed_bits"] = {"average_bits": alloc.average_bits, "bits": alloc.bits}
    rows["structured"] = {"channel_ratio": a.channel_ratio, "round_to": 8,
                          "parameter_fraction": structured.parameter_fraction}
    rows["prepare_s"] = prepared
    path = write_results("onnx", rows)
    print(f"mixed bits: {alloc.average_bits:.2f} bits/weight on average; structured: "
          f"{structured.parameter_fraction:.3f} of the parameters kept")
    print(f"results written to {path} (certify + export + verify took {prepared:.0f} s)")


if __name__ == "__main__":
    main()
