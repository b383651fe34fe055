"""Link to compression: the same estimates for compressed copies of a trained network.

Two built-in compressors make the feature usable now (the main certcompress pruning
and quantisation APIs can replace them: any ``Callable[[nn.Module], nn.Module]`` that
returns a ScaledResNet of the same shape works).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..errors import ConfigurationError, GraphMismatchError
from ._data import as_features, as_targets
from ._estimate import EstimateOptions, estimate
from ._model import ScaledResNet
from ._train import Checkpoint, TrainRun

__all__ = ["MagnitudePrune", "RoundToGrid", "magnitude_prune", "round_to_grid", "compression_effect"]


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters()
            if p.is_floating_point() and not n.rsplit(".", 1)[-1].endswith("bias")]


@dataclass(frozen=True)
class MagnitudePrune:
    """Zero the ``fraction`` of smallest-magnitude weights, globally over all weight
    tensors (parameters whose name ends in ``bias`` are kept). Returns a copy."""

    fraction: float

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0.0 <= self.fraction < 1.0):
            raise ConfigurationError(f"magnitude_prune: fraction must be in [0, 1), got {self.fraction!r}")

    def __call__(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        params = _weights(out)
        if not params:
            return out
        flat = torch.cat([p.detach().abs().flatten().to(torch.float64) for _, p in params])
        k = int(round(self.fraction * flat.numel()))
        if k == 0:
            return out
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, k, largest=False).indices] = False
        offset = 0
        with torch.no_grad():
            for _, p in params:
                m = keep[offset: offset + p.numel()].view_as(p)
                p.mul_(m.to(p.dtype))
                offset += p.numel()
        return out


@dataclass(frozen=True)
class RoundToGrid:
    """Symmetric uniform per-tensor rounding to ``bits`` bits with zero on the grid:
    step = max|W| / (2^(bits-1) - 1), W -> step * round(W / step), for every floating
    parameter. Returns a copy."""

    bits: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 32:
            raise ConfigurationError(f"round_to_grid: bits must be an integer in [2, 32], got {self.bits!r}")

    def __call__(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        levels = 2 ** (self.bits - 1) - 1
        with torch.no_grad():
            for _, p in out.named_parameters():
                if not p.is_floating_point():
                    continue
                top = float(p.abs().max()) if p.numel() else 0.0
                if top == 0.0:
                    continue
                step = top / levels
                p.copy_(torch.round(p / step) * step)
        return out


def magnitude_prune(fraction: float) -> MagnitudePrune:
    """A compressor zeroing the smallest-magnitude ``fraction`` of weights globally."""
    return MagnitudePrune(fraction)


def round_to_grid(bits: int) -> RoundToGrid:
    """A compressor rounding each tensor to a symmetric uniform ``bits``-bit grid."""
    return RoundToGrid(bits)


def _check(name: str, original: ScaledResNet, compressed: object) -> ScaledResNet:
    if not isinstance(compressed, ScaledResNet):
        raise ConfigurationError(
            f"compressor '{name}' returned {type(compressed).__name__}; it must return a "
            "ScaledResNet (a modified copy of the one it was given)")
    want = {n: p.shape for n, p in original.named_parameters()}
    got = {n: p.shape for n, p in compressed.named_parameters()}
    if want != got or compressed.config != original.config:
        raise GraphMismatchError(f"compressor '{name}' changed the network's configuration or shapes")
    return compressed


def compression_effect(
    run: TrainRun,
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    compressors: Mapping[str, Callable[[nn.Module], nn.Module]],
    delta: float = 0.05,
    *,
    options: EstimateOptions | None = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Estimates for the trained network and for each compressed copy, one row each.

    The compressed parameters replace the final checkpoint (the trajectory up to it is
    the training run's), so Gram eigenvalues, W2/KL distance from initialisation,
    Rademacher term, gap estimate and measured gap all refer to the compressed network.
    Extra columns: ``compressor``, ``zero_fraction`` (share of exactly-zero
    parameters) and ``relative_change`` (||theta_c - theta|| / ||theta||). The run and
    its model are not modified.
    """
    if not isinstance(run, TrainRun):
        raise ConfigurationError(f"compression_effect needs a TrainRun, got {type(run).__name__}")
    Xtr = as_features(X_train, "X_train")
    ytr = as_targets(y_train, Xtr.shape[0], "y_train")
    base = run.model
    rows = []
    variants: list[tuple[str, ScaledResNet]] = [("original", base)]
    for name, fn in compressors.items():
        if name == "original":
            raise ConfigurationError("compressor name 'original' is reserved for the uncompressed network")
        variants.append((name, _check(name, base, fn(copy.deepcopy(base)))))
    ref = torch.cat([p.detach().flatten().to(torch.float64) for p in base.parameters()])
    X = torch.as_tensor(Xtr, dtype=base.res_u.dtype)
    y = torch.as_tensor(ytr, dtype=base.res_u.dtype)
    for name, model in variants:
        model.eval()
        if model is base:
            derived = run
        else:
            state = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                loss = 0.5 * float(((model(X) - y) ** 2).mean())
            last = run.checkpoints[-1]
            derived = dataclasses.replace(
                run, model=model,
                checkpoints=run.checkpoints[:-1] + (Checkpoint(last.step, last.time, loss, state),))
        est = estimate(derived, Xtr, ytr, X_test, y_test, delta, options=options, seed=seed,
                       progress=progress)
        vec = torch.cat([p.detach().flatten().to(torch.float64) for p in model.parameters()])
        row = {"compressor": name,
               "zero_fraction": float((vec == 0).double().mean()),
               "relative_change": float((vec - ref).norm() / max(float(ref.norm()), 1e-300)),
               **est.as_row(), "notes": "; ".join(est.notes)}
        rows.append(row)
    table = pd.DataFrame(rows).set_index("compressor", drop=False)
    if not all(math.isfinite(v) for v in table["measured_gap"]):
        table.attrs["warning"] = "some measured gaps are not finite"
    return table
