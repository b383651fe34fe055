"""sweep(): train and estimate over a design (default: n x label noise plus network variants,
with seeds) or a grid of depth, scaling, alpha, width and n; one code path for both."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
import torch
from scipy.stats import f as f_dist
from scipy.stats import rankdata, spearmanr
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from .._runners import runner
from ..errors import ConfigurationError
from ._batch import TrainJob, train_many
from ._data import DataSplit, as_features, as_targets, load_digits_task, load_npz, split_arrays
from ._estimate import ESTIMATE_COLUMNS, EstimateOptions, estimate
from ._model import ScaledResNet
from ._train import TrainRun, progress_enabled, train

__all__ = ["SweepOptions", "SpearmanResult", "sweep", "designed_sweep", "spearman_agreement",
           "resolve_data", "ci95", "design_means", "THEORY_COLUMNS", "SWEEP_COLUMNS",
           "AGREEMENT_COLUMNS", "DEFAULT_SEEDS", "GRID_DEFAULTS", "DesignPoint",
           "default_design", "DESIGN_OPTIONS", "RECOMMENDED_ESTIMATE", "flip_labels",
           "recommend_scaling", "seed_bootstrap_spearman", "gap_groups", "DESIGN_NS",
           "DESIGN_NOISES", "BOOTSTRAP_REPS"]

SweepData = str | DataSplit | tuple[object, object] | tuple[object, object, object, object]

SWEEP_COLUMNS: tuple[str, ...] = ("config", "data", "seed", "lr", "steps_requested",
                                  "train_seconds") + ESTIMATE_COLUMNS + ("notes",)


@dataclass(frozen=True)
class SweepOptions:
    """Fixed settings of a sweep (the grid itself is in :func:`sweep`'s arguments).

    steps, record_every, lr: training (see :func:`train`). head_width: K (default: the
    block width M). hidden_dim: d (default: the number of input features). beta,
    activation: the network. inits: initialisations to cross with the grid. delta:
    confidence of the gap estimate. task: digits task. n_test: digits test size
    (default: every sample not in the largest training set). test_fraction: for user
    arrays (X, y). estimate: options passed to :func:`estimate`.
    """

    steps: int = 300
    record_every: int = 50
    lr: float = 0.5
    head_width: int | None = None
    hidden_dim: int | None = None
    beta: float = 1.0
    activation: str = "tanh"
    inits: tuple[str, ...] = ("mean-field",)
    delta: float = 0.05
    task: str = "odd-even"
    n_test: int | None = None
    test_fraction: float = 0.3
    estimate: EstimateOptions = field(default_factory=EstimateOptions)

    def __post_init__(self) -> None:
        for name in ("steps", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"SweepOptions.{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigurationError(f"SweepOptions.lr must be > 0, got {self.lr!r}")
        if not 0 < self.delta < 1:
            raise ConfigurationError(f"SweepOptions.delta must be in (0, 1), got {self.delta!r}")
        if not 0 < self.test_fraction < 1:
            raise ConfigurationError(f"SweepOptions.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        bad = [i for i in self.inits if i not in ("mean-field", "standard", "paired")]
        if bad or not self.inits:
            raise ConfigurationError(f"SweepOptions.inits must be a non-empty subset of "
                                     f"('mean-field', 'standard', 'paired'), got {self.inits!r}")


@dataclass(frozen=True)
class SpearmanResult:
    """Spearman rank correlation between an estimate column and the measured gap."""

    column: str
    rho: float
    pvalue: float
    n_configs: int
    note: str = ""


def resolve_data(data: SweepData, n_max: int | None, options: SweepOptions, seed: int) -> DataSplit:
    """Turn the ``data`` argument of :func:`sweep` into a split with >= n_max training rows."""
    if isinstance(data, DataSplit):
        split = data
    elif isinstance(data, str):
        if data == "digits" or data.startswith("digits:"):
            task = data.split(":", 1)[1] if ":" in data else options.task
            return load_digits_task(task, n_train=n_max or 500, n_test=options.n_test, seed=seed)
        if data.lower().endswith(".npz"):
            arrays = load_npz(data)
            return resolve_data(arrays, n_max, options, seed)  # type: ignore[arg-type]
        raise ConfigurationError(f"unknown data '{data}'; use 'digits', 'digits:<task>', an "
                                 ".npz path or arrays")
    elif isinstance(data, tuple) and len(data) == 2:
        split = split_arrays(data[0], data[1], n_train=n_max, test_fraction=options.test_fraction,
                             seed=seed)
    elif isinstance(data, tuple) and len(data) == 4:
        Xtr, Xte = as_features(data[0], "X_train"), as_features(data[2], "X_test")
        split = DataSplit(Xtr, as_targets(data[1], Xtr.shape[0], "y_train"), Xte,
                          as_targets(data[3], Xte.shape[0], "y_test"), "arrays")
        if Xtr.shape[1] != Xte.shape[1]:
            raise ConfigurationError("X_train and X_test have different numbers of features")
    else:
        raise ConfigurationError(
            "data must be 'digits', 'digits:<task>', a DataSplit, (X, y) or "
            f"(X_train, y_train, X_test, y_test); got {type(data).__name__}")
    if n_max is not None and n_max > split.n_train:
        raise ConfigurationError(f"n={n_max} exceeds the {split.n_train} training samples available")
    return split


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    out = tuple(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in out):
        raise ConfigurationError(f"sweep: {name} must be a non-empty list of integers >= 1, got {list(values)}")
    return tuple(int(v) for v in out)


def spearman_agreement(table: pd.DataFrame, column: str = "gap_estimate") -> SpearmanResult:
    """Spearman rho between ``column`` and ``measured_gap`` over rows where both are finite."""
    if column not in table.columns or "measured_gap" not in table.columns:
        raise ConfigurationError(f"table needs columns '{column}' and 'measured_gap'")
    est = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    meas = pd.to_numeric(table["measured_gap"], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(est) & np.isfinite(meas)
    k = int(ok.sum())
    if k < 3:
        return SpearmanResult(column, math.nan, math.nan, k, "fewer than 3 configurations with both values")
    if np.ptp(est[ok]) == 0 or np.ptp(meas[ok]) == 0:
        return SpearmanResult(column, math.nan, math.nan, k, "a constant column has no ranking")
    res = spearmanr(est[ok], meas[ok])
    note = "few configurations: treat as indicative" if k < 8 else ""
    return SpearmanResult(column, float(res.statistic), float(res.pvalue), k, note)



AGREEMENT_COLUMNS: tuple[str, ...] = (
    "gap_estimate", "gap_estimate_closed_form", "gap_bound_paper", "kernel_measure",
    "kl_radius", "w2_bound_head", "w2_bound_residual", "rademacher_mc", "rademacher_sqrt_kl",
    "rademacher_tangent", "gap_estimate_tangent", "gap_estimate_optimistic",
    "gap_estimate_stability", "gap_estimate_loo", "gap_estimate_loo_limit")
"""Estimates whose rank agreement with the measured gap a sweep reports."""
DESIGN_AGREEMENT_COLUMNS = AGREEMENT_COLUMNS  # the name the designed sweep used
THEORY_COLUMNS = frozenset({"gap_estimate", "gap_estimate_closed_form", "rademacher_mc",
                            "rademacher_sqrt_kl", "rademacher_tangent", "gap_estimate_tangent",
                            "gap_estimate_optimistic", "gap_estimate_stability",
                            "gap_estimate_loo", "gap_estimate_loo_limit"})
"""Estimates the theory defines only in scope (their agreement is over in-scope rows)."""

RECOMMENDED_ESTIMATE = "gap_estimate_loo"
"""The estimate a sweep ranks in-scope configurations by: the leave-one-out loss of
kernel ridge with the network's tangent kernel at initialisation, minus the train loss.
Chosen on seeds 0-2 of the default design only, among the gap-level estimates that
depend on the network (``gap_estimate_loo_limit`` ranked higher there but is the same
for every network on the same data, so it cannot rank scalings); reported unchanged on
the held-out seeds 3-5 (docs/meanfield.md, "Leave-one-out estimate")."""

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
"""Seeds of the default sweep (the designed one)."""

GRID_DEFAULTS: Mapping[str, tuple[object, ...]] = MappingProxyType({
    "depths": (4, 8, 16, 32), "scalings": ("mean-field", "sqrt", "none"),
    "alphas": (1.0,), "widths": (128,)})
"""What :func:`sweep` fills in for a grid argument left out when another one is given."""


def sweep(
    depths: Sequence[int] | None = None,
    scalings: Sequence[str | float] | None = None,
    *,
    alphas: Sequence[float] | None = None,
    widths: Sequence[int] | None = None,
    ns: Sequence[int] | None = None,
    design: Sequence[DesignPoint] | None = None,
    data: SweepData = "digits",
    options: SweepOptions | None = None,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    executor: object | None = None,
    store: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Train and estimate over a design (the default) or a grid, for one or more seeds.

    **Default** (no grid argument): the designed sweep, :func:`default_design` on digits
    with ``seeds`` (0, 1, 2) and :data:`DESIGN_OPTIONS` (150 steps, light estimators):
    n in {50, 100, 200, 400} x label noise {0, 0.2, 0.4} (noise on the training labels
    only) plus depth, alpha, scaling and init variants, the frozen-features ablation and
    the lazy comparison, so the measured gaps really differ (63 runs, about 36 CPU-s,
    single-threaded). ``design`` runs other :class:`DesignPoint` s the same way. All runs train
    together (:func:`train_many`: particles batched across runs of the same shape), so a
    point agrees to rounding with the same point run in another design. ``seed`` (one
    int) runs the design for that seed alone. Columns ``design``, ``noise``, then
    ``SWEEP_COLUMNS``; ``config`` is the design point's name.

    **Grid** (any of ``depths``, ``scalings``, ``alphas``, ``widths``, ``ns`` given): one
    run per point of ns x widths x ``options.inits`` x alphas x scalings x depths, the
    arguments left out taken from :data:`GRID_DEFAULTS` (depths 4 8 16 32, scalings
    mean-field sqrt none, alpha 1, width 128) and ``options`` from :class:`SweepOptions`
    (300 steps); ``ns`` defaults to 500 for digits and to every training sample for
    arrays; ``data`` may also be a DataSplit, arrays or an ``.npz`` path. Each run trains
    on its own (:func:`train`), so a point gives the same row alone. Columns
    ``SWEEP_COLUMNS`` (out-of-scope estimates are NaN and ``scope`` says why).
    ``executor`` (None: here) runs a grid through :mod:`certcompress.scale` instead
    (``"local"``, ``"ray"``, ``"serial"`` or an executor object; the same rows and
    columns; ``store`` the SQLite results file a stopped sweep resumes from; data by
    name or ``.npz`` path). ``seed`` (default 0) or ``seeds`` (a row per point and seed).

    Both give, in ``table.attrs`` (one summary for both): ``"spearman"``
    (estimate column in :data:`AGREEMENT_COLUMNS` -> rho, p-value, number of points, over
    all rows; in-scope rows for the theory estimates), ``"spearman_means"`` (the same over
    the per-configuration means across seeds, in-scope configurations for the theory
    estimates: the headline figure), ``"spearman_per_seed"``, ``"ratio"``
    (min/median/max of estimate / measured gap over in-scope rows), ``"by_config"`` (per
    configuration: mean and 95% Student-t interval over seeds of the measured gap and
    every estimate), ``"spearman_means_bootstrap"`` (:func:`seed_bootstrap_spearman`),
    ``"gap_groups"`` (:func:`gap_groups`), ``"recommendation"`` (:func:`recommend_scaling`: a depth scaling
    with its estimated risk, measured gap, regime and conditions met), ``"best_estimate"``,
    ``"gap_span"``, ``"in_scope"`` / ``"n_rows"`` / ``"in_scope_designs"``, ``"seeds"``
    and ``"trajectories"`` (per row: flow time, loss, lambda_min(G2), lambda_min(G1+G2)
    and the Gaussian-fit KL at the Gram checkpoints, the per-step losses and the
    per-phase decay rates; not with an executor). The same arguments and seeds give the
    same table.
    """
    grid_args = {"depths": depths, "scalings": scalings, "alphas": alphas, "widths": widths, "ns": ns}
    given = [k for k, v in grid_args.items() if v is not None]
    if seed is not None and seeds is not None:
        raise ConfigurationError("sweep: pass seed= or seeds=, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ConfigurationError(f"sweep: seed must be an integer, got {seed!r}")
    if seeds is not None:
        seeds_t = tuple(seeds)
        if not seeds_t or any(isinstance(s, bool) or not isinstance(s, int | np.integer) for s in seeds_t):
            raise ConfigurationError(f"sweep: seeds must be a non-empty list of integers, got {list(seeds)}")
    if not given:
        if executor is not None or store is not None:
            raise ConfigurationError(
                "sweep: executor= and store= run a grid; the designed sweep trains its runs "
                "batched in this process. Pass a grid (depths=..., scalings=...) to use an executor")
        points = tuple(default_design() if design is None else design)
        run_seeds = (tuple(int(s) for s in seeds) if seeds is not None
                     else DEFAULT_SEEDS if seed is None else (int(seed),))
        return _run_design(points, run_seeds, data, options or DESIGN_OPTIONS, progress)
    if design is not None:
        raise ConfigurationError(f"sweep: pass design= or a grid ({', '.join(given)}), not both")
    opts = options or SweepOptions()
    run_seeds = (tuple(int(s) for s in seeds) if seeds is not None else (0 if seed is None else int(seed),))
    depths_t = _positive_ints("depths", depths if depths is not None else GRID_DEFAULTS["depths"])  # type: ignore[arg-type]
    widths_t = _positive_ints("widths", widths if widths is not None else GRID_DEFAULTS["widths"])  # type: ignore[arg-type]
    ns_t = None if ns is None else _positive_ints("ns", ns)
    scalings_t = tuple(scalings if scalings is not None else GRID_DEFAULTS["scalings"])  # type: ignore[arg-type]
    alphas_t = tuple(alphas if alphas is not None else GRID_DEFAULTS["alphas"])  # type: ignore[arg-type]
    if not scalings_t:
        raise ConfigurationError("sweep: scalings must not be empty")
    if not alphas_t or any(not (isinstance(a, int | float) and a > 0) for a in alphas_t):
        raise ConfigurationError(f"sweep: alphas must be numbers > 0, got {list(alphas_t)}")
    if executor is not None:
        tables = [_sweep_on_executor(depths_t, scalings_t, alphas_t, widths_t, ns_t, data, opts,  # type: ignore[arg-type]
                                     s, progress, executor, store) for s in run_seeds]
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        _summarize(table)
        table.attrs["seeds"] = list(run_seeds)
        return table
    if store is not None:
        raise ConfigurationError("sweep: store= is for runs with an executor; pass executor= "
                                 "('local', 'ray' or 'serial') too")
    n_max = None if ns_t is None else max(ns_t)
    with _single_threaded():
        splits = {s: resolve_data(data, n_max, opts, s) for s in run_seeds}
    ns_run = ns_t or (splits[run_seeds[0]].n_train,)
    points = tuple(
        DesignPoint(f"L={L} {sc} a={alpha:g} M={M} n={n}" + ("" if init == "mean-field" else f" {init}"),
                    n, 0.0, L, scaling=sc, alpha=float(alpha), init=init, width=M, beta=opts.beta)  # type: ignore[arg-type]
        for n, M, init, alpha, sc, L in itertools.product(ns_run, widths_t, opts.inits, alphas_t,
                                                            scalings_t, depths_t))
    table = _run_points(points, splits, opts, progress, batched=False)
    return table.drop(columns=["design", "noise"])


def _sweep_on_executor(
    depths: Sequence[int], scalings: Sequence[str | float], alphas: Sequence[float],
    widths: Sequence[int], ns: Sequence[int] | None, data: SweepData, opts: SweepOptions,
    seed: int, progress: bool, executor: object, store: str | os.PathLike[str] | None,
) -> pd.DataFrame:
    """:func:`sweep` through certcompress.scale (imported only when asked for)."""
    _positive_ints("depths", depths)
    _positive_ints("widths", widths)
    if ns is not None:
        _positive_ints("ns", ns)
    if not isinstance(data, str):
        raise ConfigurationError(
            "sweep: with executor= the data must be 'digits', 'digits:<task>' or an .npz "
            f"path that workers can read, not a {type(data).__name__}; save arrays with "
            "numpy.savez(path, X_train=..., y_train=..., X_test=..., y_test=...) and pass the path")
    with _single_threaded():  # as the local path (in-process executors give the same rows)
        table: pd.DataFrame = runner("meanfield_sweep")(
            tuple(depths), tuple(scalings), executor=executor, store=store, progress=progress,  # type: ignore[arg-type]
            alphas=tuple(alphas), widths=tuple(widths), ns=None if ns is None else tuple(ns),
            data=data, options=opts, seed=seed)
    return table




# ----------------------------------------------------------------- the design
@dataclass(frozen=True)
class DesignPoint:
    """One point of a :func:`sweep` design: n, label-noise fraction, network.

    ``beta``: the head scale; ``trainable``: ``"all"`` or ``"head"`` (the
    frozen-features ablation: only the head particles train).
    """

    name: str
    n: int
    noise: float
    depth: int
    scaling: str | float = "mean-field"
    alpha: float = 1.0
    init: str = "mean-field"
    width: int = 32
    beta: float = 1.0
    trainable: str = "all"


DESIGN_NS: tuple[int, ...] = (50, 100, 200, 400)
"""Training-set sizes of the n x label-noise grid of :func:`default_design`."""
DESIGN_NOISES: tuple[float, ...] = (0.0, 0.2, 0.4)
"""Label-noise fractions of that grid."""


def default_design() -> tuple[DesignPoint, ...]:
    """n in {50, 100, 200, 400} x label noise {0, 0.2, 0.4} at L = 4 (mean-field
    scaling; the 12 cells named ``n=<n> noise=<q>``), plus depth (L = 16), alpha (0.25,
    4), scaling (sqrt, none) and init (standard, paired) variants at n = 100, noise 0.2,
    and two comparison rows at the same n and noise: the frozen-features ablation
    (``head-only``: only the head trains) and the lazy comparison (``lazy: standard init,
    beta=10``): 21 configurations whose gaps differ."""
    pts = [DesignPoint(f"n={n} noise={q:g}", n, q, 4) for n in DESIGN_NS for q in DESIGN_NOISES]
    base = {"n": 100, "noise": 0.2}
    pts += [
        DesignPoint("L=16", depth=16, **base),  # type: ignore[arg-type]
        DesignPoint("alpha=0.25", depth=4, alpha=0.25, **base),  # type: ignore[arg-type]
        DesignPoint("alpha=4", depth=4, alpha=4.0, **base),  # type: ignore[arg-type]
        DesignPoint("scaling=sqrt L=16", depth=16, scaling="sqrt", **base),  # type: ignore[arg-type]
        DesignPoint("scaling=none L=16", depth=16, scaling="none", **base),  # type: ignore[arg-type]
        DesignPoint("init=standard", depth=4, init="standard", **base),  # type: ignore[arg-type]
        DesignPoint("init=paired", depth=4, init="paired", **base),  # type: ignore[arg-type]
        DesignPoint("head-only", depth=4, trainable="head", **base),  # type: ignore[arg-type]
        DesignPoint("lazy: standard init, beta=10", 100, 0.2, 4, init="standard", beta=10.0),
    ]
    return tuple(pts)


DESIGN_OPTIONS = SweepOptions(
    steps=150, record_every=25, lr=0.5, task="odd-even", n_test=500,
    estimate=EstimateOptions(max_checkpoints=4, knn_repeats=2, bootstrap=4, mc_particles=512,
                             mc_signs=16, hermite_order=8))
"""Options of a :func:`sweep` design (the default sweep): short training and light
estimators (fast); a grid defaults to ``SweepOptions()``."""


def flip_labels(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A copy of +-1 targets with round(fraction * n) of them (chosen at random) negated."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigurationError(f"label noise must be in [0, 1), got {fraction}")
    out = np.array(y, dtype=np.float64, copy=True)
    k = int(round(fraction * out.shape[0]))
    if k:
        idx = np.random.default_rng(seed).choice(out.shape[0], size=k, replace=False)
        out[idx] = -out[idx]
    return out


def _spearman_ci(table: pd.DataFrame, column: str) -> dict[str, object]:
    """:func:`spearman_agreement` as a dict (``n_points`` and its older name ``n_configs``)."""
    res = spearman_agreement(table, column)
    return {"column": column, "rho": res.rho, "pvalue": res.pvalue, "n_points": res.n_configs,
            "n_configs": res.n_configs, "note": res.note}


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One BLAS / torch thread: these matrices are small, and on a shared or loaded
    machine multi-threaded BLAS on them is many times slower (measured: 30-50 s instead
    of 2 s for one n = 400 estimate at load 10 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits  # a scikit-learn dependency
        except ImportError:  # pragma: no cover - scikit-learn always brings it
            yield
            return
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)



def designed_sweep(
    design: Sequence[DesignPoint] | None = None,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    data: str = "digits",
    options: SweepOptions | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`sweep` with a design: ``sweep(design=design, seeds=seeds, ...)`` (the
    default of :func:`sweep`; kept under this name for existing callers)."""
    return sweep(design=default_design() if design is None else design, seeds=seeds,
                 data=data, options=options, progress=progress)


def _run_design(points: tuple[DesignPoint, ...], seeds: tuple[int, ...], data: SweepData,
                opts: SweepOptions, progress: bool) -> pd.DataFrame:
    """The design branch of :func:`sweep`: check the points, split once per seed, run batched."""
    if not points:
        raise ConfigurationError("sweep: the design is empty")
    for pt in points:
        if not isinstance(pt, DesignPoint):
            raise ConfigurationError(f"sweep: design must hold DesignPoint objects, got {type(pt).__name__}")
        if pt.trainable not in ("all", "head"):
            raise ConfigurationError(f"sweep: design point {pt.name}: trainable must be 'all' or "
                                     f"'head', got {pt.trainable!r}")
    names = [pt.name for pt in points]
    if len(set(names)) != len(names):
        raise ConfigurationError("sweep: design point names must be unique (they key the summary)")
    # the digits split (and its standardisation) must not depend on which points are run,
    # so that a design point gives the same row alone or in a larger design
    n_max = max(p.n for p in points)
    if isinstance(data, str) and (data == "digits" or data.startswith("digits:")):
        n_max = max(400, n_max)
    with _single_threaded():
        splits = {s: resolve_data(data, n_max, opts, s) for s in seeds}
    return _run_points(points, splits, opts, progress, batched=True)


def _run_points(points: tuple[DesignPoint, ...], splits: dict[int, DataSplit], opts: SweepOptions,
                progress: bool, *, batched: bool) -> pd.DataFrame:
    """Train and estimate every point for every seed (a row each, seed-major) and attach
    the summary: the one code path of :func:`sweep`. ``batched``: train every run together
    (:func:`train_many`); else each on its own (:func:`train`), so a row does not depend
    on the other points."""
    keys = [(s, p) for s in splits for p in points]
    with _single_threaded():
        jobs: list[TrainJob] = []
        for seed, pt in keys:  # every network is built (and checked) before any training
            split = splits[seed]
            p_in = split.input_dim
            net = ScaledResNet(opts.hidden_dim or p_in, pt.depth, pt.width, opts.head_width or pt.width,
                               pt.scaling, pt.alpha, pt.beta, activation=opts.activation,  # type: ignore[arg-type]
                               init=pt.init, input_dim=p_in, seed=seed)  # type: ignore[arg-type]
            jobs.append(TrainJob(net, split.X_train[:pt.n],
                                 flip_labels(split.y_train[:pt.n], pt.noise, seed + 7919),
                                 pt.trainable))
        t0 = time.perf_counter()
        runs: list[TrainRun | None] = (
            list(train_many(jobs, steps=opts.steps, record_every=opts.record_every, lr=opts.lr))
            if batched else [None] * len(jobs))
        train_total = time.perf_counter() - t0
        rows = []
        trajectories: dict[str, object] = {}
        bar = tqdm(list(zip(keys, jobs, runs, strict=True)), desc="meanfield sweep",
                   disable=not progress_enabled(progress))
        for (seed, pt), job, maybe_run in bar:
            bar.set_postfix_str(pt.name)
            split = splits[seed]
            run = maybe_run
            if run is None:
                run = (train(job.net, job.X, job.y, steps=opts.steps, record_every=opts.record_every,
                             lr=opts.lr) if job.trainable == "all" else
                       train_many([job], steps=opts.steps, record_every=opts.record_every, lr=opts.lr)[0])
            est = estimate(run, job.X, job.y, split.X_test, split.y_test, opts.delta,
                           options=opts.estimate, seed=seed)
            rows.append({"design": pt.name, "noise": pt.noise, "config": pt.name, "data": split.name,
                         "seed": seed, "lr": run.lr, "steps_requested": opts.steps,
                         "train_seconds": run.wall_seconds, **est.as_row(),
                         "notes": "; ".join(est.notes)})
            trajectories[f"{pt.name}|{seed}"] = {
                "design": pt.name, "seed": seed, "beta": pt.beta, "n": pt.n,
                "trainable": pt.trainable, "lr": run.lr,
                "checkpoints": [dataclasses.asdict(g) for g in est.trajectory],
                "phases": [dataclasses.asdict(ph) for ph in est.phase_rates],
                "losses": list(run.losses)}
        bar.close()
    table = pd.DataFrame(rows, columns=["design", "noise", *SWEEP_COLUMNS])
    for col in ("rademacher_closed_form", "rademacher_mc", "rademacher_mc_stderr", "rademacher_sqrt_kl",
                "gap_estimate", "gap_estimate_closed_form", "train_error", "test_error"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    _summarize(table)
    table.attrs["seeds"] = list(splits)
    table.attrs["trajectories"] = trajectories
    table.attrs["train_seconds_total"] = train_total if batched else float(table["train_seconds"].sum())
    return table


def ci95(v: np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean (NaN for one value)."""
    if v.size < 2:
        return math.nan
    return float(student_t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def design_means(table: pd.DataFrame, columns: Sequence[str], by: str = "config") -> pd.DataFrame:
    """Per-configuration (``by``) means over seeds of ``columns`` plus ``in_scope`` (every seed in scope)."""
    num = table[[by, *columns]].copy()
    for c in columns:
        num[c] = pd.to_numeric(num[c], errors="coerce")
    means = num.groupby(by, sort=False).mean()
    means["in_scope"] = table.groupby(by, sort=False)["in_scope"].apply(
        lambda v: bool(v.astype(bool).all()))
    return means



def _summarize(table: pd.DataFrame) -> None:
    """The ``attrs`` summary of a :func:`sweep` table (design or grid, one or more seeds),
    per configuration (the ``config`` column) over seeds."""
    # the summary is built aside and attached at the end: pandas deep-copies attrs into
    # every slice, and the slices below would copy the growing summary each time
    kept = dict(table.attrs)
    table.attrs = {}
    attrs: dict[str, object] = {}
    in_scope = table["in_scope"].astype(bool)
    attrs["n_rows"] = int(len(table))
    attrs["in_scope"] = int(in_scope.sum())
    cols = [c for c in AGREEMENT_COLUMNS if c in table.columns]
    sp, sp_means, sp_seed, ratio = {}, {}, {}, {}
    means = design_means(table, ["measured_gap", *cols])
    for col in cols:
        theory = col in THEORY_COLUMNS
        sub = table[in_scope] if theory else table
        sp[col] = _spearman_ci(sub, col)
        msub = means[means["in_scope"]] if theory else means
        sp_means[col] = _spearman_ci(msub, col)
        sp_seed[col] = {str(s): _spearman_ci(g, col)
                        for s, g in sub.groupby("seed", sort=True)}
        r = (pd.to_numeric(table.loc[in_scope, col], errors="coerce")
             / pd.to_numeric(table.loc[in_scope, "measured_gap"], errors="coerce")).to_numpy(dtype=np.float64)
        r = r[np.isfinite(r)]
        ratio[col] = ({"min": float(r.min()), "median": float(np.median(r)), "max": float(r.max())}
                      if r.size else {})
    attrs["spearman"] = sp
    attrs["spearman_means"] = sp_means
    ranked = [c for c in cols if math.isfinite(float(sp_means[c]["rho"]))]  # type: ignore[arg-type]
    best = max(ranked, key=lambda c: float(sp_means[c]["rho"]), default=None)  # type: ignore[arg-type]
    attrs["best_estimate"] = {
        "column": best, **({} if best is None else sp_means[best]),
        "note": "the estimate with the highest Spearman over per-design means on THIS table; "
                "selected after the fact, so confirm it on other seeds before relying on it"}
    attrs["spearman_per_seed"] = sp_seed
    attrs["spearman_means_bootstrap"] = seed_bootstrap_spearman(table, cols)
    attrs["gap_groups"] = gap_groups(table)
    attrs["ratio"] = ratio
    gaps = means.loc[means["in_scope"], "measured_gap"].to_numpy(dtype=np.float64)
    gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
    attrs["gap_span"] = float(gaps.max() / gaps.min()) if gaps.size else math.nan
    attrs["in_scope_designs"] = int(means["in_scope"].sum())
    by: dict[str, dict[str, object]] = {}
    for name, sub in table.groupby("config", sort=False):
        entry: dict[str, object] = {"n_seeds": int(len(sub)), "in_scope": bool(sub["in_scope"].all()),
                                    "regime": str(sub["regime"].iloc[0])}
        for col in ("measured_gap", *cols, "train_loss", "test_loss",
                    "rademacher_closed_form", "kl_gaussian_head", "kl_knn_head",
                    "kl_gaussian_residual", "kl_knn_residual", "w2_bound_residual",
                    "Lambda_s", "Lambda_G2", "kl_bound_paper", "rademacher_paper",
                    "lambda_min_G2_init", "lambda_min_G2_final", "lambda_min_G12_final",
                    "move_head", "move_residual", "gram_change", "loo_loss", "loo_loss_limit",
                    "decay_rate_late_measured", "decay_rate_late_predicted"):
            v = pd.to_numeric(sub[col], errors="coerce").to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                entry[col] = {"mean": float(v.mean()), "ci95": ci95(v)}
        by[str(name)] = entry
    attrs["by_config"] = by
    attrs["recommendation"] = recommend_scaling(table)
    table.attrs = {**kept, **attrs}



BOOTSTRAP_REPS = 2000
"""Seed resamples of :func:`seed_bootstrap_spearman`."""


def seed_bootstrap_spearman(table: pd.DataFrame, columns: Sequence[str], *,
                            reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, dict[str, float]]:
    """Seed-bootstrap interval of the Spearman over per-configuration means.

    Each resample draws the table's seeds with replacement (a whole seed at a time: every
    configuration of a seed shares its split and label flips), takes each
    configuration's mean of the estimate and of the measured gap over the drawn seeds,
    and computes Spearman over the configurations (in-scope ones for the
    :data:`THEORY_COLUMNS`, as ``spearman_means``). Returns per column ``lo`` and ``hi``
    (the 2.5% and 97.5% quantiles), ``median`` and ``reps`` (resamples where both
    vary); ``{}`` with fewer than 2 seeds. The same table gives the same interval.
    """
    if "seed" not in table.columns or table["seed"].nunique() < 2:
        return {}
    seeds = np.array(sorted(table["seed"].unique()))
    draws = np.random.default_rng(seed).integers(0, seeds.size, size=(reps, seeds.size))
    counts = np.stack([np.bincount(d, minlength=seeds.size) for d in draws]).astype(np.float64)
    in_scope = table.groupby("config", sort=False)["in_scope"].apply(lambda v: bool(v.astype(bool).all()))
    out: dict[str, dict[str, float]] = {}
    for col in columns:
        keep = in_scope[in_scope].index if col in THEORY_COLUMNS else in_scope.index
        arrays = []
        for c in (col, "measured_gap"):
            piv = (table.assign(_v=pd.to_numeric(table[c], errors="coerce"))
                   .pivot_table(index="config", columns="seed", values="_v", aggfunc="mean")
                   .reindex(index=keep, columns=seeds))
            arrays.append(piv.to_numpy(dtype=np.float64))
        est, gap = arrays
        ok = np.isfinite(est).all(1) & np.isfinite(gap).all(1)
        if ok.sum() < 3:
            continue
        w = counts / counts.sum(1, keepdims=True)  # (reps, seeds)
        m_est, m_gap = est[ok] @ w.T, gap[ok] @ w.T  # (configs, reps)
        r_est, r_gap = rankdata(m_est, axis=0), rankdata(m_gap, axis=0)
        r_est -= r_est.mean(0)
        r_gap -= r_gap.mean(0)
        den = np.sqrt((r_est**2).sum(0) * (r_gap**2).sum(0))
        valid = den > 0
        rho = (r_est * r_gap).sum(0)[valid] / den[valid]
        if rho.size:
            out[col] = {"lo": float(np.quantile(rho, 0.025)), "median": float(np.median(rho)),
                        "hi": float(np.quantile(rho, 0.975)), "reps": int(rho.size)}
    return out


def gap_groups(table: pd.DataFrame, *, in_scope_only: bool = True) -> dict[str, dict[str, object]]:
    """Whether configurations trained on the same data differ in measured gap.

    Configurations with equal ``n_train`` and ``noise`` (where the table has a noise
    column) see the same split and label flips per seed; ``in_scope_only``: only the
    configurations in scope on every seed (those ``spearman_means`` ranks the theory
    estimates over). For each such group of two or
    more configurations with the same two or more seeds: a two-way analysis of variance
    of the per-run gap (configuration + seed as a block, no interaction), ``F`` and
    ``pvalue`` for "the configurations' mean gaps are equal", the ``configs``, their
    ``gap_means`` and the ``seeds`` used. A large p-value says the gaps of the group are
    not distinguishable with these seeds: an estimate's ordering *within* the group then
    cannot be checked by this table.
    """
    keys = [k for k in ("n_train", "noise") if k in table.columns]
    if not keys or "seed" not in table.columns:
        return {}
    if in_scope_only:
        ok = table.groupby("config")["in_scope"].transform(lambda v: bool(v.astype(bool).all()))
        table = table[ok.astype(bool)]
    out: dict[str, dict[str, object]] = {}
    for key, grp in table.groupby(keys, sort=True):
        piv = (grp.assign(_g=pd.to_numeric(grp["measured_gap"], errors="coerce"))
               .pivot_table(index="config", columns="seed", values="_g", aggfunc="mean"))
        piv = piv.dropna(axis=1, how="any")
        k, s = piv.shape
        if k < 2 or s < 2:
            continue
        x = piv.to_numpy(dtype=np.float64)
        grand = x.mean()
        ss_conf = s * float(((x.mean(1) - grand) ** 2).sum())
        resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + grand
        ss_res = float((resid**2).sum())
        df1, df2 = k - 1, (k - 1) * (s - 1)
        tiny = 1e-12 * float(((x - grand) ** 2).sum()) + 1e-300  # rounding of equal values
        if ss_conf <= tiny:
            F = 0.0
        else:
            F = (ss_conf / df1) / (ss_res / df2) if ss_res > tiny else math.inf
        label = " ".join(f"{name}={v:g}" for name, v in zip(keys, key if isinstance(key, tuple) else (key,),
                                                            strict=True))
        out[label] = {"configs": [str(c) for c in piv.index],
                      "gap_means": [float(v) for v in x.mean(1)],
                      "seeds": [int(c) for c in piv.columns], "F": float(F),
                      "pvalue": float(f_dist.sf(F, df1, df2)) if math.isfinite(F) else 0.0}
    return out


def recommend_scaling(table: pd.DataFrame) -> dict[str, object]:
    """The depth scaling with the smallest estimated risk (train loss + the recommended
    estimate) among in-scope rows, with the evidence per in-scope scaling:
    ``estimated_risk``, ``measured_gap`` and ``test_loss`` (means over its in-scope rows,
    each with ``*_ci95``: the 95% Student-t half-width over seeds of the per-seed means;
    NaN with one seed), ``conditions_met`` (the fraction of its rows meeting the theorem's
    conditions), ``regimes`` (the audit's labels) and ``rows``; ``{"scaling": None, ...}``
    when nothing is in scope."""
    ok = table["in_scope"].astype(bool)
    if not ok.any():
        return {"scaling": None, "reason": "no configuration is in the theorem's scope"}
    sub = table[ok].copy()
    sub["scaling"] = sub["scaling"].astype(str)
    sub["estimated_risk"] = (pd.to_numeric(sub["train_loss"], errors="coerce")
                             + pd.to_numeric(sub[RECOMMENDED_ESTIMATE], errors="coerce"))
    for col in ("measured_gap", "test_loss"):
        sub[col] = pd.to_numeric(sub[col], errors="coerce")
    sub["conditions_met"] = sub["conditions_met"].astype(bool).astype(float)
    seed_col = "seed" if "seed" in sub.columns else None
    evidence: dict[str, dict[str, object]] = {}
    for sc, g in sub.groupby("scaling", sort=True):
        entry: dict[str, object] = {}
        for col in ("estimated_risk", "measured_gap", "test_loss"):
            entry[col] = float(g[col].mean())
            per_seed = (g.groupby(seed_col)[col].mean() if seed_col else g[col]).to_numpy(dtype=np.float64)
            entry[f"{col}_ci95"] = ci95(per_seed[np.isfinite(per_seed)])
        entry["conditions_met"] = float(g["conditions_met"].mean())
        entry["regimes"] = sorted(set(g["regime"].astype(str))) if "regime" in g.columns else []
        entry["rows"] = int(len(g))
        evidence[str(sc)] = entry
    risks = {k: float(v["estimated_risk"]) for k, v in evidence.items()  # type: ignore[arg-type]
             if math.isfinite(float(v["estimated_risk"]))}  # type: ignore[arg-type]
    if not risks:
        return {"scaling": None, "estimate": RECOMMENDED_ESTIMATE, "evidence": evidence,
                "reason": f"no in-scope row has a finite {RECOMMENDED_ESTIMATE}"}
    best = min(risks, key=risks.__getitem__)
    # scalings with no in-scope configuration at all
    out_scope = sorted(set(table.loc[~ok, "scaling"].astype(str)) - set(sub["scaling"]))
    return {"scaling": best, "estimate": RECOMMENDED_ESTIMATE,
            "evidence": evidence,
            "matched": _matched_scalings(table, best),
            "out_of_scope_scalings": out_scope,
            "reason": (f"smallest mean train loss + {RECOMMENDED_ESTIMATE} among in-scope "
                       "configurations; out-of-scope scalings cannot be ranked by the theory, "
                       "so 'matched' compares every scaling on configurations that differ only "
                       "in the scaling (measured gap and test loss with 95% t-intervals over "
                       "seeds, regime, in-scope and conditions-met fractions)")}


_MATCH_KEYS = ("n_train", "noise", "depth", "alpha", "init", "beta", "trainable", "width")


def _matched_scalings(table: pd.DataFrame, best: str) -> dict[str, dict[str, object]]:
    """Evidence per scaling over configurations run with two or more scalings and
    otherwise equal (n, noise, depth, alpha, init, beta, trainable, width);
    ``gap_minus_best``: the measured gap minus that of scaling ``best`` on the same
    configuration and seed (paired: the same data split and label flips), mean and 95%
    t-interval."""
    keys = [k for k in _MATCH_KEYS if k in table.columns]
    if "scaling" not in table.columns or not keys:
        return {}
    t = table.copy()
    t["_key"] = t[keys].astype(str).agg("|".join, axis=1)
    shared = t.groupby("_key")["scaling"].nunique()
    t = t[t["_key"].isin(shared[shared >= 2].index)]
    out: dict[str, dict[str, object]] = {}
    for sc, sub in t.groupby(t["scaling"].astype(str), sort=True):
        entry: dict[str, object] = {
            "rows": int(len(sub)), "regimes": sorted(set(sub["regime"].astype(str))),
            "in_scope_fraction": float(sub["in_scope"].astype(bool).mean()),
            "conditions_met_fraction": float(sub["conditions_met"].astype(bool).mean()),
            "configurations": sorted(set(sub["_key"]))}
        for col in ("measured_gap", "test_loss", "train_loss"):
            v = pd.to_numeric(sub[col], errors="coerce").to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            entry[col] = {"mean": float(v.mean()) if v.size else math.nan, "ci95": ci95(v)}
        out[str(sc)] = entry
    ref = t[t["scaling"].astype(str) == best].set_index(["_key", "seed"])["measured_gap"]
    for sc, sub in t.groupby(t["scaling"].astype(str), sort=True):
        if sc == best or ref.empty:
            continue
        mine = sub.set_index(["_key", "seed"])["measured_gap"]
        both = mine.index.intersection(ref.index)
        d = (pd.to_numeric(mine[both]) - pd.to_numeric(ref[both])).to_numpy(dtype=np.float64)
        d = d[np.isfinite(d)]
        out[str(sc)]["gap_minus_best"] = {"mean": float(d.mean()) if d.size else math.nan,
                                          "ci95": ci95(d), "pairs": int(d.size)}
    return out
