"""The bound engine: path-norms, path-metrics and the operator-norm baseline, in float64
on the IR (docs/path-metrics.md)."""

from .baseline import Baseline, operator_norm_baseline
from .passes import DifferencePass, MagnitudePass
from .pathmetric import PathMetric, graph_path_metric
from .pathnorm import PathNorm, graph_path_norm, path_magnitude_scores

__all__ = ["Baseline", "DifferencePass", "MagnitudePass", "PathMetric", "PathNorm",
           "graph_path_metric", "graph_path_norm", "operator_norm_baseline",
           "path_magnitude_scores"]
