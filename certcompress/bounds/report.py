"""The certification tiers side by side: one table and one plot of every tier's bound
next to what was measured, each labelled with its scope (worst case over the domain,
worst case over small balls around given points, or a probability over a distribution).
"""

from __future__ import annotations

import io
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import atomic_write_bytes
from ..certificate import Certificate

if TYPE_CHECKING:
    import pandas as pd

    from .local import LocalCertificate
    from .statistical import StatisticalCertificate

__all__ = ["tiers_table", "plot_tiers"]


def tiers_table(cert: Certificate, local: LocalCertificate | None = None,
                statistical: StatisticalCertificate | None = None) -> pd.DataFrame:
    """One row per statement: ``kind`` (``certified``, ``measured`` or ``statistical``),
    ``scope``, ``value`` (an l1 output deviation) and ``vacuous`` (above the output scale
    measured on the reference data; None where not applicable)."""
    import pandas as pd

    m = cert.measurements
    rows: list[dict[str, object]] = []
    by_method = cert.by_method or {}
    for name, mb in by_method.items():
        rows.append({"statement": f"{name} tier", "kind": "certified",
                     "scope": f"worst case over {cert.domain}", "value": mb.bound,
                     "vacuous": mb.vacuous})
    if not by_method:
        rows.append({"statement": f"{cert.method} tier", "kind": "certified",
                     "scope": f"worst case over {cert.domain}", "value": cert.bound,
                     "vacuous": cert.vacuous})
    if local is not None and local.n_points:
        rows.append({"statement": f"local tier (median of {local.n_points} balls)",
                     "kind": "certified",
                     "scope": f"worst case over l_inf balls of radius {local.eps:g} around "
                              f"{local.n_points} given points",
                     "value": statistics.median(local.deviation_bound), "vacuous": None})
    if statistical is not None and statistical.quantile_bound is not None:
        rows.append({"statement": f"statistical {statistical.quantile:g}-quantile",
                     "kind": "statistical",
                     "scope": f"P(deviation > value) <= {1 - statistical.quantile:g} over the "
                              f"sampling distribution, confidence {1 - statistical.delta:g}",
                     "value": statistical.quantile_bound, "vacuous": None})
    if m.adversarial_max is not None:
        rows.append({"statement": "gradient ascent (found)", "kind": "measured",
                     "scope": "a deviation attained inside the domain (a lower bound on the "
                              "worst case)", "value": m.adversarial_max, "vacuous": None})
    if m.deviation_max is not None:
        rows.append({"statement": f"max on {m.reference_count} reference inputs",
                     "kind": "measured", "scope": "attained on the reference data",
                     "value": m.deviation_max, "vacuous": None})
    return pd.DataFrame(rows).set_index("statement")


def plot_tiers(table: pd.DataFrame, path: str | os.PathLike[str], output_scale: float | None,
               title: str = "certification tiers") -> Path:
    """A horizontal bar chart (log scale) of :func:`tiers_table`, certified statements in
    one colour, statistical and measured ones in others, with the output scale as a
    vertical line (a bound to its right is vacuous). Written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"certified": "#1f77b4", "statistical": "#ff7f0e", "measured": "#2ca02c"}
    fig = Figure(figsize=(8, 0.5 * len(table) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = list(table.index)[::-1]
    values = [float(table.loc[s, "value"]) for s in labels]
    ax.barh(labels, values, color=[colours[str(table.loc[s, "kind"])] for s in labels])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    if output_scale is not None:
        ax.axvline(output_scale, color="k", ls=":", lw=1)
        ax.text(output_scale, len(labels) - 0.4, f" output scale {output_scale:.3g}",
                fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("l1 output deviation ||f(x) - f'(x)||_1 (log scale)")
    ax.set_title(title, fontsize=10)
    handles = [ax.bar(0, 0, color=c, label=k) for k, c in colours.items()]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
