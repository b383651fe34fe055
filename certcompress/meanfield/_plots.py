"""PNG plots of a sweep table, written atomically (matplotlib Figure, no pyplot state)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import atomic_path
from ..errors import ConfigurationError
from ._sweep import RECOMMENDED_ESTIMATE, THEORY_COLUMNS, ci95, design_means, spearman_agreement

__all__ = ["plot_sweep", "plot_design", "plot_training"]

_GROUP_KEYS = ("alpha", "width", "n_train", "init")
_SHORT = {"alpha": "a", "width": "M", "n_train": "n", "init": "init"}


def _groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    varying = [k for k in _GROUP_KEYS if k in table and table[k].nunique() > 1]
    out = []
    for key, sub in table.groupby(["scaling", *varying], sort=False):
        parts = key if isinstance(key, tuple) else (key,)
        label = str(parts[0]) + "".join(f" {_SHORT[k]}={v}" for k, v in zip(varying, parts[1:], strict=True))
        out.append((label, sub.sort_values("depth")))
    return out


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """The same columns without ``attrs``: pandas deep-copies ``attrs`` on every slice
    and groupby, and a designed sweep's attrs hold every run's trajectory (measured on
    the test design: plot_design 1.76 -> 1.40 CPU-s)."""
    return pd.DataFrame(table, copy=False)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _series(ax: Axes, table: pd.DataFrame, column: str, style: str, suffix: str = "") -> None:
    for label, sub in _groups(table):
        y = pd.to_numeric(sub[column], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(y).any():
            ax.plot(sub["depth"], y, style, label=label + suffix)


def _depth_axis(ax: Axes, title: str, ylabel: str, log: bool = False) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth L")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def plot_sweep(table: pd.DataFrame, out_dir: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Write lambda_min.png, distance.png, gap.png and estimate_vs_measured.png to out_dir."""
    need = {"depth", "scaling", "measured_gap", "gap_estimate", "lambda_min_G2_init"}
    if missing := need - set(table.columns):
        raise ConfigurationError(f"plot_sweep: the table lacks columns {sorted(missing)}")
    table = _plain(table)
    out = Path(out_dir)
    paths = []

    fig = Figure(figsize=(10, 4))
    a1, a2 = fig.subplots(1, 2)
    _series(a1, table, "lambda_min_G2_init", "--o", " (init)")
    _series(a1, table, "lambda_min_G2_min", "-s", " (min over training)")
    _depth_axis(a1, "lambda_min(G2) [D, measured]", "eigenvalue", log=True)
    _series(a2, table, "lambda_min_G12_init", "--o", " (init)")
    _series(a2, table, "lambda_min_G12_final", "-s", " (final)")
    _depth_axis(a2, "lambda_min(G1+G2)", "eigenvalue", log=True)
    paths.append(_save(fig, out / "lambda_min.png"))

    fig = Figure(figsize=(10, 4))
    a1, a2 = fig.subplots(1, 2)
    _series(a1, table, "w2_bound_residual", "-o", " residual")
    _series(a1, table, "w2_bound_head", ":^", " head")
    _depth_axis(a1, "W2 coupling bound from init [upper bound]", "parameter units")
    _series(a2, table, "kl_radius", "-o")
    _depth_axis(a2, "KL radius r (head + mean block) [estimate]", "nats", log=True)
    paths.append(_save(fig, out / "distance.png"))

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    _series(ax, table, "measured_gap", "-o", " measured")
    _series(ax, table, "gap_estimate", "--s", " estimate")
    if "loss_bound" in table.columns:
        bound = pd.to_numeric(table["loss_bound"], errors="coerce").max()
        if np.isfinite(bound):  # no gap exceeds the loss range: an estimate above is vacuous
            ax.axhline(float(bound), color="grey", lw=0.8, ls=":", label=f"loss range B={bound:g}")
    _depth_axis(ax, "generalization gap: estimate (in scope only) vs measured", "loss gap", log=True)
    paths.append(_save(fig, out / "gap.png"))

    fig = Figure(figsize=(10, 4.5))
    a1, a2 = fig.subplots(1, 2)
    for column, ax in (("gap_estimate", a1), ("kernel_measure", a2)):
        sp = spearman_agreement(table, column)
        for label, sub in _groups(table):
            x = pd.to_numeric(sub["measured_gap"], errors="coerce")
            y = pd.to_numeric(sub[column], errors="coerce")
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                ax.scatter(x[ok], y[ok], label=label, s=25)
                for (_, row), xi, yi in zip(sub[ok].iterrows(), x[ok], y[ok], strict=True):
                    ax.annotate(f"L={row['depth']}", (xi, yi), fontsize=6)
        rho = "n/a" if math.isnan(sp.rho) else f"{sp.rho:.2f}"
        ax.set_title(f"{column} vs measured gap: Spearman {rho} over {sp.n_configs}", fontsize=9)
        ax.set_xlabel("measured gap (test - train loss)")
        ax.set_ylabel(column)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    paths.append(_save(fig, out / "estimate_vs_measured.png"))
    return tuple(paths)


