"""The reports of the pruning, quantization and mean-field packages as task sweeps.

Each ``*_tasks`` function expands one report's configuration into tasks (one per row
the report would have, in its order); each ``run_*`` function runs them through
:func:`certcompress.scale.sweep` and returns the report's own DataFrame (same columns,
same rows, same ``attrs``). They are what the ``executor=`` argument of those reports
calls:

    pruning_report(..., executor="ray")  ->  run_pruning_report(...)
    quantization.bound_vs_bits(..., executor="ray")  ->  run_bound_vs_bits(...)
    meanfield.sweep(..., executor="local")  ->  run_meanfield_sweep(...)

A worker builds the model from its spec, so here the model is a :class:`ModelRef` or a
spec string (``FILE.py:factory``, ``torchvision:resnet18``), not an ``nn.Module``; data
tensors are saved to a content-addressed ``.npz`` next to the store and travel by path.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write_bytes
from .._runners import register_runner
from ..compress.pruning.report import REPORT_COLUMNS, _as_data
from ..errors import ConfigurationError
from ..meanfield._sweep import AGREEMENT_COLUMNS, SWEEP_COLUMNS, spearman_agreement
from ..resolve import resolve_shape
from .executors import Executor
from .refs import DataRef, ModelRef
from .sweep import sweep as run_sweep
from .tasks import MeanFieldTask, PruneTask, QuantizeTask, Task, _mf_options

__all__ = ["pruning_report_tasks", "run_pruning_report", "quantization_sweep_tasks",
           "run_quantization_sweep", "bound_vs_bits_tasks", "run_bound_vs_bits",
           "meanfield_sweep_tasks", "run_meanfield_sweep",
           "run_tasks", "model_ref", "save_data"]

ModelLike = ModelRef | str


def model_ref(model: object, weights: str | None = None) -> ModelRef:
    """``model`` as a :class:`ModelRef` (a spec string is wrapped with ``weights``)."""
    if isinstance(model, ModelRef):
        if weights is not None:
            raise ConfigurationError("weights is given twice: in the ModelRef and as weights=")
        return model
    if isinstance(model, str):
        return ModelRef(model, weights)
    raise ConfigurationError(
        f"running on an executor needs the model as a spec workers can build (a ModelRef or a "
        f"string such as 'model.py:make' or 'torchvision:resnet18', with its weights file), "
        f"not a {type(model).__name__} object: models never travel pickled")


def save_data(x: Any, y: Any, directory: str | os.PathLike[str]) -> DataRef:
    """Save inputs ``x`` (and labels ``y``) as ``<sha256>.npz`` in ``directory`` (created)
    and return its :class:`DataRef`; the same data gives the same file and key."""
    import numpy as np
    import torch

    def array(t: Any) -> Any:
        return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    buf = io.BytesIO()
    if y is None:
        np.savez(buf, x=array(x))
    else:
        np.savez(buf, x=array(x), y=array(y))
    data = buf.getvalue()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{hashlib.sha256(data).hexdigest()[:32]}.npz"
    if not path.exists():
        atomic_write_bytes(path, data)
    return DataRef(str(path))


@contextmanager
def _store_dir(store: str | os.PathLike[str] | None) -> Iterator[tuple[str, Path]]:
    """``(store file, directory for data files)``: a temporary store when None."""
    if store is not None:
        p = Path(store)
        yield str(p), p.parent / f".{p.name}.data"
        return
    with tempfile.TemporaryDirectory(prefix="certcompress-sweep-") as tmp:
        yield str(Path(tmp) / "runs.sqlite"), Path(tmp) / "data"


def run_tasks(tasks: Sequence[Task], executor: str | Executor = "local",
              store: str | os.PathLike[str] | None = None, sweep: str | None = None,
              progress: bool = True, **options: Any) -> pd.DataFrame:
    """:func:`certcompress.scale.sweep` with a temporary store when ``store`` is None;
    raises :class:`~certcompress.errors.ConfigurationError` listing the failed tasks if
    any failed (a report has no place for error rows)."""
    with _store_dir(store) as (path, _):
        df = run_sweep(tasks, executor, path, sweep or "default", progress=progress,
                       **options)
    bad = df[df["status"] != "ok"]
    if len(bad):
        first = bad.iloc[0]
        raise ConfigurationError(f"{len(bad)} of {len(df)} task(s) failed, e.g. "
                                 f"{first['label']}: {first['error']}")
    return df


def _shape(ref: ModelRef, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    model = None if input_shape is not None else ref.load()  # loaded only when needed
    return resolve_shape(model, input_shape, label=f"'{ref.display}'")


# ---------------------------------------------------------------------- pruning
def pruning_report_tasks(model: ModelLike, criteria: Sequence[str] = ("magnitude",
                                                                      "path-magnitude"),
                         sparsities: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), *,
                         weights: str | None = None, reference: DataRef | str | None = None,
                         input_shape: Sequence[int] | None = None,
                         input_radius: float | None = None, scope: str = "global",
                         exclude: Sequence[str] = (), search_steps: int = 20,
                         search_restarts: int = 4, seed: int = 0) -> list[PruneTask]:
    """One :class:`PruneTask` per (criterion, sparsity), in
    :func:`~certcompress.compress.pruning.pruning_report`'s row order."""
    ref = model_ref(model, weights)
    shape = _shape(ref, input_shape)
    data = DataRef(reference) if isinstance(reference, str) else reference
    return [PruneTask(model=ref, input_shape=shape, radius=input_radius, reference=data,
                      criterion=c, sparsity=s, scope=scope, exclude=tuple(exclude),
                      search_steps=search_steps, search_restarts=search_restarts, seed=seed)
            for c in criteria for s in sparsities]


