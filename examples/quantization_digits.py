"""Certified per-layer bit widths for a CNN trained on scikit-learn's digits.

A small CNN (``certcompress.demo.digits.DigitsCNN``: two 3x3 convolutions with BatchNorm and a
residual add, max-pooling, a linear head) is trained on the 8x8 digits; its inputs are pixel intensities in
[0, 1], so every certificate covers ``||x||_inf <= 1``. Then:

1. uniform widths 2-8 bits, per channel and per tensor: certified bound, deviation
   measured on the test images and by a gradient-ascent search, and test accuracy;
2. the per-layer sensitivity table in certified units (bound of quantizing that layer
   alone at each width);
3. ``choose_bitwidths`` under a certified budget (fewest weight bits) and at an average
   of 4 bits per weight (smallest bound), each with its exact certificate;
4. equalization: a function-preserving power-of-two rescaling that lowers the bound of
   a configuration. In DigitsCNN every hidden channel feeds a residual add, so no
   channel can be rescaled alone (0 pairs, identity returned); a small MLP trained on
   the same data shows it at work;
5. side by side with onnxruntime's default int8 per-channel weights, and the curve of
   certified bound against average bits (allocated vs uniform).

Every bound is the certificate of the quantized model (``certcompress.certify``), never a
first-order estimate, and is printed next to the measured deviation; a vacuous bound
(above the output scale) is marked so.

Run: ``.venv/bin/python examples/quantization_digits.py [--out out/quantization_digits]``
(about a minute on a laptop CPU); prints the tables and writes CSVs and PNGs to ``--out``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from certcompress._io import atomic_write_text
from certcompress.compress.quantization import (
    QuantConfig,
    bound_vs_bits,
    choose_bitwidths,
    compare_with_ort,
    equalize,
    quantize,
    sensitivity_table,
    write_report,
)
from certcompress.demo.digits import DigitsCNN, accuracy, load_digits, train_classifier

SHAPE = (1, 1, 8, 8)
RADIUS = 1.0  # pixel intensities in [0, 1]
CANDIDATES = (2, 3, 4, 5, 6, 8)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/quantization_digits", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-steps", type=int, default=30,
                   help="PGD steps of the adversarial search per certificate")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits(seed=a.seed)
    torch.manual_seed(a.seed)
    model = train_classifier(DigitsCNN(), data.x_train, data.y_train, seed=a.seed).eval()
    acc = accuracy(model, data.x_test, data.y_test)
    print(f"DigitsCNN: float test accuracy {acc:.3f} on {len(data.y_test)} test images\n")

    # 1. uniform widths
    import pandas as pd

    rows = []
    for gran in ("per-channel", "per-tensor"):
        for bits in (2, 3, 4, 5, 6, 8):
            cfg = QuantConfig.uniform(model, bits, gran)
            qmodel, cert = quantize(model, cfg, SHAPE, RADIUS, data.x_test,
                                    search_steps=a.search_steps, seed=a.seed)
            m = cert.measurements
            rows.append({"granularity": gran, "bits": bits, "bytes": cfg.size_bytes(model),
                         "certified_bound": cert.bound, "deviation_max": m.deviation_max,
                         "adversarial_max": m.adversarial_max, "vacuous": cert.vacuous,
                         "accuracy": accuracy(qmodel, data.x_test, data.y_test)})
    uniform = pd.DataFrame(rows)
    print("1. uniform widths (bound: certified over ||x||_inf <= 1; measured: test images "
          "and gradient ascent)")
    print(uniform.to_string(index=False, float_format=_fmt))
    atomic_write_text(out / "uniform.csv", uniform.to_csv(index=False))

    # 2. sensitivity table
    sens = sensitivity_table(model, CANDIDATES, input_shape=SHAPE, input_radius=RADIUS)
    print("\n2. per-layer sensitivity: certified bound of quantizing that layer alone")
    print(sens.to_frame().to_string(float_format=_fmt))

    # 3. allocation under a budget, and at an average-bits size
    pc = uniform[uniform["granularity"] == "per-channel"].set_index("bits")["certified_bound"]
    budget = math.sqrt(float(pc[4]) * float(pc[5]))
    al = choose_bitwidths(model, budget, candidates=CANDIDATES, input_shape=SHAPE,
                          input_radius=RADIUS, reference_inputs=data.x_test,
                          search_steps=a.search_steps, seed=a.seed)
    print(f"\n3a. budget {budget:.4g} (between uniform 4-bit {pc[4]:.4g} and 5-bit "
          f"{pc[5]:.4g}):")
    print(al.summary())
    m = al.certificate.measurements
    print(f"  measured on test images: max {m.deviation_max:.4g}; adversarial "
          f"{m.adversarial_max:.4g}; accuracy "
          f"{accuracy(al.model, data.x_test, data.y_test):.3f}")
    small = choose_bitwidths(model, avg_bits=4.0, candidates=CANDIDATES, input_shape=SHAPE,
                             input_radius=RADIUS, reference_inputs=data.x_test,
                             search_steps=a.search_steps, seed=a.seed)
    print(f"\n3b. at most 4.0 bits per weight: bound {small.bound:.4g} at "
          f"{small.average_bits:.3f} bits/weight (uniform 4-bit: {pc[4]:.4g}); bits "
          f"{small.bits}")

    # 4. equalization: of the chosen configuration, and on an MLP
    eq = equalize(model, al.config, SHAPE, RADIUS, data.x_test, seed=a.seed)
    print("\n4. DigitsCNN, chosen configuration: " + eq.summary())
    torch.manual_seed(a.seed)
    mlp: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                        nn.ReLU(), nn.Linear(64, 10))
    mlp = train_classifier(mlp, data.x_train, data.y_train, seed=a.seed).eval()
    for gran in ("per-channel", "per-tensor"):
        eq = equalize(mlp, QuantConfig.uniform(mlp, 4, gran), SHAPE, RADIUS, data.x_test,
                      seed=a.seed)
        print(f"   MLP 64-64-10, uniform 4-bit {gran}: " + eq.summary())

    # 5. side by side with onnxruntime, and the bound-vs-bits curve
    comparison = compare_with_ort(model, al, SHAPE, RADIUS, data.x_test,
                                  search_steps=a.search_steps, seed=a.seed)
    cols = ["average_bits", "model_bytes", "certified_bound", "deviation_max",
            "adversarial_max", "vacuous"]
    print("\n5. side by side")
    print(comparison[cols].to_string(float_format=_fmt))
    curve = bound_vs_bits(model, [2.5, 3.0, 3.5, 4.0, 5.0, 6.0], candidates=CANDIDATES,
                          input_shape=SHAPE, input_radius=RADIUS)
    print(curve.to_string(index=False, float_format=_fmt))
    files = write_report(out, model, al, comparison=comparison, curve=curve)
    print("\nwrote " + ", ".join(str(f) for f in [out / "uniform.csv", *files.values()]))


if __name__ == "__main__":
    main()
