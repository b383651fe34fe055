"""Certified pruning: plans, criteria, budget search, per-layer sensitivity,
structured channel pruning through torch-pruning, and the bound-vs-deviation report.

``plan`` (PruningPlan), ``criteria`` (scores and exact selection), ``apply`` (prune),
``search`` (search_sparsity), ``sensitivity`` (layer_sensitivity), ``structured``
(prune_channels) and ``report`` (pruning_report); the shell commands are in
:mod:`certcompress.cli.prune`, the README job's section in :mod:`certcompress.demo.pruning`. The modules that need torch-pruning,
pandas or matplotlib are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .apply import apply_masks, prune
from .criteria import CRITERIA, weight_scores
from .plan import LayerRule, PruningPlan
from .search import SparsitySearch, search_sparsity

if TYPE_CHECKING:
    from .report import plot_report, pruning_report, save_report
    from .sensitivity import layer_sensitivity
    from .structured import (
        PathMagnitudeImportance,
        StructuredPruning,
        load_structured,
        prune_channels,
        read_structured_certificate,
        save_structured,
    )

_LAZY = {
    "pruning_report": "report", "save_report": "report", "plot_report": "report",
    "layer_sensitivity": "sensitivity",
    "prune_channels": "structured", "StructuredPruning": "structured",
    "PathMagnitudeImportance": "structured", "save_structured": "structured",
    "load_structured": "structured", "read_structured_certificate": "structured",
}

__all__ = ["CRITERIA", "LayerRule", "PathMagnitudeImportance", "PruningPlan",
           "SparsitySearch", "StructuredPruning", "apply_masks",
           "layer_sensitivity", "load_structured", "plot_report", "prune", "prune_channels",
           "pruning_report", "read_structured_certificate", "save_report", "save_structured",
           "search_sparsity", "weight_scores"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
