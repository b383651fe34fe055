"""Certified quantization: symmetric uniform grids, certificates of the quantized model,
a-priori bounds, certified bit allocation, equalization and reports (the
mathematics: docs/path-metrics.md, sections 3-4; usage: docs/quantization.md).

``quantize(model, qcfg, ...)`` returns the quantized model and its certificate;
``choose_bitwidths`` picks per-layer widths under a certified budget (or an average-bits
size); ``equalize`` rescales neurons (function-preserving) to lower the bound;
``sensitivity_table`` and the ``report`` functions present the numbers.
"""

from .allocate import AllocationStep, BitAllocation, choose_bitwidths
from .apply import quantize
from .apriori import AprioriBound, apriori_bound, apriori_bound_for_steps, bits_for_budget
from .config import LayerQuant, QuantConfig
from .equalize import EqualizationResult, equalize
from .grid import QuantGrid, quantization_grid
from .quantizers import GRANULARITIES, WEIGHT_BITS, QuantizedWeights
from .report import (
    bits_table,
    bound_vs_bits,
    compare_with_ort,
    ort_default_config,
    plot_bits,
    plot_bound_vs_bits,
    write_report,
)
from .sensitivity import SensitivityTable, sensitivity_table

__all__ = [
    "AllocationStep", "AprioriBound", "BitAllocation", "EqualizationResult", "GRANULARITIES",
    "LayerQuant", "QuantConfig", "QuantGrid", "QuantizedWeights", "SensitivityTable",
    "WEIGHT_BITS", "apriori_bound", "apriori_bound_for_steps", "bits_for_budget", "bits_table",
    "bound_vs_bits", "choose_bitwidths", "compare_with_ort", "equalize",
    "ort_default_config", "plot_bits", "plot_bound_vs_bits", "quantization_grid", "quantize",
    "sensitivity_table", "write_report",
]
