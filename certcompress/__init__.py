"""certcompress: compress neural networks with certified output-deviation bounds.

The data path is visible in the layout: ``capture`` (model -> torch.fx graph -> IR via
adapters and plugins), ``ir`` (the typed ReLU-DAG), ``bounds`` (path-norms,
path-metrics, the baseline), ``certificate`` and ``api`` (certify).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import certify, input_spec_for, path_magnitude_scores, path_metric, path_norm, trace
from .bounds import Baseline, PathMetric, PathNorm
from .capture import Adapter, AdapterRegistry, Plugin, load_plugin
from .certificate import Certificate, Measurements
from .digest import parameter_digest
from .domain import InputSpec
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

__all__ = [
    "Adapter", "AdapterRegistry", "Baseline", "CertcompressError", "Certificate",
    "CertificateError", "ConfigurationError", "Graph", "GraphMismatchError", "IRNode",
    "InputSpec", "Measurements", "ModelLoadError", "NodeKind", "NumericalRangeError",
    "PathMetric", "PathNorm", "Plugin", "PluginError", "SoundnessError", "TrainModeError",
    "UnsupportedModelError", "VerificationError", "__version__", "certify",
    "input_spec_for", "load_plugin", "parameter_digest", "path_magnitude_scores",
    "path_metric", "path_norm", "trace",
]