def run_pruning_report(model: ModelLike, criteria: Sequence[str] = ("magnitude",
                                                                    "path-magnitude"),
                       sparsities: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                       data: Any = None, labels: Any = None,
                       input_shape: Sequence[int] | None = None,
                       input_radius: float | None = None, *, weights: str | None = None,
                       scope: str = "global", exclude: Sequence[str] = (),
                       search_steps: int = 20, search_restarts: int = 4, seed: int = 0,
                       progress: bool = True, executor: str | Executor = "local",
                       store: str | os.PathLike[str] | None = None, sweep: str | None = None
                       ) -> pd.DataFrame:
    """:func:`~certcompress.compress.pruning.pruning_report` on an executor: the same
    columns (``REPORT_COLUMNS``), rows and ``attrs``. ``data`` is a tensor (with
    ``labels``) or an iterable of batches, as for the report."""
    ref = model_ref(model, weights)
    x, y = _as_data(data, labels)
    with _store_dir(store) as (path, data_dir):
        reference = None if x is None else save_data(x, y, data_dir)
        tasks = pruning_report_tasks(ref, criteria, sparsities, reference=reference,
                                     input_shape=input_shape, input_radius=input_radius,
                                     scope=scope, exclude=exclude, search_steps=search_steps,
                                     search_restarts=search_restarts, seed=seed)
        df = run_tasks(tasks, executor, path, sweep or "pruning-report", progress)
    out = df[list(REPORT_COLUMNS)].reset_index(drop=True)
    first = df.iloc[0]
    dense = first["dense_accuracy"]
    out.attrs.update(radius=float(first["radius"]), input_shape=tasks[0].input_shape,
                     scope=scope, model=ref.display,
                     dense_accuracy=None if pd.isna(dense) else float(dense))
    return out


