"""The pruning report: certified bound next to measured deviations, per criterion and
sparsity, as a DataFrame, a CSV file and a log-scale plot (docs/path-metrics.md, section 6: a
bound is always shown beside what was measured, and a vacuous bound is marked so)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..._io import atomic_path
from ..._plots import new_axes, output_scale_line, save_png
from ..._runners import runner
from ...api import certify, trace
from ...errors import ConfigurationError
from ...loading import module_without_executor, spec_for_executor
from ...measure import check_reference_inputs
from ...resolve import resolve_radius
from ._layers import excluded_names, input_shape_for, prunable_layers
from .apply import apply_masks
from .criteria import Masks, check_criterion, prune_count, ranks, weight_scores

__all__ = ["pruning_report", "save_report", "plot_report", "REPORT_COLUMNS"]

REPORT_COLUMNS = [
    "criterion", "sparsity", "pruned_weights", "candidate_weights", "parameters",
    "nonzero_parameters", "certified_bound", "baseline_bound_linf", "path_metric_exact",
    "deviation_mean", "deviation_max", "adversarial_max", "output_scale", "vacuous",
    "accuracy",
]


def _as_data(data: Tensor | Iterable[Any] | None, labels: Tensor | None
             ) -> tuple[Tensor | None, Tensor | None]:
    """``data`` as one tensor: a tensor, or an iterable of batches (tensors or
    ``(x, y, ...)`` tuples, e.g. a DataLoader; ``y`` is used when ``labels`` is None)."""
    if data is None or isinstance(data, Tensor):
        return data, labels
    xs, ys = [], []
    for batch in data:
        if isinstance(batch, Tensor):
            xs.append(batch)
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            xs.append(batch[0])
            if len(batch) > 1 and isinstance(batch[1], Tensor):
                ys.append(batch[1])
        else:
            raise ConfigurationError(f"data batches must be tensors or (inputs, labels) "
                                     f"tuples, got {type(batch).__name__}")
    if not xs:
        raise ConfigurationError("data is empty")
    x = torch.cat(xs)
    if labels is None and len(ys) == len(xs):
        labels = torch.cat(ys)
    return x, labels


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model(x.to(dtype))
    pred = out.argmax(dim=1)
    if pred.shape != y.shape:
        raise ConfigurationError(f"labels have shape {tuple(y.shape)}, the predictions "
                                 f"(argmax over dimension 1) {tuple(pred.shape)}")
    return float((pred == y.to(pred.device)).float().mean())


def pruning_report(model: nn.Module | str, criteria: Sequence[str] = ("magnitude", "path-magnitude"),
                   sparsities: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                   data: Tensor | Iterable[Any] | None = None, labels: Tensor | None = None,
                   input_shape: Sequence[int] | None = None,
                   input_radius: float | None = None, *, scope: str = "global",
                   exclude: Sequence[str] = (), search_steps: int = 20,
                   search_restarts: int = 4, seed: int = 0, progress: bool = True,
                   executor: str | Any | None = None, store: str | os.PathLike[str] | None = None,
                   sweep: str | None = None) -> pd.DataFrame:
    """One row per (criterion, sparsity): the certified bound (l1 output deviation over
    ``||x||_inf <= input_radius``), the operator-norm baseline (an l_inf bound, NaN where
    it does not apply), the deviation measured on ``data`` (mean and max l1), the
    largest deviation ``search_steps`` of gradient ascent found, ``vacuous`` (bound above
    the largest ``||f(x)||_1`` on ``data``), top-1 accuracy when labels are given
    (``argmax`` over dimension 1), and parameter counts. Columns: ``REPORT_COLUMNS``;
    ``df.attrs`` holds the dense accuracy, radius and input shape. A progress bar shows
    on stderr when ``progress``.

    With ``executor`` (``"local"``, ``"ray"``, ``"serial"`` or an executor object) every
    row is one task of :mod:`certcompress.scale` (``model`` must then be a model spec
    string, never a module object), optionally stored in and resumed from the SQLite
    ``store`` under the name ``sweep``; the rows are the same."""
    from tqdm.auto import tqdm

    if executor is not None:
        return runner("pruning_report")(spec_for_executor(model), criteria, sparsities, data, labels, input_shape,
                                  input_radius, scope=scope, exclude=exclude,
                                  search_steps=search_steps, search_restarts=search_restarts,
                                  seed=seed, progress=progress, executor=executor, store=store,
                                  sweep=sweep)
    model = module_without_executor(model, "the report")

    crits = [check_criterion(c, f"criteria[{i}]") for i, c in enumerate(criteria)]
    if not crits:
        raise ConfigurationError("criteria is empty; give at least one of magnitude, "
                                 "path-magnitude, random")
    sp = []
    for i, s in enumerate(sparsities):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ConfigurationError(f"sparsities[{i}] must be a number in [0, 1], got {s!r}")
        sp.append(float(s))
    if not sp:
        raise ConfigurationError("sparsities is empty")
    if scope not in ("global", "per-layer"):
        raise ConfigurationError(f"scope must be 'global' or 'per-layer', got {scope!r}")
    shape = input_shape_for(model, input_shape, "the pruning report")
    radius = resolve_radius(model, input_radius, domain_hint=False)[0]
    x, y = _as_data(data, labels)
    if x is not None:
        x = check_reference_inputs(x, shape, "data")
    layers = prunable_layers(model)
    excluded = excluded_names(layers, list(exclude))
    names = [ly.name for ly in layers if ly.name not in excluded]
    sizes = {ly.name: ly.numel for ly in layers}
    n_cand = sum(sizes[n] for n in names)
    graph = trace(model, shape) if "path-magnitude" in crits else None
    total_params = sum(p.numel() for p in model.parameters())
    rows = []
    bar = tqdm(total=len(crits) * len(sp), desc="pruning report", disable=not progress,
               leave=False)
    for crit in crits:
        scores = weight_scores(model, crit, layers, graph=graph, input_shape=shape, seed=seed)
        joint = ranks(scores, names)
        local = {n: ranks(scores, [n])[n] for n in names}
        for s in sp:
            masks: Masks = {}
            if scope == "global":
                k = prune_count(s, n_cand)
                masks = {n: joint[n] >= k for n in names}
            else:
                masks = {n: local[n] >= prune_count(s, sizes[n]) for n in names}
            pruned_w = sum(int((~m).sum()) for m in masks.values())
            pruned = apply_masks(model, masks)
            cert = certify(model, pruned, shape, radius, reference_inputs=x,
                           search_steps=search_steps, search_restarts=search_restarts,
                           seed=seed)
            nan = float("nan")
            rows.append({
                **cert.to_row(),
                "criterion": crit, "sparsity": s, "pruned_weights": pruned_w,
                "candidate_weights": n_cand, "parameters": total_params,
                "nonzero_parameters": sum(int((p != 0).sum()) for p in pruned.parameters()),
                "accuracy": nan if x is None or y is None else _accuracy(pruned, x, y),
            })
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    df.attrs.update(radius=radius, input_shape=shape, scope=scope, model=type(model).__name__,
                    dense_accuracy=None if x is None or y is None else _accuracy(model, x, y))
    return df


def plot_report(df: pd.DataFrame, path: str | os.PathLike[str], title: str | None = None
                ) -> Path:
    """A log-scale PNG of certified bound, baseline, measured max and mean deviation and
    adversarial deviation against sparsity, one colour per criterion and one line style
    per scope (:mod:`certcompress._plots`), with the output scale as a dotted line (a
    bound above it is vacuous) and test accuracy on a second axis when the report has it
    (written atomically; non-positive values cannot be drawn on a log axis and are left
    out)."""
    series = [("certified_bound", "-", "o", "certified bound (worst case over the domain)"),
              ("baseline_bound_linf", "--", "s", "baseline, l_inf (worst case)"),
              ("adversarial_max", "-.", "^", "gradient ascent (measured)"),
              ("deviation_max", ":", "v", "max on reference data (measured)"),
              ("deviation_mean", ":", ".", "mean on reference data (measured)")]
    fig, ax = new_axes(8.5, 5.5)
    colors = [f"C{i}" for i in range(10)]
    drawn = 0
    for i, (crit, part) in enumerate(df.groupby("criterion", sort=False)):
        part = part.sort_values("sparsity")
        for col, ls, mk, label in series:
            v = part[col].astype(float)
            ok = v.notna() & (v > 0) & v.map(math.isfinite)
            if ok.any():
                ax.plot(part["sparsity"][ok], v[ok], linestyle=ls, marker=mk,
                        color=colors[i % len(colors)], label=f"{crit}: {label}")
                drawn += 1
    scales = df["output_scale"].astype(float)
    scales = scales[scales.notna() & scales.map(math.isfinite)]
    if drawn:
        ax.set_yscale("log")
        output_scale_line(ax, float(scales.median()) if len(scales) else None)
    ax.set_xlabel("sparsity (fraction of candidate weights pruned)")
    ax.set_ylabel("l1 output deviation (log scale)")
    r = df.attrs.get("radius")
    ax.set_title(title or f"{df.attrs.get('model', 'model')}: certified bound vs measured "
                          f"deviation" + (f" (||x||_inf <= {r:g})" if r is not None else ""))
    ax.grid(True, which="both", alpha=0.3)
    acc = df["accuracy"].astype(float)
    if acc.notna().any():
        ax2 = ax.twinx()
        for i, (crit, part) in enumerate(df.groupby("criterion", sort=False)):
            part = part.sort_values("sparsity")
            ax2.plot(part["sparsity"], part["accuracy"].astype(float), color=colors[i % 10],
                     lw=0.8, alpha=0.5, marker="x", label=f"{crit}: test accuracy")
        ax2.set_ylabel("test accuracy (x markers)")
        ax2.set_ylim(0.0, 1.05)
    if drawn:
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return save_png(fig, path)


def save_report(df: pd.DataFrame, csv_path: str | os.PathLike[str],
                png_path: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """Write the table as CSV (and the plot as PNG), each atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    png = None if png_path is None else plot_report(df, png_path)
    return Path(csv_path), png
