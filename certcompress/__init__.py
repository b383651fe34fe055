"""certcompress: compress neural networks with certified output-deviation bounds.

The data path is visible in the layout: ``capture`` (model -> torch.fx graph -> IR via
adapters and plugins), ``ir`` (the typed ReLU-DAG), ``bounds`` (path-norms,
path-metrics, the baseline), ``certificate`` and ``api`` (certify), then ``compress``
(pruning, quantization), ``export`` (ONNX), ``scale`` (sweeps, results store) and
``meanfield`` (generalization estimates for ResNets).

Every public name is imported on first use (PEP 562), so ``import certcompress`` (and
the command line's ``--help``) does not import torch; type checkers see the names through
the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from .api import (
        TraceCheckReport,
        certify,
        check_trace,
        input_spec_for,
        path_magnitude_scores,
        path_metric,
        path_norm,
        trace,
    )
    from .bounds import Baseline, PathMetric, PathNorm
    from .bounds.tiers import GraphPair, Tier, TierBound, TierRegistry, tier_registry
    from .capture import Adapter, AdapterRegistry, Plugin, load_plugin
    from .certificate import (
        BoundsDetails,
        Certificate,
        Measurements,
        MethodBound,
        PathMetricDetails,
        TierDetails,
    )
    from .digest import parameter_digest
    from .domain import InputDomain, InputSpec
    from .errors import (
        CertcompressError,
        CertificateError,
        ConfigurationError,
        GraphMismatchError,
        ModelLoadError,
        NumericalRangeError,
        PluginError,
        SoundnessError,
        TrainModeError,
        UnsupportedModelError,
        VerificationError,
    )
    from .ir import Graph, IRNode, NodeKind
    from .measure import SearchOptions
    from .resolve import resolve_domain

# name -> module defining it; imported on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    **dict.fromkeys(["certify", "input_spec_for", "path_magnitude_scores", "path_metric",
                     "path_norm", "trace", "check_trace", "TraceCheckReport"],
                    "certcompress.api"),
    **dict.fromkeys(["Baseline", "PathMetric", "PathNorm"], "certcompress.bounds"),
    **dict.fromkeys(["Tier", "TierBound", "TierRegistry", "GraphPair", "tier_registry"],
                    "certcompress.bounds.tiers"),
    "resolve_domain": "certcompress.resolve",
    "SearchOptions": "certcompress.measure",
    **dict.fromkeys(["Adapter", "AdapterRegistry", "Plugin", "load_plugin"],
                    "certcompress.capture"),
    "load_onnx": "certcompress.capture.onnx",
    **dict.fromkeys(["export_w8a8", "W8A8Export"], "certcompress.export.w8a8"),
    **dict.fromkeys(["Certificate", "Measurements", "MethodBound", "TierDetails",
                     "PathMetricDetails", "BoundsDetails"], "certcompress.certificate"),
    "parameter_digest": "certcompress.digest",
    **dict.fromkeys(["InputDomain", "InputSpec"], "certcompress.domain"),
    **dict.fromkeys(["CertcompressError", "CertificateError", "ConfigurationError",
                     "GraphMismatchError", "ModelLoadError", "NumericalRangeError",
                     "PluginError", "SoundnessError", "TrainModeError",
                     "UnsupportedModelError", "VerificationError"], "certcompress.errors"),
    **dict.fromkeys(["Graph", "IRNode", "NodeKind"], "certcompress.ir"),
    **dict.fromkeys(
        ["PruningPlan", "LayerRule", "SparsitySearch", "StructuredPruning", "prune",
         "prune_channels", "search_sparsity", "pruning_report", "layer_sensitivity",
         "load_structured"], "certcompress.compress.pruning"),
    **dict.fromkeys(
        ["QuantConfig", "LayerQuant", "BitAllocation", "quantize", "choose_bitwidths",
         "equalize", "sensitivity_table", "apriori_bound", "bits_for_budget",
         "compare_with_ort", "write_report"],
        "certcompress.compress.quantization"),
    **dict.fromkeys(["export_onnx", "verify_onnx", "VerificationReport", "VerificationFailed",
                     "generate_signing_key"], "certcompress.export"),
    **dict.fromkeys(["certify_local", "LocalCertificate"], "certcompress.bounds.local"),
    **dict.fromkeys(["estimate_costs", "CostEstimate", "TierCost"], "certcompress.bounds.cost"),
    **dict.fromkeys(["certify_statistical", "StatisticalCertificate"],
                    "certcompress.bounds.statistical"),
    **dict.fromkeys(["sweep", "results", "ResultStore", "load_manifest"], "certcompress.scale"),
    **dict.fromkeys(["zeroed_equivalent", "dequantized_copy"], "certcompress.interop"),
    **dict.fromkeys(["verify_equivalence", "EquivalenceResult", "read_vnnlib"],
                    "certcompress.equivalence"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name == "meanfield":
            return importlib.import_module("certcompress.meanfield")
        raise AttributeError(f"module 'certcompress' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
