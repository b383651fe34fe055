"""Reports: the per-layer bit table, the side-by-side comparison with onnxruntime's
default int8 per-channel quantization, the bound-vs-average-bits curve, and files (CSV,
PNG bar chart of bits per layer, PNG plot of the curve).

Every bound here is a certificate of the quantized model (:func:`quantize` or
:func:`choose_bitwidths`), shown next to the deviation measured on reference data and
by the adversarial search, and flagged when vacuous (docs/path-metrics.md, section 6).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..._io import atomic_write_text
from ..._plots import SCOPE_COLOURS, SCOPE_LABELS, new_axes, output_scale_line, save_png
from ..._runners import runner
from ...certificate import Certificate
from ...domain import InputDomain
from ...loading import module_without_executor, spec_for_executor
from .allocate import BitAllocation, choose_bitwidths
from .apply import quantize
from .config import QuantConfig
from .quantizers import affine_layers, channel_axis
from .sensitivity import SensitivityTable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ORT_LABEL", "ort_default_config", "bits_table", "compare_with_ort", "bound_vs_bits",
           "plot_bits", "plot_bound_vs_bits", "write_report"]

ORT_LABEL = "onnxruntime default int8 (symmetric, per-channel)"


def ort_default_config(model: nn.Module) -> QuantConfig:
    """The weight grid onnxruntime's ``quantize_static(per_channel=True)`` uses by default:
    int8 weights, symmetric range [-127, 127], scale ``max|w|/127`` per output channel
    (axis 0; axis 1 for ConvTranspose), biases left to int32 with activation scales (kept
    in float here, as weight-only certification does)."""
    return QuantConfig.uniform(model, 8, "per-channel")


def bits_table(model: nn.Module, qcfg: QuantConfig,
               sensitivity: SensitivityTable | None = None) -> pd.DataFrame:
    """One row per quantized layer: type, weights, bits, granularity, bytes (packed codes
    plus scales) and, given a sensitivity table, the certified bound of quantizing that
    layer alone at its width."""
    import pandas as pd

    mods = affine_layers(model)
    rows = []
    for name, spec in qcfg.layers.items():
        m = mods[name]
        w = m.weight
        assert isinstance(w, Tensor)
        n_scales = w.shape[channel_axis(m)] if spec.granularity == "per-channel" else 1
        row: dict[str, object] = {
            "layer": name, "type": type(m).__name__, "weights": w.numel(), "bits": spec.bits,
            "granularity": spec.granularity,
            "bytes": math.ceil(w.numel() * spec.bits / 8) + n_scales * w.element_size()}
        if sensitivity is not None and name in sensitivity.layers \
                and spec.bits in sensitivity.candidates:
            row["bound_alone"] = sensitivity.bound(name, spec.bits)
        rows.append(row)
    return pd.DataFrame(rows).set_index("layer")


def _row(label: str, model: nn.Module, cfg: QuantConfig, cert: Certificate) -> dict[str, object]:
    row = cert.to_row()
    return {"configuration": label, "average_bits": cfg.average_bits(model),
            "weight_bits": cfg.total_weight_bits(model), "model_bytes": cfg.size_bytes(model),
            **{k: row[k] for k in _CERT_COLUMNS}}


#: the certificate columns of the comparison table (names of :meth:`Certificate.to_row`)
_CERT_COLUMNS = ("certified_bound", "bound_method", "deviation_max", "deviation_mean",
                 "adversarial_max", "output_scale", "vacuous")


def compare_with_ort(model: nn.Module, chosen: QuantConfig | BitAllocation,
                     input_shape: Sequence[int] | None = None, input_radius: float | None = None,
                     reference_inputs: Tensor | None = None, *, search_steps: int = 20,
                     seed: int = 0, label: str = "chosen allocation",
                     domain: InputDomain | None = None) -> pd.DataFrame:
    """Side by side: certified bound and measured deviation of onnxruntime's default int8
    per-channel weights and of ``chosen``, each certified on the same domain (with
    ``domain``, a box, by the path-metric and bound-propagation tiers)."""
    import pandas as pd

    cfg = chosen.config if isinstance(chosen, BitAllocation) else chosen
    rows = []
    for lab, c in ((ORT_LABEL, ort_default_config(model)), (label, cfg)):
        _, cert = quantize(model, c, None if domain else input_shape,
                           None if domain else input_radius, reference_inputs,
                           search_steps=search_steps, seed=seed, domain=domain,
                           methods=None)  # certify's registry defaults for the domain
        rows.append(_row(lab, model, c, cert))
    return pd.DataFrame(rows).set_index("configuration")


def bound_vs_bits(model: nn.Module | str, avg_bits: Iterable[float], *,
                  candidates: Iterable[int] = (2, 3, 4, 5, 6, 8),
                  input_shape: Sequence[int] | None = None, input_radius: float | None = None,
                  granularity: str = "per-channel", executor: str | Any | None = None,
                  store: str | os.PathLike[str] | None = None, sweep: str | None = None
                  ) -> pd.DataFrame:
    """The certified bound against average bits: allocated (``choose_bitwidths`` at each
    ``avg_bits``) and uniform (every candidate width for all layers).

    With ``executor`` each point is one task of :mod:`certcompress.scale` (``model`` must
    then be a model spec string), optionally stored in and resumed from ``store``."""
    import pandas as pd

    if executor is not None:
        return runner("bound_vs_bits")(spec_for_executor(model), avg_bits, candidates=candidates,
                                 input_shape=input_shape, input_radius=input_radius,
                                 granularity=granularity, executor=executor, store=store,
                                 sweep=sweep)
    model = module_without_executor(model, "the sweep")

    cands = sorted(set(candidates))
    rows = []
    for a in avg_bits:
        al = choose_bitwidths(model, avg_bits=float(a), candidates=cands, input_shape=input_shape,
                              input_radius=input_radius, granularity=granularity)
        rows.append({"kind": "allocated", "budget_bits": float(a),
                     "average_bits": al.average_bits, "certified_bound": al.bound})
    for b in cands:
        cfg = QuantConfig.uniform(model, b, granularity)
        _, cert = quantize(model, cfg, input_shape, input_radius, search_steps=0)
        rows.append({"kind": "uniform", "budget_bits": float(b),
                     "average_bits": float(b), "certified_bound": cert.bound})
    return pd.DataFrame(rows)


def plot_bits(table: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """PNG bar chart of bits per layer (a :func:`bits_table`)."""
    fig, ax = new_axes(max(5.0, 0.35 * len(table) + 2.0), 3.6)
    ax.bar(range(len(table)), table["bits"].tolist(), color="tab:blue")
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels([str(i) for i in table.index], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("bits")
    ax.set_title(title or "bits per layer")
    ax.axhline(8, color="gray", lw=0.8, ls="--")
    return save_png(fig, path, dpi=120)


def plot_bound_vs_bits(curve: pd.DataFrame, path: str | os.PathLike[str],
                       comparison: pd.DataFrame | None = None,
                       output_scale: float | None = None) -> Path:
    """PNG plot of certified bound (log scale) against average bits (a
    :func:`bound_vs_bits` frame), with the onnxruntime int8 point when given and the
    output scale as a dotted line (a bound above it is vacuous)."""
    fig, ax = new_axes(6.0, 4.0)
    colour = SCOPE_COLOURS["worst-case"]
    for kind, style in (("uniform", "s--"), ("allocated", "o-")):
        part = curve[curve["kind"] == kind].sort_values("average_bits")
        if len(part):
            ax.plot(part["average_bits"], part["certified_bound"], style, color=colour,
                    alpha=1.0 if kind == "allocated" else 0.6,
                    label=f"{kind} widths: {SCOPE_LABELS['worst-case']}")
    if comparison is not None and ORT_LABEL in comparison.index:
        r = comparison.loc[ORT_LABEL]
        ax.plot([r["average_bits"]], [r["certified_bound"]], "k*", ms=10, label="onnxruntime int8")
    output_scale_line(ax, output_scale)
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel("certified bound (l1, over the domain)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return save_png(fig, path, dpi=120)


def write_report(out_dir: str | os.PathLike[str], model: nn.Module, allocation: BitAllocation,
                 *, comparison: pd.DataFrame | None = None, curve: pd.DataFrame | None = None
                 ) -> dict[str, Path]:
    """Write ``bits.csv``, ``sensitivity.csv``, ``bits_per_layer.png`` and, when given,
    ``comparison.csv``, ``bound_vs_bits.csv`` and ``bound_vs_bits.png`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = bits_table(model, allocation.config, allocation.sensitivity)
    files = {"bits": atomic_write_text(out / "bits.csv", table.to_csv()),
             "sensitivity": allocation.sensitivity.to_csv(out / "sensitivity.csv"),
             "bits_png": plot_bits(table, out / "bits_per_layer.png",
                                   f"bits per layer ({allocation.average_bits:.2f} avg, bound "
                                   f"{allocation.bound:.3g})")}
    if comparison is not None:
        files["comparison"] = atomic_write_text(out / "comparison.csv", comparison.to_csv())
    if curve is not None:
        files["curve"] = atomic_write_text(out / "bound_vs_bits.csv", curve.to_csv(index=False))
        files["curve_png"] = plot_bound_vs_bits(
            curve, out / "bound_vs_bits.png", comparison,
            output_scale=allocation.certificate.measurements.output_scale)
    return files