# ---------------------------------------------------------------------- quantization
def quantization_sweep_tasks(model: ModelLike, bits: Iterable[int] = (2, 3, 4, 5, 6, 8), *,
                             weights: str | None = None, budgets: Iterable[float] = (),
                             avg_bits: Iterable[float] = (),
                             candidates: Sequence[int] = (2, 3, 4, 5, 6, 8),
                             granularity: str = "per-channel", bias_bits: int | None = None,
                             layers: Sequence[str] | None = None,
                             reference: DataRef | str | None = None,
                             input_shape: Sequence[int] | None = None,
                             input_radius: float | None = None, search_steps: int = 20,
                             search_restarts: int = 4, seed: int = 0) -> list[QuantizeTask]:
    """A bit-width sweep: one :class:`QuantizeTask` per uniform width in ``bits`` (every
    layer, or ``layers``), then one certified allocation per bound in ``budgets`` and per
    average width in ``avg_bits`` (chosen among ``candidates``)."""
    ref = model_ref(model, weights)
    shape = _shape(ref, input_shape)
    data = DataRef(reference) if isinstance(reference, str) else reference
    common: dict[str, Any] = dict(model=ref, input_shape=shape, radius=input_radius,
                                  reference=data, search_steps=search_steps,
                                  search_restarts=search_restarts, seed=seed,
                                  granularity=granularity, bias_bits=bias_bits,
                                  candidates=tuple(candidates))
    tasks = [QuantizeTask(config={"bits": b, "granularity": granularity, "bias_bits": bias_bits,
                                  "layers": None if layers is None else list(layers)},
                          **common) for b in bits]
    tasks += [QuantizeTask(budget=b, **common) for b in budgets]
    tasks += [QuantizeTask(avg_bits=a, **common) for a in avg_bits]
    if not tasks:
        raise ConfigurationError("the quantization sweep is empty: give bits, budgets or "
                                 "avg_bits")
    return tasks


def run_quantization_sweep(model: ModelLike, bits: Iterable[int] = (2, 3, 4, 5, 6, 8), *,
                           executor: str | Executor = "local",
                           store: str | os.PathLike[str] | None = None,
                           sweep: str | None = None, progress: bool = True,
                           **kwargs: Any) -> pd.DataFrame:
    """:func:`quantization_sweep_tasks` run through :func:`run_tasks`: one row per
    configuration (:class:`QuantizeTask`'s columns)."""
    tasks = quantization_sweep_tasks(model, bits, **kwargs)
    df = run_tasks(tasks, executor, store, sweep or "quantization-sweep", progress)
    return df.drop(columns=["sweep", "status", "error"]).reset_index(drop=True)


def bound_vs_bits_tasks(model: ModelLike, avg_bits: Iterable[float], *,
                        weights: str | None = None,
                        candidates: Iterable[int] = (2, 3, 4, 5, 6, 8),
                        input_shape: Sequence[int] | None = None,
                        input_radius: float | None = None,
                        granularity: str = "per-channel") -> list[QuantizeTask]:
    """The tasks of :func:`~certcompress.compress.quantization.bound_vs_bits`, in its row
    order: a certified allocation per average width in ``avg_bits``, then every candidate
    width uniformly on every layer (no adversarial search, as the report)."""
    cands = sorted(set(candidates))
    return quantization_sweep_tasks(model, cands, weights=weights, avg_bits=avg_bits,
                                    candidates=cands, granularity=granularity,
                                    input_shape=input_shape, input_radius=input_radius,
                                    search_steps=0)


