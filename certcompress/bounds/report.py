"""The certification tiers side by side: one table and one plot of every tier's bound
next to what was measured, each labelled with its scope (worst case over the domain,
worst case over small balls around given points, or a probability over a distribution).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from .._plots import SCOPE_COLOURS, SCOPE_LABELS, new_axes, output_scale_line, save_png
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
        rows.append({"statement": f"{cert.bound_method} tier", "kind": "certified",
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


def _scope_of(statement: str, kind: str) -> str:
    if kind == "certified":
        return "local" if statement.startswith("local tier") else "worst-case"
    return kind


def plot_tiers(table: pd.DataFrame, path: str | os.PathLike[str], output_scale: float | None,
               title: str = "certification tiers") -> Path:
    """A horizontal bar chart (log scale) of :func:`tiers_table` in the project's plot
    style (:mod:`certcompress._plots`): one colour per scope, named in the legend, and
    the output scale as a dotted line (a bound to its right is vacuous). Statements of
    different scopes are drawn in separate groups: a local bound covers small balls
    around given points only, so it is not comparable with a deviation found elsewhere
    in the domain. Written atomically as PNG."""
    order = ["worst-case", "measured", "local", "statistical"]
    scopes = {s: _scope_of(str(s), str(table.loc[s, "kind"])) for s in table.index}
    labels = sorted(table.index, key=lambda s: order.index(scopes[s]), reverse=True)
    fig, ax = new_axes(8.5, 0.5 * len(table) + 2.2)
    values = [float(table.loc[s, "value"]) for s in labels]
    ax.barh(labels, values, color=[SCOPE_COLOURS[scopes[s]] for s in labels])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    for y in range(1, len(labels)):  # a thin rule between scopes
        if scopes[labels[y]] != scopes[labels[y - 1]]:
            ax.axhline(y - 0.5, color="0.7", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("l1 output deviation ||f(x) - f'(x)||_1 (log scale)")
    ax.set_title(title, fontsize=10)
    used = [k for k in order if k in scopes.values()]
    handles = [ax.barh([0], [0], color=SCOPE_COLOURS[k], label=SCOPE_LABELS[k]) for k in used]
    output_scale_line(ax, output_scale, vertical=True)
    lines = [ln for ln in ax.get_lines() if not str(ln.get_label()).startswith("_")]
    ax.legend(handles=[*handles, *lines], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.18), ncol=2)
    return save_png(fig, path)
