"""sweep(): train and estimate over a grid of depth, scaling, alpha, width and n."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from .._runners import runner
from ..errors import ConfigurationError
from ._data import DataSplit, as_features, as_targets, load_digits_task, load_npz, split_arrays
from ._estimate import ESTIMATE_COLUMNS, EstimateOptions, estimate
from ._model import ScaledResNet
from ._train import progress_enabled, train

__all__ = ["SweepOptions", "SpearmanResult", "sweep", "spearman_agreement", "resolve_data",
           "SWEEP_COLUMNS", "AGREEMENT_COLUMNS"]

SweepData = str | DataSplit | tuple[object, object] | tuple[object, object, object, object]

SWEEP_COLUMNS: tuple[str, ...] = ("config", "data", "seed", "lr", "steps_requested",
                                  "train_seconds") + ESTIMATE_COLUMNS + ("notes",)
AGREEMENT_COLUMNS: tuple[str, ...] = ("gap_estimate", "gap_estimate_closed_form",
                                      "kernel_measure", "kl_radius", "w2_bound_residual")


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


def sweep(
    depths: Sequence[int] = (4, 8, 16, 32),
    scalings: Sequence[str | float] = ("mean-field", "sqrt", "none"),
    *,
    alphas: Sequence[float] = (1.0,),
    widths: Sequence[int] = (128,),
    ns: Sequence[int] | None = None,
    data: SweepData = "digits",
    options: SweepOptions | None = None,
    seed: int = 0,
    progress: bool = True,
    executor: object | None = None,
    store: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Train a ScaledResNet for every grid point and tabulate :func:`estimate`.

    Returns a DataFrame with one row per configuration and the columns
    ``SWEEP_COLUMNS`` (out-of-scope estimates are NaN and ``scope`` says why). The
    Spearman agreement of each estimate in ``AGREEMENT_COLUMNS`` with the measured gap
    is in ``table.attrs["spearman"]`` (column -> dict). ``ns`` defaults to 500 for
    digits and to every training sample for arrays. ``seed`` seeds the data split,
    the initial particles and the estimators. A progress bar shows on a terminal.

    ``executor`` (None: run here, one configuration after another) runs the grid
    through :mod:`certcompress.scale` instead: ``"local"`` (a process pool),
    ``"ray"``, ``"serial"`` or an executor object; one task per configuration, the same
    rows and columns. ``store`` is then the SQLite results file (a sweep that stops
    resumes from it; default a temporary one). With an executor ``data`` must be
    ``"digits"``, ``"digits:<task>"`` or an ``.npz`` path (workers read data by name).
    """
    opts = options or SweepOptions()
    if executor is not None:
        return _sweep_on_executor(depths, scalings, alphas, widths, ns, data, opts, seed,
                                  progress, executor, store)
    if store is not None:
        raise ConfigurationError("sweep: store= is for runs with an executor; pass executor= "
                                 "('local', 'ray' or 'serial') too")
    depths_t = _positive_ints("depths", depths)
    widths_t = _positive_ints("widths", widths)
    ns_t = None if ns is None else _positive_ints("ns", ns)
    if not scalings:
        raise ConfigurationError("sweep: scalings must not be empty")
    if not alphas or any(not (isinstance(a, int | float) and a > 0) for a in alphas):
        raise ConfigurationError(f"sweep: alphas must be numbers > 0, got {list(alphas)}")
    split = resolve_data(data, None if ns_t is None else max(ns_t), opts, seed)
    ns_t = ns_t or (split.n_train,)
    grid = list(itertools.product(ns_t, widths_t, opts.inits, tuple(alphas), tuple(scalings), depths_t))
    # check every configuration before any training starts
    p = split.input_dim
    d = opts.hidden_dim or p
    for _n, M, init, alpha, sc, L in grid:
        ScaledResNet(d, L, M, opts.head_width or M, sc, alpha, opts.beta,  # type: ignore[arg-type]
                     activation=opts.activation, init=init, input_dim=p, seed=seed)  # type: ignore[arg-type]
    rows = []
    bar = tqdm(grid, desc="meanfield sweep", disable=not progress_enabled(progress))
    for n, M, init, alpha, sc, L in bar:
        label = f"L={L} {sc} a={alpha:g} M={M} n={n}" + ("" if init == "mean-field" else f" {init}")
        bar.set_postfix_str(label)
        net = ScaledResNet(d, L, M, opts.head_width or M, sc, alpha, opts.beta,  # type: ignore[arg-type]
                           activation=opts.activation, init=init, input_dim=p, seed=seed)  # type: ignore[arg-type]
        Xtr, ytr = split.X_train[:n], split.y_train[:n]
        t0 = time.perf_counter()
        run = train(net, Xtr, ytr, steps=opts.steps, record_every=opts.record_every, lr=opts.lr)
        train_seconds = time.perf_counter() - t0
        est = estimate(run, Xtr, ytr, split.X_test, split.y_test, opts.delta,
                       options=opts.estimate, seed=seed)
        rows.append({"config": label, "data": split.name, "seed": seed, "lr": opts.lr,
                     "steps_requested": opts.steps, "train_seconds": train_seconds,
                     **est.as_row(), "notes": "; ".join(est.notes)})
    bar.close()
    table = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    for col in ("rademacher_closed_form", "rademacher_mc", "rademacher_mc_stderr",
                "gap_estimate", "gap_estimate_closed_form", "train_error", "test_error"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table.attrs["spearman"] = {c: spearman_agreement(table, c).__dict__ for c in AGREEMENT_COLUMNS}
    return table


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
    table: pd.DataFrame = runner("meanfield_sweep")(
        tuple(depths), tuple(scalings), executor=executor, store=store, progress=progress,  # type: ignore[arg-type]
        alphas=tuple(alphas), widths=tuple(widths), ns=None if ns is None else tuple(ns),
        data=data, options=opts, seed=seed)
    return table
