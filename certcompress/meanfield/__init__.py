"""Mean-field estimates of the generalization risk of scaled ResNets.

Based on Chen, Liu, Lu, Chrysos, Cevher, "Generalization of Scaled Deep ResNets in the
Mean-Field Regime" (ICLR 2024): asymptotic results without explicit constants, so this
subpackage produces ESTIMATES with stated assumptions, next to what is measured, and
says "out of scope" where the theory does not apply. See docs/meanfield.md.

    from certcompress import meanfield as mf
    net = mf.ScaledResNet(d=64, depth=16, width=256, head_width=256, scaling="mean-field")
    run = mf.train(net, X_train, y_train, steps=300, record_every=25)
    est = mf.estimate(run, X_train, y_train, X_test, y_test, delta=0.05)
    print(est.summary())

    table = mf.sweep()  # the default: n x label noise + variants, seeds 0 1 2 (~1 min)
    print(table.attrs["recommendation"]["scaling"], table.attrs["spearman_means"])
"""

from __future__ import annotations

from ._audit import (
    ALPHA_MAX,
    BETA_LARGE,
    LAZY_GRAM,
    LAZY_MOVE,
    AuditReport,
    BlockInfo,
    LazinessMeasurement,
    audit,
    laziness,
)
from ._batch import TrainJob, train_many
from ._compress import (
    MagnitudePrune,
    RoundToGrid,
    compression_effect,
    magnitude_prune,
    round_to_grid,
)
from ._data import DataSplit, load_digits_task
from ._estimate import (
    ESTIMATE_COLUMNS,
    EstimateOptions,
    GramPoint,
    MeanFieldEstimate,
    PhaseRate,
    estimate,
)
from ._gram import GramPair, gram_matrices, gram_traces
from ._kl import KLEstimate, gaussian_kl, knn_kl
from ._loo import flow_ridge, kernel_ridge_loo
from ._model import Particles, PriorSpec, ResNetConfig, ScaledResNet
from ._plots import plot_design, plot_sweep, plot_training
from ._rademacher import rademacher_closed_form, rademacher_monte_carlo
from ._sweep import (
    AGREEMENT_COLUMNS,
    DEFAULT_SEEDS,
    DESIGN_NOISES,
    DESIGN_NS,
    DESIGN_OPTIONS,
    GRID_DEFAULTS,
    RECOMMENDED_ESTIMATE,
    SWEEP_COLUMNS,
    THEORY_COLUMNS,
    DesignPoint,
    SpearmanResult,
    SweepOptions,
    default_design,
    design_means,
    designed_sweep,
    flip_labels,
    gap_groups,
    recommend_scaling,
    seed_bootstrap_spearman,
    spearman_agreement,
    sweep,
)
from ._train import Checkpoint, TrainRun, train
from ._transport import exact_w2, w2_coupling_bound

__all__ = [
    "AGREEMENT_COLUMNS",
    "THEORY_COLUMNS",
    "design_means",
    "DEFAULT_SEEDS",
    "DESIGN_NS",
    "DESIGN_NOISES",
    "DESIGN_OPTIONS",
    "GRID_DEFAULTS",
    "RECOMMENDED_ESTIMATE",
    "DesignPoint",
    "default_design",
    "designed_sweep",
    "flip_labels",
    "recommend_scaling",
    "seed_bootstrap_spearman",
    "gap_groups",
    "kernel_ridge_loo",
    "flow_ridge",
    "plot_design",
    "plot_training",
    "PhaseRate",
    "TrainJob",
    "train_many",
    "ALPHA_MAX",
    "BETA_LARGE",
    "LAZY_GRAM",
    "LAZY_MOVE",
    "LazinessMeasurement",
    "laziness",
    "AuditReport",
    "BlockInfo",
    "Checkpoint",
    "DataSplit",
    "ESTIMATE_COLUMNS",
    "EstimateOptions",
    "GramPair",
    "GramPoint",
    "KLEstimate",
    "MagnitudePrune",
    "MeanFieldEstimate",
    "Particles",
    "PriorSpec",
    "ResNetConfig",
    "RoundToGrid",
    "SWEEP_COLUMNS",
    "ScaledResNet",
    "SpearmanResult",
    "SweepOptions",
    "TrainRun",
    "audit",
    "compression_effect",
    "estimate",
    "exact_w2",
    "gaussian_kl",
    "gram_matrices",
    "gram_traces",
    "knn_kl",
    "load_digits_task",
    "magnitude_prune",
    "plot_sweep",
    "rademacher_closed_form",
    "rademacher_monte_carlo",
    "round_to_grid",
    "spearman_agreement",
    "sweep",
    "train",
    "w2_coupling_bound",
]
