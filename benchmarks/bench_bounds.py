"""Bound-propagation benchmark (issue 7): the certification tiers side by side on the
digits CNN (``certcompress.demo.digits.DigitsCNN``: two 3x3 convolutions with BatchNorm and a
residual add, max-pooling, linear head), trained in this run, pruned by global
magnitude at 10/30/50%, over the input domain [0, 1]^64:

* ``path-metric`` tier: ``max(r, 1) * path-metric`` (worst case over the domain);
* ``bounds`` tier: differential bound propagation over the box (same scope);
* ``ascent``: the largest l1 deviation gradient ascent finds inside the box (a lower
  bound on the true worst case; 200 sign-gradient steps from 32 random points, 64 random
  vertices of the box and 64 test images), and the deviation on the test images.

Cost is in forward-pass equivalents (FPE): the tier's wall time divided by one float64
forward pass of the original at batch 1 (best of 20), both measured in this run.
Targets (issue 7): bounds tier >= 10x tighter than path-metric and within 20x of ascent
at 50% pruning.

Writes benchmarks/results/bounds.json and the plot docs/bounds-tiers.png.
Run: ``.venv/bin/python benchmarks/bench_bounds.py`` (``--epochs 5`` for a quick run).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from _common import best_time, write_results  # type: ignore[import-not-found]

import certcompress as cc
from certcompress._io import atomic_write_bytes
from certcompress.demo.digits import (
    DigitsCNN,
    accuracy,
    load_digits,
    magnitude_prune_copy,
    train_classifier,
)
from certcompress.domain import InputDomain
from certcompress.measure import adversarial_deviation, deviations, float64_function

ROOT = Path(__file__).resolve().parent.parent


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    sp = [100 * r["sparsity"] for r in rows]
    series = [("path-metric tier", "path_metric", "o-"), ("bounds tier", "bounds", "s-"),
              ("gradient ascent (found)", "ascent", "^--"),
              ("output scale max ||f(x)||_1 (test)", "output_scale", ":")]
    for label, key, style in series:
        ax.plot(sp, [r[key] for r in rows], style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("magnitude pruning (% of conv/linear weights)")
    ax.set_ylabel("max over [0,1]^64 of ||f(x) - f'(x)||_1")
    ax.set_title("Digits CNN: certified tiers vs deviation found")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--weights", type=Path, default=None,
                    help="state dict of an already trained DigitsCNN (skips training)")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "bounds-tiers.png")
    a = ap.parse_args()

    torch.manual_seed(0)
    data = load_digits()
    model = DigitsCNN()
    if a.weights is not None:
        model.load_state_dict(torch.load(a.weights, weights_only=True))
        model.eval()
    else:
        model = train_classifier(model, data.x_train, data.y_train, epochs=a.epochs)
    acc = accuracy(model, data.x_test, data.y_test)
    shape = (1, 1, 8, 8)
    dom = InputDomain.box(0.0, 1.0, shape=shape)
    f = float64_function(model)
    x1 = dom.sample(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        fwd = best_time(lambda: f(x1), repeat=20)
    print(f"digits CNN: test accuracy {acc:.3f}; one float64 forward pass {fwd * 1e3:.3f} ms")
    rows = []
    for sp in a.sparsities:
        pruned = magnitude_prune_copy(model, sp)
        cert = cc.certify(model, pruned, domain=dom, methods=("path-metric", "bounds"),
                          reference_inputs=data.x_test, search_steps=0)
        fc = float64_function(pruned)
        vertices = (torch.rand((64,) + shape[1:], generator=torch.Generator().manual_seed(1))
                    < 0.5).double()
        adv = adversarial_deviation(f, fc, shape, dom.lower_tensor()[0], dom.upper_tensor()[0],
                                    steps=200, restarts=32,
                                    starts=torch.cat([data.x_test[:64].double(), vertices]),
                                    seed=0)
        dev, scale = deviations(f, fc, data.x_test)
        pm, bd = cert.by_method["path-metric"], cert.by_method["bounds"]
        row = {"sparsity": sp, "accuracy_pruned": accuracy(pruned, data.x_test, data.y_test),
               "path_metric": pm.bound, "bounds": bd.bound, "ascent": adv.max_deviation,
               "test_deviation_max": float(dev.max()), "output_scale": float(scale.max()),
               "bounds_seconds": bd.seconds, "bounds_fpe": bd.seconds / fwd,
               "path_metric_fpe": pm.seconds / fwd,
               "tighter_than_path_metric": pm.bound / bd.bound,
               "bounds_over_ascent": bd.bound / adv.max_deviation,
               "path_metric_over_ascent": pm.bound / adv.max_deviation,
               "bounds_vacuous": bd.bound > float(scale.max()),
               "details": bd.details}
        rows.append(row)
        print(f"{100 * sp:4.0f}% pruned (acc {row['accuracy_pruned']:.3f}): path-metric "
              f"{pm.bound:10.4g}  bounds {bd.bound:9.4g}  ascent {adv.max_deviation:7.4g}  "
              f"test max {float(dev.max()):6.3g}  scale {float(scale.max()):6.3g} | "
              f"bounds {row['tighter_than_path_metric']:.1f}x tighter than path-metric, "
              f"{row['bounds_over_ascent']:.1f}x ascent; cost {bd.seconds:.2f} s = "
              f"{row['bounds_fpe']:.3g} FPE (path-metric {row['path_metric_fpe']:.3g} FPE)")
    last = rows[-1]
    targets = {"tighter_10x": last["tighter_than_path_metric"] >= 10,
               "within_20x_of_ascent": last["bounds_over_ascent"] <= 20}
    print(f"targets at {100 * last['sparsity']:.0f}%: >=10x tighter than path-metric: "
          f"{targets['tighter_10x']}; within 20x of ascent: {targets['within_20x_of_ascent']}")
    path = write_results("bounds", {"accuracy": acc, "forward_seconds": fwd,
                                    "epochs": a.epochs, "rows": rows, "targets": targets})
    print(f"results written to {path}; plot {plot(rows, a.plot)}")


if __name__ == "__main__":
    main()