def run_bound_vs_bits(model: ModelLike, avg_bits: Iterable[float], *,
                      weights: str | None = None, candidates: Iterable[int] = (2, 3, 4, 5, 6, 8),
                      input_shape: Sequence[int] | None = None,
                      input_radius: float | None = None, granularity: str = "per-channel",
                      executor: str | Executor = "local",
                      store: str | os.PathLike[str] | None = None, sweep: str | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """:func:`~certcompress.compress.quantization.bound_vs_bits` on an executor: the same
    columns (``kind``, ``budget_bits``, ``average_bits``, ``certified_bound``) and rows
    (allocated first, then uniform)."""
    avg = [float(a) for a in avg_bits]
    tasks = bound_vs_bits_tasks(model, avg, weights=weights, candidates=candidates,
                                input_shape=input_shape, input_radius=input_radius,
                                granularity=granularity)
    df = run_tasks(tasks, executor, store, sweep or "bound-vs-bits", progress)
    by_key = df.set_index("key")  # a repeated width runs once and fills each of its rows
    rows = [{"kind": "allocated", "budget_bits": t.avg_bits,
             "average_bits": float(by_key.at[t.key, "average_bits"]),
             "certified_bound": float(by_key.at[t.key, "certified_bound"])}
            for t in tasks if t.avg_bits is not None]
    rows += [{"kind": "uniform", "budget_bits": float(by_key.at[t.key, "bits"]),
              "average_bits": float(by_key.at[t.key, "bits"]),
              "certified_bound": float(by_key.at[t.key, "certified_bound"])}
             for t in tasks if t.config is not None]
    out = pd.DataFrame(rows)
    out.attrs["summary"] = df.attrs["summary"]
    return out


# ---------------------------------------------------------------------- mean-field
def meanfield_sweep_tasks(depths: Sequence[int] = (4, 8, 16, 32),
                          scalings: Sequence[str | float] = ("mean-field", "sqrt", "none"), *,
                          alphas: Sequence[float] = (1.0,), widths: Sequence[int] = (128,),
                          ns: Sequence[int] | None = None, data: Any = "digits",
                          data_file: DataRef | str | None = None, options: Any = None,
                          seed: int = 0) -> list[MeanFieldTask]:
    """One :class:`MeanFieldTask` per configuration of
    :func:`certcompress.meanfield.sweep` (same arguments; ``data`` is ``'digits'``,
    ``'digits:<task>'`` or an ``.npz`` path), in its row order."""
    opts = _mf_options(options if options is not None else {})
    raw_inits = (options.get("inits") if isinstance(options, Mapping)
                 else getattr(options, "inits", None))
    inits = tuple(raw_inits) if raw_inits else ("mean-field",)
    if not isinstance(data, str):
        raise ConfigurationError(
            f"as tasks, the mean-field sweep reads data by name or file: 'digits', "
            f"'digits:<task>' or an .npz path (X, y or X_train, y_train, X_test, y_test); got "
            f"a {type(data).__name__}: save the arrays with numpy.savez and pass the path")
    if data.lower().endswith(".npz"):
        data, data_file = "npz", data
    n_max = None if ns is None else max(ns)
    dref = DataRef(data_file) if isinstance(data_file, str) else data_file
    grid = itertools.product([None] if ns is None else list(ns), widths, inits, alphas,
                             scalings, depths)
    return [MeanFieldTask(depth=L, scaling=sc, alpha=a, width=M, n=n, n_max=n_max, init=init,
                          data=data, data_file=dref, options=opts, seed=seed)
            for n, M, init, a, sc, L in grid]


def run_meanfield_sweep(depths: Sequence[int] = (4, 8, 16, 32),
                        scalings: Sequence[str | float] = ("mean-field", "sqrt", "none"), *,
                        executor: str | Executor = "local",
                        store: str | os.PathLike[str] | None = None, sweep: str | None = None,
                        progress: bool = True, **kwargs: Any) -> pd.DataFrame:
    """:func:`certcompress.meanfield.sweep` on an executor: the same columns
    (``SWEEP_COLUMNS``), rows and ``attrs["spearman"]``."""
    tasks = meanfield_sweep_tasks(depths, scalings, **kwargs)
    df = run_tasks(tasks, executor, store, sweep or "meanfield-sweep", progress)
    table = df[list(SWEEP_COLUMNS)].reset_index(drop=True)
    for col in table.columns:
        values = [v for v in table[col] if v is not None and not pd.isna(v)]
        if table[col].dtype == object and values and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            table[col] = pd.to_numeric(table[col], errors="coerce")
    table.attrs["spearman"] = {c: spearman_agreement(table, c).__dict__
                               for c in AGREEMENT_COLUMNS}
    return table


register_runner("pruning_report", run_pruning_report)
register_runner("bound_vs_bits", run_bound_vs_bits)
register_runner("meanfield_sweep", run_meanfield_sweep)
