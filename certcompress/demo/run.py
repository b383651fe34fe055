"""The end-to-end example (``certcompress demo``, the README's main job).

On scikit-learn's digits (shipped inside scikit-learn; nothing is downloaded):

1. train a small CNN (two 3x3 convolutions with BatchNorm and a residual add,
   max-pooling, a linear head);
2. prune it: the sparsest path-magnitude plan whose certificate stays within a budget,
   next to magnitude pruning at the same sparsity;
3. certify the 50% pruning with every tier side by side (path-metric and bound
   propagation over [0, 1]^64, local certificates around test points, a statistical
   certificate from the held-out test set), as a table and a plot;
4. quantize it: per-layer bit widths chosen under a certified budget, next to uniform
   widths and onnxruntime's default int8 weights;
5. export the certified quantized model to ONNX with its certificate embedded, verified
   with onnxruntime.

Every certified bound is printed next to the deviation measured on the test images and
the largest deviation gradient ascent finds; vacuous bounds are labelled vacuous. All
files go to ``--out`` (default ``out/demo``), written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ..api import certify
from ..bounds.local import certify_local
from ..bounds.report import plot_tiers, tiers_table
from ..bounds.statistical import certify_statistical
from ..compress.quantization import quantization_grid
from ..domain import InputDomain
from .digits import DigitsCNN, DigitsData, accuracy, load_digits, train_classifier
from .export import demo_section as export_section
from .pruning import demo_section as pruning_section
from .quantization import demo_section as quantization_section

__all__ = ["run_demo", "save_artifacts", "MODEL_SPEC", "INPUT_SHAPE", "RADIUS"]

INPUT_SHAPE = (1, 1, 8, 8)
RADIUS = 1.0  # pixel intensities lie in [0, 1], so ||x||_inf <= 1


def _banner(step: int, total: int, title: str, t0: float, print_fn: Callable[[str], None]
            ) -> None:
    print_fn(f"\n[{step}/{total}] {title}  (t = {time.perf_counter() - t0:.1f} s)")


MODEL_SPEC = "certcompress.demo.digits:DigitsCNN"


def save_artifacts(model: torch.nn.Module, data: DigitsData, out: Path) -> tuple[Path, Path]:
    """The trained weights (``model.pt``, a plain state dict that loads with
    ``weights_only=True``) and the held-out test set (``digits_test.npz``: ``x`` and
    ``y``), so the CLI can continue from the demo (README, "Continue with the CLI")."""
    weights, test = out / "model.pt", out / "digits_test.npz"
    with atomic_path(weights) as tmp:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp)
    with atomic_path(test) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=data.x_test.numpy(), y=data.y_test.numpy())
    return weights, test


def run_demo(out_dir: str | Path = "out/demo", sparsity: float = 0.5, seed: int = 0,
             progress: bool = True, print_fn: Callable[[str], None] = print, *,
             local_points: int = 20, local_eps: float = 0.02) -> int:
    """Run the end-to-end example; returns the exit code (0)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 5
    domain = InputDomain.box(0.0, 1.0, shape=INPUT_SHAPE,
                             description="pixel intensities in [0, 1]^64")
    t0 = time.perf_counter()
    data = load_digits(seed=seed)
    torch.manual_seed(seed)
    _banner(1, total, "train a small CNN on scikit-learn digits", t0, print_fn)
    model = train_classifier(DigitsCNN(), data.x_train, data.y_train, seed=seed,
                             progress=progress)
    print_fn(f"DigitsCNN: test accuracy {accuracy(model, data.x_test, data.y_test):.3f} on "
             f"{len(data.y_test)} test images; inputs in [0, 1], so ||x||_inf <= {RADIUS:g}")
    saved = save_artifacts(model, data, out)
    print_fn("model and test data saved for the CLI: " + ", ".join(str(p) for p in saved))

    _banner(2, total, "prune under a certified budget", t0, print_fn)
    pruning = pruning_section(model, data, input_shape=INPUT_SHAPE, input_radius=RADIUS,
                              sparsity=sparsity, out_dir=out / "pruning", seed=seed,
                              domain=domain, print_fn=print_fn)

    _banner(3, total, f"certify the {sparsity:.0%} pruning with every tier", t0, print_fn)
    pruned = pruning.pruned
    cert = certify(model, pruned, domain=domain, methods=("path-metric", "bounds"),
                   reference_inputs=data.x_test, search_steps=30, seed=seed)
    print_fn(cert.summary())
    cert.save(out / "pruning_certificate.json")
    local = certify_local(model, pruned, data.x_test[:local_points], local_eps,
                          domain_lower=0.0, domain_upper=1.0, progress=progress)
    print_fn(local.summary())
    local.save(out / "local_certificate.json")
    # The plan was chosen from the weights alone, so the test set is a held-out sample.
    stat = certify_statistical(model, pruned, data.x_test, delta=0.05,
                               threshold=0.1 * float(cert.measurements.output_scale or 1.0),
                               labels=data.y_test)
    print_fn(stat.summary())
    stat.save(out / "statistical_certificate.json")
    table = tiers_table(cert, local, stat)
    print_fn(table[["kind", "value", "vacuous"]].to_string(float_format=lambda v: f"{v:.4g}"))
    png = plot_tiers(table, out / "tiers.png", cert.measurements.output_scale,
                     title=f"DigitsCNN, {sparsity:.0%} path-magnitude pruning")
    print_fn(f"tiers plot written to {png}")

    _banner(4, total, "choose per-layer bit widths under a certified budget", t0, print_fn)
    allocation = quantization_section(model, data, input_shape=INPUT_SHAPE,
                                      input_radius=RADIUS, out_dir=out / "quantization",
                                      seed=seed, domain=domain, print_fn=print_fn)
    allocation.certificate.save(out / "quantization_certificate.json")

    _banner(5, total, "export the certified quantized model to ONNX and verify it", t0,
            print_fn)
    export_section(model, allocation.model, allocation.certificate, data, out / "onnx",
                   grids=quantization_grid(model, allocation.config), label="quantized",
                   progress=progress)
    print_fn(f"\nall outputs in {out.resolve()}  (total {time.perf_counter() - t0:.1f} s)")
    return 0
