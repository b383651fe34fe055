"""One style for every plot certcompress writes.

Each plot of a deviation carries the same three things, so that a reader can tell a
useful bound from a vacuous one without reading a table:

* the *output scale* as a dotted vertical or horizontal line (a bound beyond it is
  vacuous: it says less than the outputs' own size);
* the *scope* of each statement in the legend: a worst case over the whole domain, a
  worst case over small balls around given points (per-point local), a probability over
  a distribution (statistical), or a value attained somewhere (measured);
* accuracy where it is relevant, on a second axis.

Figures are drawn with matplotlib's object API on an Agg canvas (no global state, no
display needed) and written atomically as PNG. matplotlib is imported only when a plot
is drawn.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from ._io import atomic_write_bytes

__all__ = ["SCOPE_COLOURS", "SCOPE_LABELS", "new_axes", "output_scale_line", "save_png"]

# Colour and legend label per scope; the same everywhere.
SCOPE_COLOURS = {"worst-case": "#1f77b4", "local": "#9467bd", "statistical": "#ff7f0e",
                 "measured": "#2ca02c"}
SCOPE_LABELS = {"worst-case": "certified: worst case over the domain",
                "local": "certified: worst case over small balls around given points",
                "statistical": "statistical: a quantile over the data distribution",
                "measured": "measured: attained somewhere (a lower bound)"}


def new_axes(width: float, height: float) -> tuple[Any, Any]:
    """A figure on an Agg canvas and its single axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def output_scale_line(ax: Any, scale: float | None, *, vertical: bool = False) -> bool:
    """Draw the output scale as a dotted line labelled 'output scale (beyond: vacuous)';
    False (nothing drawn) when the scale is unknown or not a positive finite number."""
    if scale is None or not math.isfinite(scale) or scale <= 0:
        return False
    label = f"output scale {scale:.3g} (a bound beyond it is vacuous)"
    if vertical:
        ax.axvline(scale, color="k", ls=":", lw=1.2, label=label)
    else:
        ax.axhline(scale, color="k", ls=":", lw=1.2, label=label)
    return True


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Lay the figure out and write it atomically as PNG."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
