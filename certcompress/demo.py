"""The end-to-end example (``certcompress demo``): train a small CNN on scikit-learn's
digits, prune it, certify the pruning, and print the certificate next to the deviation
measured on the test set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .api import certify
from .zoo import DigitsCNN, accuracy, load_digits, magnitude_prune_copy, train_classifier

__all__ = ["run_demo", "register"]


def run_demo(out_dir: str | Path = "out/demo", sparsity: float = 0.3, seed: int = 0,
             progress: bool = True) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_digits(seed=seed)
    torch.manual_seed(seed)
    model = train_classifier(DigitsCNN(), data.x_train, data.y_train, seed=seed,
                             progress=progress)
    print(f"[1/3] trained DigitsCNN on scikit-learn digits: test accuracy "
          f"{accuracy(model, data.x_test, data.y_test):.3f} "
          f"({time.perf_counter() - t0:.1f} s)")
    pruned = magnitude_prune_copy(model, sparsity)
    print(f"[2/3] magnitude-pruned {sparsity:.0%} of the conv/linear weights: test accuracy "
          f"{accuracy(pruned, data.x_test, data.y_test):.3f}")
    cert = certify(model, pruned, input_shape=(1, 1, 8, 8), input_radius=1.0,
                   reference_inputs=data.x_test, search_steps=30, seed=seed)
    path = cert.save(out / "certificate.json")
    print("[3/3] certificate (inputs are pixel intensities in [0, 1], so ||x||_inf <= 1):")
    print(cert.summary())
    m = cert.measurements
    print(f"\nOn the {m.reference_count} test images the l1 output deviation was at most "
          f"{m.deviation_max:.4g} (mean {m.deviation_mean:.4g}); the certified bound is "
          f"{cert.bound:.4g}, i.e. {cert.bound / max(m.deviation_max or 0.0, 1e-300):.3g}x the "
          f"largest measured deviation.")
    print(f"certificate written to {path}  (total {time.perf_counter() - t0:.1f} s)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("demo", help="run the end-to-end example on scikit-learn digits")
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(a.out, a.sparsity, a.seed))


if __name__ == "__main__":
    raise SystemExit(run_demo())
