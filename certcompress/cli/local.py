"""Command-line options of the local and statistical certificates, for ``certify``.

``add_arguments(parser)`` adds the options; ``run(args, model, compressed, print_fn)``
computes what they ask for, prints the summaries and writes each certificate as JSON
(atomically). Held-out data is an ``.npz`` file with array ``x`` (batch first) and
optionally ``y`` (class labels), read with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..bounds.local import LocalCertificate, certify_local
from ..bounds.statistical import StatisticalCertificate, certify_statistical
from ..domain import InputDomain
from ..errors import ConfigurationError

__all__ = ["add_arguments", "run", "load_heldout", "LocalStatisticalResult"]


@dataclass(frozen=True)
class LocalStatisticalResult:
    """What ``run`` computed (None where not asked for) and the files it wrote."""

    local: LocalCertificate | None
    statistical: StatisticalCertificate | None
    written: tuple[Path, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("local and statistical certificates")
    g.add_argument("--local-eps", type=float, metavar="EPS",
                   help="certify the deviation and the top-1 decision on the l_inf ball of "
                        "radius EPS around each held-out point (needs --heldout)")
    g.add_argument("--local-points", type=int, default=100, metavar="N",
                   help="how many held-out points (the first N) get a local certificate "
                        "(default 100; each costs seconds)")
    g.add_argument("--heldout", metavar="DATA.npz",
                   help="held-out samples (.npz: array 'x', optional labels 'y'; iid from "
                        "the data distribution, not used to choose the compression): "
                        "statistical certificate, and the points of --local-eps")
    g.add_argument("--delta", type=float, default=0.05, metavar="D",
                   help="statistical statements hold together with confidence 1 - D "
                        "(default 0.05)")
    g.add_argument("--threshold", type=float, metavar="T",
                   help="bound P(||f(x) - f'(x)||_1 > T) on the held-out distribution")
    g.add_argument("--quantile", type=float, default=0.95, metavar="Q",
                   help="bound the Q-quantile of the deviation (default 0.95)")
    g.add_argument("--local-out", metavar="FILE",
                   help="local certificate JSON (default: <--out stem>.local.json)")
    g.add_argument("--statistical-out", metavar="FILE",
                   help="statistical certificate JSON (default: <--out stem>.statistical.json)")


def load_heldout(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` from an ``.npz`` file (``y`` None when absent)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"--heldout file '{p}' does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            if "x" not in data.files:
                raise ConfigurationError(f"--heldout file '{p}' has no array 'x' (it has: "
                                         f"{', '.join(data.files) or 'nothing'})")
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]) if "y" in data.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigurationError(f"cannot read --heldout file '{p}' as .npz: {exc}") from None
    if x.dtype.kind not in "fiub":
        raise ConfigurationError(f"--heldout 'x' must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigurationError(f"--heldout 'x' must be a non-empty batch (n, ...), got "
                                 f"shape {x.shape}")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (x.shape[0],)):
        raise ConfigurationError(f"--heldout 'y' must be {x.shape[0]} integer labels, got "
                                 f"dtype {y.dtype} shape {y.shape}")
    return x.astype(np.float64), y


def _out_path(explicit: str | None, args: argparse.Namespace, suffix: str) -> Path:
    if explicit:
        return Path(explicit)
    base = Path(getattr(args, "out", None) or "certificate.json")
    return base.with_name(f"{base.stem}.{suffix}.json")


def planned_outputs(args: argparse.Namespace) -> list[Path]:
    """The files :func:`run` will write for ``args`` (to check them before any work)."""
    if getattr(args, "heldout", None) is None:
        return []
    out = [_out_path(args.statistical_out, args, "statistical")]
    if getattr(args, "local_eps", None) is not None:
        out.append(_out_path(args.local_out, args, "local"))
    return out


def run(args: argparse.Namespace, model: nn.Module, compressed: nn.Module,
        print_fn: Callable[[str], None] = print, *,
        input_shape: Sequence[int] | None = None, domain: InputDomain | None = None,
        progress: bool = True) -> LocalStatisticalResult:
    """Compute and write what the options of :func:`add_arguments` ask for (nothing when
    neither ``--local-eps`` nor ``--heldout`` is given). ``input_shape`` (batch first),
    when given, is the shape the held-out samples are reshaped to per sample. ``domain``
(the ``--domain`` box of the ``certify`` command), when given, is intersected with each
local ball."""
    eps = getattr(args, "local_eps", None)
    heldout = getattr(args, "heldout", None)
    if heldout is None:
        if eps is None:
            return LocalStatisticalResult(None, None, ())
        raise ConfigurationError("--local-eps needs points: pass --heldout data.npz (its 'x')")
    if args.local_points < 1:
        raise ConfigurationError(f"--local-points must be >= 1, got {args.local_points}")
    x_np, y_np = load_heldout(heldout)
    x = torch.from_numpy(x_np)
    if input_shape is not None:
        per = tuple(int(s) for s in input_shape)[1:]
        if math.prod(x.shape[1:]) != math.prod(per):
            raise ConfigurationError(f"--heldout samples have shape {tuple(x.shape[1:])}, the "
                                     f"model takes {per} per sample")
        x = x.reshape((-1,) + per)
    y = None if y_np is None else torch.from_numpy(y_np.astype(np.int64))
    written: list[Path] = []
    local = None
    if eps is not None:
        lo = hi = None
        if domain is not None:  # one sample's box: drop the batch dimension of the domain
            lo = domain.lower_tensor().reshape(x.shape[1:])
            hi = domain.upper_tensor().reshape(x.shape[1:])
        local = certify_local(model, compressed, x[:args.local_points], eps, domain_lower=lo,
                              domain_upper=hi, progress=progress)
        print_fn(local.summary())
        written.append(local.save(_out_path(args.local_out, args, "local")))
        print_fn(f"local certificate written to {written[-1].resolve()}")
    stat = certify_statistical(model, compressed, x, delta=args.delta, threshold=args.threshold,
                               quantile=args.quantile, labels=y)
    print_fn(stat.summary())
    written.append(stat.save(_out_path(args.statistical_out, args, "statistical")))
    print_fn(f"statistical certificate written to {written[-1].resolve()}")
    return LocalStatisticalResult(local, stat, tuple(written))
