"""The quantization part of the end-to-end example: choose bit widths for a model
trained on scikit-learn digits under a certified budget, and print the result next to
uniform widths and onnxruntime's default int8 weights."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from ..compress.quantization.allocate import BitAllocation, choose_bitwidths
from ..compress.quantization.apply import quantize
from ..compress.quantization.config import QuantConfig
from ..compress.quantization.report import bits_table, compare_with_ort, write_report
from ..domain import InputDomain
from ..measure import deviations, float64_function
from .digits import DigitsData, accuracy

__all__ = ["demo_section"]


def demo_section(model: nn.Module, data: DigitsData, *, budget: float | None = None,
                 candidates: Sequence[int] = (2, 3, 4, 5, 6, 8),
                 input_shape: Sequence[int] = (1, 1, 8, 8), input_radius: float = 1.0,
                 out_dir: str | os.PathLike[str] | None = None, search_steps: int = 30,
                 seed: int = 0, domain: InputDomain | None = None,
                 print_fn: Callable[[str], None] = print) -> BitAllocation:
    """Choose per-layer bit widths for ``model`` (trained on ``data``) so that the
    certified bound over ``||x||_inf <= input_radius`` stays within ``budget``.

    ``budget`` defaults to the geometric mean of the certified bounds of uniform 4-bit
    and uniform 5-bit per-channel weights: no single width meets it with as few bits,
    so the allocation has to mix widths. Prints the chosen bits per layer, sizes, the
    certificate, the deviation measured on the test images and test accuracy, and the
    same for onnxruntime's default int8 weights; with ``out_dir`` also writes the
    report files (:func:`write_report`). Returns the :class:`BitAllocation`.

    With ``domain`` (an :class:`~certcompress.InputDomain` box) the allocation is
    certified by the bound-propagation tier over it as well (``certifier="bounds"``), and
    ``budget`` defaults to the largest ``||f(x)||_1`` on the test images (below it the
    certificate is not vacuous).
    """
    shape, r = tuple(input_shape), float(input_radius)
    if domain is not None:
        if budget is None:
            _, scale = deviations(float64_function(model), float64_function(model),
                                  data.x_test.reshape((-1,) + shape[1:]))
            budget = float(scale.max())
            print_fn(f"budget: {budget:.4g} = the largest ||f(x)||_1 on the test images (below "
                     f"it the certificate is not vacuous); certified by the path-metric and "
                     f"bound-propagation tiers over {domain.description}")
    elif budget is None:
        b4 = quantize(model, QuantConfig.uniform(model, 4), shape, r, search_steps=0)[1].bound
        b5 = quantize(model, QuantConfig.uniform(model, 5), shape, r, search_steps=0)[1].bound
        budget = math.sqrt(b4 * b5)
        print_fn(f"budget: {budget:.4g} = geometric mean of the certified bounds of uniform "
                 f"4-bit ({b4:.4g}) and 5-bit ({b5:.4g}) weights")
    if domain is not None:
        al = choose_bitwidths(model, budget, candidates=candidates,
                              reference_inputs=data.x_test, search_steps=search_steps,
                              seed=seed, certifier="bounds", domain=domain)
    else:
        al = choose_bitwidths(model, budget, candidates=candidates, input_shape=shape,
                              input_radius=r, reference_inputs=data.x_test,
                              search_steps=search_steps, seed=seed)
    table = bits_table(model, al.config, al.sensitivity)
    print_fn(table.to_string(float_format=lambda v: f"{v:.4g}"))
    m = al.certificate.measurements
    print_fn(f"{al.total_bits:,} weight bits ({al.average_bits:.3f} bits/weight, "
             f"{1 - al.total_bits / al.uniform8_bits:.1%} fewer than uniform 8-bit), "
             f"{al.config.size_bytes(model):,} bytes; found with {al.iterations} exact "
             f"certification(s) in {al.seconds:.2f} s")
    print_fn(f"certified bound {al.bound:.4g} <= budget {budget:.4g}; measured on "
             f"{m.reference_count} test images: max {m.deviation_max:.4g}, mean "
             f"{m.deviation_mean:.4g}; adversarial search {m.adversarial_max:.4g}"
             + ("  (the bound is vacuous: above the output scale "
                f"{m.output_scale:.4g})" if al.certificate.vacuous else ""))
    print_fn(f"test accuracy: float {accuracy(model, data.x_test, data.y_test):.3f}, "
             f"quantized {accuracy(al.model, data.x_test, data.y_test):.3f}")
    comparison = compare_with_ort(model, al, shape, r, data.x_test, domain=domain,
                                  search_steps=search_steps,
                                  seed=seed)
    cols = ["average_bits", "model_bytes", "certified_bound", "deviation_max", "adversarial_max"]
    print_fn(comparison[cols].to_string(float_format=lambda v: f"{v:.4g}"))
    if out_dir is not None:
        files = write_report(Path(out_dir), model, al, comparison=comparison)
        print_fn("report: " + ", ".join(str(p) for p in files.values()))
    return al