def plot_design(table: pd.DataFrame, out_dir: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Plots of a :func:`sweep` design table (the default sweep): design_estimate_vs_gap.png (each estimate,
    the recommended one first on linear axes with y = x, against the measured gap, mean and 95% interval over seeds per design point, the
    loss range marked) and design_lambda.png (lambda_min(G2) at init and final beside
    the [D] lower bound Lambda_G2, per design point)."""
    need = {"design", "measured_gap", "gap_estimate", "kernel_measure", "gap_bound_paper",
            "lambda_min_G2_init", "lambda_min_G2_final", "Lambda_G2", "loss_bound"}
    if missing := need - set(table.columns):
        raise ConfigurationError(f"plot_design: the table lacks columns {sorted(missing)}")
    table = _plain(table)
    out = Path(out_dir)
    paths = []
    bound = float(pd.to_numeric(table["loss_bound"], errors="coerce").max())

    def stats(sub: pd.DataFrame, col: str) -> tuple[float, float]:
        v = pd.to_numeric(sub[col], errors="coerce").to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if not v.size:
            return math.nan, math.nan
        half = ci95(v)
        return float(v.mean()), 0.0 if math.isnan(half) else half

    panels = [c for c in dict.fromkeys((RECOMMENDED_ESTIMATE, "gap_estimate", "rademacher_sqrt_kl",
                                        "kernel_measure", "gap_bound_paper"))
              if c in table.columns]
    means = design_means(table, ["measured_gap", *panels])
    fig = Figure(figsize=(4.7 * len(panels), 4.5))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, col in zip(axes, panels, strict=True):
        sp = spearman_agreement(means[means["in_scope"]] if col in THEORY_COLUMNS else means, col)
        for name, sub in table.groupby("design", sort=False):
            (x, xe), (y, ye) = stats(sub, "measured_gap"), stats(sub, col)
            if math.isfinite(x) and math.isfinite(y):
                ax.errorbar([x], [y], xerr=[xe], yerr=[ye], fmt="o", ms=4, capsize=2)
                ax.annotate(str(name), (x, y), fontsize=6)
        if math.isfinite(bound) and col in ("gap_estimate", "gap_bound_paper"):
            ax.axhline(bound, color="grey", lw=0.8, ls=":", label=f"loss range {bound:g}: above is vacuous")
            ax.legend(fontsize=7)
        rho = "n/a" if math.isnan(sp.rho) else f"{sp.rho:.2f} (p={sp.pvalue:.2g})"
        ax.set_title(f"{col}: Spearman {rho}\nover {sp.n_configs} design means (95% t-intervals)",
                     fontsize=9)
        ax.set_xlabel("measured gap (test - train loss)")
        ax.set_ylabel(col)
        if col == RECOMMENDED_ESTIMATE:  # at the level of the gap: linear, with y = x
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls=":", label="estimate = gap")
            ax.legend(fontsize=7)
        else:
            ax.set_yscale("log")
    paths.append(_save(fig, out / "design_estimate_vs_gap.png"))

    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    names = list(dict.fromkeys(table["design"].astype(str)))
    xs = np.arange(len(names))
    for off, col, label in ((-0.25, "lambda_min_G2_init", "lambda_min(G2) init [M]"),
                            (0.0, "lambda_min_G2_final", "lambda_min(G2) final [M]"),
                            (0.25, "Lambda_G2", "Lambda_G2 lower bound of the limit [D]")):
        ys = [stats(table[table["design"].astype(str) == n], col)[0] for n in names]
        ax.bar(xs + off, ys, width=0.25, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "design_lambda.png"))
    return tuple(paths)


def _trajectories(table: pd.DataFrame) -> list[dict[str, object]]:
    traj = table.attrs.get("trajectories")
    if not isinstance(traj, dict) or not traj:
        raise ConfigurationError("plot_training: the table has no attrs['trajectories']; pass "
                                 "the table returned by mf.sweep() (a CSV read back "
                                 "loses them)")
    first_seed = min(int(v["seed"]) for v in traj.values())
    return [v for v in traj.values() if int(v["seed"]) == first_seed]


def _envelope(tr: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """Per phase k: L(t_k) exp(-(2 beta^2/n) int_{t_k}^t lambda_min(G2)), lambda linear
    between Gram checkpoints; returns (times, envelope) with NaN between phases."""
    cks = tr["checkpoints"]
    beta2, n = float(tr["beta"]) ** 2, int(tr["n"])  # type: ignore[arg-type, call-overload]
    ts, es = [], []
    for a, b in zip(cks[:-1], cks[1:], strict=True):  # type: ignore[index]
        t = np.linspace(a["time"], b["time"], 30)
        frac = (t - a["time"]) / max(b["time"] - a["time"], 1e-300)
        lam_a, lam_b = a["lambda_min_G2"], b["lambda_min_G2"]
        integral = (t - a["time"]) * (lam_a + 0.5 * frac * (lam_b - lam_a))
        ts.extend([*t, math.nan])
        es.extend([*(a["loss"] * np.exp(-(2.0 * beta2 / n) * integral)), math.nan])
    return np.array(ts), np.array(es)


def plot_training(table: pd.DataFrame, out_dir: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Plots along training of a :func:`sweep` table (first seed, one line or
    panel per design point), from ``table.attrs["trajectories"]``:

    - training_lambda.png: lambda_min(G1+G2) and lambda_min(G2) against flow time [M];
    - training_loss_envelope.png: the training loss [M] against the predicted envelope
      L(t_k) exp(-(2 beta^2/n) int_{t_k}^t lambda_min(G2)) restarted at every phase [D]
      (gradient flow stays below it; gradient descent with a finite step nearly so);
    - training_kl.png: the trajectory KL radius (head + mean block; per part the larger of
      the bias-corrected Gaussian fit and the k-NN estimate calibrated on resampled
      initialisations, so about 0 at t = 0) over training [E];
    - training_phase_rates.png: per-phase measured decay rate against the predicted
      (2 beta^2/n) mean lambda_min (G1+G2; G2 for head-only runs), with the line
      measured = predicted (gradient flow lies above it).
    """
    trs = _trajectories(table)
    out = Path(out_dir)
    paths = []
    colours = list(colormaps["tab20"].colors)  # type: ignore[attr-defined]
    fig = Figure(figsize=(12, 4.5))
    a1, a2 = fig.subplots(1, 2)
    for ax in (a1, a2):
        ax.set_prop_cycle(color=colours)
    for tr in trs:
        cks = tr["checkpoints"]
        t = [c["time"] for c in cks]  # type: ignore[attr-defined]
        a1.plot(t, [max(c["lambda_min_G12"], 1e-12) for c in cks], "-o", ms=3, label=str(tr["design"]))  # type: ignore[attr-defined]
        a2.plot(t, [max(c["lambda_min_G2"], 1e-12) for c in cks], "-o", ms=3, label=str(tr["design"]))  # type: ignore[attr-defined]
    for ax, what in ((a1, "lambda_min(G1+G2)"), (a2, "lambda_min(G2)")):
        ax.set_yscale("log")
        ax.set_xlabel("flow time t = lr * step")
        ax.set_ylabel(what)
        ax.set_title(f"{what} over training [M]", fontsize=10)
    a2.legend(fontsize=6, ncol=2)
    paths.append(_save(fig, out / "training_lambda.png"))

    cols = 6
    rows = max(1, math.ceil(len(trs) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax, tr in zip(axes, trs, strict=False):
        losses = np.asarray(tr["losses"], dtype=np.float64)
        ax.plot(float(tr["lr"]) * np.arange(losses.size), losses, "-", lw=1.2, label="loss [M]")  # type: ignore[arg-type]
        te, ee = _envelope(tr)
        ax.plot(te, ee, "--", lw=1, color="grey", label="envelope per phase [D]")
        ax.set_yscale("log")
        ax.set_title(str(tr["design"]), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[len(trs):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6)
    paths.append(_save(fig, out / "training_loss_envelope.png"))

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.set_prop_cycle(color=colours)
    for tr in trs:
        cks = tr["checkpoints"]
        key = "kl_radius" if all("kl_radius" in c for c in cks) else "kl_gaussian"  # type: ignore[attr-defined]
        ax.plot([c["time"] for c in cks], [c[key] for c in cks], "-o", ms=3,  # type: ignore[attr-defined]
                label=str(tr["design"]))
    ax.set_xlabel("flow time t")
    ax.set_ylabel("nats")
    ax.set_title("KL radius over training: max(Gaussian floor, k-NN calibrated on resampled "
                 "initialisations), head + mean block [E]", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    paths.append(_save(fig, out / "training_kl.png"))

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.set_prop_cycle(color=colours)
    lo, hi = math.inf, 0.0
    for tr in trs:
        ph = tr["phases"]
        x = [p["predicted"] for p in ph]  # type: ignore[attr-defined]
        y = [p["measured"] for p in ph]  # type: ignore[attr-defined]
        pos = [(a, b) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
        if pos:
            ax.plot(*zip(*pos, strict=True), "-o", ms=3, label=str(tr["design"]))
            lo = min(lo, *(min(p) for p in pos))
            hi = max(hi, *(max(p) for p in pos))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], ":", color="k", lw=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted rate (2 beta^2/n) mean lambda_min [D]")
    ax.set_ylabel("measured rate -dlog L/dt [M]")
    ax.set_title("loss decay per phase (lines join a run's phases in order)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    paths.append(_save(fig, out / "training_phase_rates.png"))
    return tuple(paths)
