"""W8A8 int8 deployment, measured in one run: float ONNX, onnxruntime's own
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) and
certcompress's ``export_w8a8``, on resnet18 at 224x224 and the digits CNN.

For each: latency at batch 1 and 8 in onnxruntime (2 intra-op threads, best of N),
file size, top-1 agreement with the float model on held-out inputs, and the certified
bound (certcompress: weight and activation rounding, see certcompress/export/w8a8.py;
the digits CNN over [0, 1]^64 with activation ranges from the bounds tier over that box
(nothing clipped) and both tiers (CROWN intermediates), resnet18 with calibrated ranges
and the path-metric tier when ``--certify-resnet``; onnxruntime's file through the
importer and ``float_twin``, certified against the float model with the same tiers).
The float file is the BatchNorm-folded model exported like certcompress's (exact
initializers), so both quantizers start from the same graph. Latencies are measured
first (files exported without certification; the certified export writes the same
graph), then the certificates. Latency ratios are from the same run. Usage::

    python benchmarks/bench_int8.py [--skip-resnet] [--certify-resnet] [--repeat N]
        [--slope-steps N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _common import write_results

from certcompress.api import certify as certify_pair
from certcompress.capture.onnx import load_onnx
from certcompress.compress.quantization.activations import float_twin
from certcompress.errors import ConfigurationError, UnsupportedModelError
from certcompress.export.w8a8 import export_w8a8, fold_batchnorm


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _latency(sess: ort.InferenceSession, x: np.ndarray, repeat: int) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        best = min(best, time.perf_counter() - t0)
    return best


def _float_onnx(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    import onnx

    from certcompress.export.onnx_export import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = to_onnx(model, shape)
    onnx.save_model(proto, str(path))


def _ort_qdq(src: Path, dst: Path, x_cal: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.it = iter([x_cal[i:i + 8] for i in range(0, len(x_cal), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {name: x}

    import onnx

    m = onnx.load(str(src))
    inits = {t.name for t in m.graph.initializer}
    name = next(i.name for i in m.graph.input if i.name not in inits)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def _bench(name: str, model: torch.nn.Module, x_cal: torch.Tensor, x_test: torch.Tensor,
           repeat: int, certify: bool, domain: Any = None,
           methods: tuple[str, ...] | None = None, propagation: Any = None,
           bounds_ranges: bool = False) -> dict[str, Any]:
    shape = (1,) + tuple(x_cal.shape[1:])
    out: dict[str, Any] = {"input_shape": list(shape)}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        float_path, ort_path, cc_path = t / "float.onnx", t / "ort_qdq.onnx", t / "cc.onnx"
        _float_onnx(fold_batchnorm(model), shape, float_path)
        _ort_qdq(float_path, ort_path, x_cal.numpy())
        cal = None if bounds_ranges else x_cal
        export_w8a8(model, cc_path, calibration=cal, certify=False, domain=domain)
        xt = x_test.numpy()
        with torch.no_grad():
            ref = model(x_test).numpy().argmax(1)
        for label, path in (("float", float_path), ("ort_qdq", ort_path),
                            ("certcompress_w8a8", cc_path)):
            sess = _session(path)
            row: dict[str, Any] = {"size_bytes": path.stat().st_size + sum(
                p.stat().st_size for p in t.glob(path.name + ".data"))}
            for b in (1, 8):
                row[f"latency_b{b}_ms"] = 1e3 * _latency(sess, xt[:b], repeat)
            y = sess.run(None, {sess.get_inputs()[0].name: xt})[0]
            row["top1_agreement"] = float((y.argmax(1) == ref).mean())
            out[label] = row
        for label in ("ort_qdq", "certcompress_w8a8"):
            for b in (1, 8):
                out[label][f"speedup_b{b}"] = (out["float"][f"latency_b{b}_ms"]
                                               / out[label][f"latency_b{b}_ms"])
        t0 = time.perf_counter()
        res = export_w8a8(model, t / "cc_cert.onnx", calibration=cal, certify=certify,
                          domain=domain, methods=methods, propagation=propagation,
                          search_steps=10, search_restarts=2)
        out["certcompress_export_seconds"] = time.perf_counter() - t0
        out["certcompress_w8a8"]["activation_ranges"] = (
            "bounds tier over the domain" if bounds_ranges else "calibration (clipping "
            "certified)")
        cert = res.certificate
        out["certcompress_w8a8"]["certified_bound"] = None if cert is None else cert.bound
        out["certcompress_w8a8"]["bound_vacuous"] = None if cert is None else cert.vacuous
        out["certcompress_w8a8"]["bound_covers"] = res.covers
        if cert is not None:
            out["certcompress_w8a8"]["adversarial_max"] = cert.measurements.adversarial_max
            out["certcompress_w8a8"]["output_scale"] = cert.measurements.output_scale
            out["certcompress_w8a8"]["bound_by_tier"] = {k: v.bound for k, v
                                                         in cert.by_method.items()}
            # the file's own int8 arithmetic (onnxruntime) against the float model
            sess = _session(cc_path)
            with torch.no_grad():
                fx = fold_batchnorm(model).double()(x_test.double()).numpy()
            y = sess.run(None, {sess.get_inputs()[0].name: xt})[0].astype(np.float64)
            out["certcompress_w8a8"]["ort_deviation_max_test"] = float(
                np.abs(fx - y).sum(1).max())
        if cert is None:
            out["ort_qdq"]["certified_bound"] = None
        else:
            try:
                imported = load_onnx(ort_path)
                twin, aligned = float_twin(imported, model, x_cal[:4])
                t0 = time.perf_counter()
                c2 = certify_pair(twin, aligned, domain=cert.input_domain, methods=methods,
                                  propagation=propagation, search_steps=10,
                                  search_restarts=2)
                out["ort_qdq"]["certify_seconds"] = time.perf_counter() - t0
                out["ort_qdq"]["certified_bound"] = c2.bound
                out["ort_qdq"]["bound_vacuous"] = c2.vacuous
                out["ort_qdq"]["adversarial_max"] = c2.measurements.adversarial_max
            except (UnsupportedModelError, ConfigurationError) as exc:
                out["ort_qdq"]["certified_bound"] = "none: " + str(exc).splitlines()[0]
    print(f"== {name}")
    for label in ("float", "ort_qdq", "certcompress_w8a8"):
        r = out[label]
        sp = "" if label == "float" else \
            f"  speed-up b1 {r['speedup_b1']:.2f}x b8 {r['speedup_b8']:.2f}x"
        print(f"  {label:18s} b1 {r['latency_b1_ms']:8.2f} ms  b8 {r['latency_b8_ms']:8.2f} ms"
              f"  {r['size_bytes'] / 1e6:7.2f} MB  top1-agree {r['top1_agreement']:.3f}{sp}")
    c = out["certcompress_w8a8"]
    print(f"  certified bound (certcompress, weight and activation rounding, ranges from "
          f"{c['activation_ranges']}): {c['certified_bound']} (vacuous: "
          f"{c['bound_vacuous']}; PGD found {c.get('adversarial_max')}, onnxruntime on the "
          f"test inputs {c.get('ort_deviation_max_test')}, output scale "
          f"{c.get('output_scale')})")
    print(f"  certified bound (onnxruntime's QDQ file, imported): "
          f"{out['ort_qdq']['certified_bound']}")
    return out


def _randomize_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm trained-looking statistics: with the defaults every folded
    bias is 0, the float exporter merges the identical bias tensors and onnxruntime's
    quantize_static then leaves those convolutions in float, an unfair baseline."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--certify-resnet", action="store_true",
                    help="also certify resnet18's weights (slow on 2 cores)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--slope-steps", type=int, default=0,
                    help="bounds tier: optimized ReLU slopes (PropagationOptions.slope_steps)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from certcompress.demo.digits import DigitsCNN, load_digits, train_classifier

    results: dict[str, Any] = {"threads": 2, "onnxruntime": ort.__version__}
    d = load_digits()
    cnn = train_classifier(DigitsCNN(), d.x_train, d.y_train, epochs=10, progress=False)
    from certcompress.bounds.propagation.engine import PropagationOptions
    from certcompress.domain import InputDomain

    dom = InputDomain.box(0.0, 1.0, shape=(1,) + tuple(d.x_train.shape[1:]))
    results["digits_cnn"] = _bench("digits CNN (1x8x8)", cnn, d.x_train[:256], d.x_test,
                                   args.repeat * 10, certify=True, domain=dom,
                                   propagation=PropagationOptions(
                                       intermediate="crown", slope_steps=args.slope_steps),
                                   bounds_ranges=True)
    if not args.skip_resnet:
        import torchvision

        r18 = torchvision.models.resnet18().eval()
        gen = torch.Generator().manual_seed(1)
        _randomize_batchnorm(r18, gen)
        x_cal = torch.randn(32, 3, 224, 224, generator=gen)
        x_test = torch.randn(64, 3, 224, 224, generator=gen)
        results["resnet18"] = _bench("resnet18 (3x224x224, random weights and inputs)", r18,
                                     x_cal, x_test, args.repeat, certify=args.certify_resnet,
                                     methods=("path-metric",))
    print("wrote", write_results("int8", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
