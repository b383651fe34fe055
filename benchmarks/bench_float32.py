"""float32 arithmetic benchmark (issue 12): how much a certificate in float32 arithmetic
(``cc.certify(..., arithmetic="float32")``: both models as executed in IEEE float32, any
summation order) adds to the exact-arithmetic bound, per tier, and what it costs.

Models, each pruned 30% by global magnitude (``certcompress.demo.digits.magnitude_prune_copy``):

* the digits CNN (``certcompress.demo.digits.DigitsCNN``, trained here on sklearn digits),
  domain [0, 1]^64, tiers path-metric and bounds;
* torchvision ``resnet18`` and ``vgg11_bn`` at 32x32, 10 classes, random init (seeded;
  BatchNorm running statistics randomized so the BatchNorms are not identities),
  domain ``||x||_inf <= 1``, path-metric tier (the bounds tier is out of reach at this
  size).

For each: the exact bound, the float32 bound, their ratio minus one, the float32 error
of each model summed over the outputs, the largest float32 deviation measured at 64
random points of the domain (``||F(x) - F'(x)||_1`` with both models in float32), and
the seconds of the exact certificate and of the float32 one.

Writes benchmarks/results/float32.json.
Run: ``.venv/bin/python benchmarks/bench_float32.py`` (``--models digits`` for one).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]
from torch import nn

import certcompress as cc
from certcompress.demo.digits import DigitsCNN, load_digits, magnitude_prune_copy, train_classifier
from certcompress.domain import InputDomain
from certcompress.measure import float32_function


def _torchvision(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return m


def _measured(model: nn.Module, pruned: nn.Module, dom: InputDomain) -> float:
    x = dom.sample(64, torch.Generator().manual_seed(2)).reshape(
        (64,) + tuple(dom.shape[1:]))
    f, g = float32_function(model), float32_function(pruned)
    with torch.no_grad():
        return float((f(x).double() - g(x).double()).abs().sum(1).max())


def run(name: str, model: nn.Module, dom: InputDomain, methods: tuple[str, ...]
        ) -> dict[str, Any]:
    pruned = magnitude_prune_copy(model, 0.3)
    t0 = time.perf_counter()
    exact = cc.certify(model, pruned, domain=dom, methods=methods, search_steps=0)
    t1 = time.perf_counter()
    f32 = cc.certify(model, pruned, domain=dom, methods=methods, search_steps=0,
                     arithmetic="float32")
    t2 = time.perf_counter()
    row: dict[str, Any] = {"model": name, "input_shape": list(dom.shape),
                           "domain": dom.describe(), "sparsity": 0.3,
                           "seconds_exact": t1 - t0, "seconds_float32": t2 - t1,
                           "measured_float32_deviation": _measured(model, pruned, dom),
                           "output_scale": exact.measurements.output_scale, "tiers": {}}
    for k, t in f32.by_method.items():
        e = exact.by_method[k].bound
        row["tiers"][k] = {"exact": e, "float32": t.bound,
                           "relative_increase": t.bound / e - 1.0 if e > 0 else None,
                           "float32_error_original": t.details["float32_error_original"],
                           "float32_error_compressed": t.details["float32_error_compressed"]}
        print(f"{name:10} {k:12} exact {e:.6g}  float32 {t.bound:.6g}  "
              f"(+{100 * (t.bound / e - 1):.4f}%)  errors {t.details['float32_error']:.3g}")
    print(f"{name:10} measured float32 deviation {row['measured_float32_deviation']:.4g}; "
          f"{row['seconds_exact']:.1f} s exact, {row['seconds_float32']:.1f} s float32")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "resnet18", "vgg11_bn"])
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    rows = []
    for name in a.models:
        if name == "digits":
            torch.manual_seed(0)
            data = load_digits()
            model = train_classifier(DigitsCNN(), data.x_train, data.y_train, epochs=a.epochs)
            dom = InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
            rows.append(run("digits", model, dom, ("path-metric", "bounds")))
        else:
            dom = InputDomain.box(-1.0, 1.0, shape=(1, 3, 32, 32))
            rows.append(run(name, _torchvision(name), dom, ("path-metric",)))
    print(f"written to {write_results('float32', {'rows': rows})}")


if __name__ == "__main__":
    main()
