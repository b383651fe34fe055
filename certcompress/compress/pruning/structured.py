"""Structured (channel) pruning through torch-pruning, certified on the zeroed equivalent.

torch-pruning's ``DependencyGraph`` couples every layer a channel touches (the conv that
produces it, its BatchNorm, the consumers' input channels, residual partners) and its
``BasePruner`` removes whole channels. A physically smaller model has another
architecture than the original, so no path-metric relates them directly; the
certificate is computed on the *zeroed equivalent*: the original architecture with every
parameter entry torch-pruning removed set to zero (a pruning, so the path-metric is
exact). Before anything is returned, the smaller model is checked to compute the same
function as the zeroed one on random inputs of the domain (and reference inputs);
a mismatch raises :class:`~certcompress.errors.VerificationError`.

Ratio semantics: ``ratio`` is torch-pruning's ``pruning_ratio``, a fraction of the
**channels** removed from each prunable group (each layer keeps
``int(channels * (1 - ratio))``, then ``round_to`` rounds the kept count down to a
multiple). Since a conv's weight count scales with its input and output channels, the
fraction of **parameters** removed is larger (about ``1 - (1 - ratio)^2`` inside the
network); the result reports the resulting parameter fraction, never the ratio alone.
Layers producing the model's output (a classifier head, a segmentation head) are always
ignored, so the output shape is unchanged.

Saving never pickles a model object: a file holds torch-pruning's pruning history
(layer name, out/in, channel indices), the smaller model's state dict and the
certificate JSON, all readable with ``torch.load(weights_only=True)``;
:func:`load_structured` replays the history on a fresh instance of the original
architecture and loads the state dict.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..._io import atomic_path
from ...api import certify, trace
from ...certificate import Certificate
from ...errors import ConfigurationError, ModelLoadError, VerificationError
from ...ir.graph import Graph
from ...ir.ops import AffineOp, AffineParams, ChannelAffineOp
from ...measure import float64_function
from ...resolve import resolve_radius
from ._layers import input_shape_for, listing

__all__ = ["prune_channels", "StructuredPruning", "PathMagnitudeImportance",
           "save_structured", "load_structured", "read_structured_certificate",
           "IMPORTANCES", "FORMAT"]

FORMAT = "certcompress.structured-pruning/1"
IMPORTANCES = ("magnitude", "path-magnitude")
History = tuple[tuple[str, bool, tuple[int, ...]], ...]


class PathMagnitudeImportance(tp.importance.Importance):
    """Channel importance from path-magnitude scores (float64).

    For each layer of a group whose *output* channels are pruned, the channel's score is
    the sum of the path-magnitude scores of its incoming weights and its (BatchNorm
    folded) bias: exactly the path-metric of removing that channel's neurons alone (every
    path through a neuron enters by an incoming weight or starts at its bias). Coupled
    layers (residual partners) are summed, an upper bound of the group's path-metric.
    ``scores`` maps module names to folded scores; ``names`` maps the pruned model's
    modules to their names.
    """

    def __init__(self, scores: Mapping[str, AffineParams], names: Mapping[nn.Module, str]
                 ) -> None:
        self.scores = dict(scores)
        self.names = dict(names)

    @staticmethod
    def _per_out_channel(layer: nn.Module, s: AffineParams) -> Tensor:
        w = s.weight
        if getattr(layer, "transposed", False):  # (in, out/groups, *k)
            g = int(getattr(layer, "groups", 1))
            per = w.reshape(g, w.shape[0] // g, w.shape[1], -1).sum(dim=(1, 3)).reshape(-1)
        else:
            per = w.reshape(w.shape[0], -1).sum(dim=1)
        return per if s.bias is None else per + s.bias

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        n = len(group[0].idxs)
        imp = torch.zeros(n, dtype=torch.float64)
        used = False
        out_fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        for item in group:
            dep, idxs, root = item.dep, item.idxs, item.root_idxs
            if dep.pruning_fn not in out_fns or any(r is None for r in root):
                continue
            s = self.scores.get(self.names.get(dep.layer, ""))
            if s is None:
                continue
            per = self._per_out_channel(dep.layer, s)
            imp.scatter_add_(0, torch.tensor(root, dtype=torch.long),
                             per[torch.tensor(idxs, dtype=torch.long)])
            used = True
        return imp if used else None


@dataclass(frozen=True, eq=False)
class StructuredPruning:
    """The result of :func:`prune_channels`.

    ``model``: the physically smaller model; ``zeroed``: the original architecture with
    the removed channels' parameters zeroed (same function, checked: ``max_difference``
    over ``checked_inputs`` inputs); ``certificate``: computed on ``zeroed``;
    ``history``: torch-pruning's pruning history. ``channel_ratio`` is the requested
    per-group channel ratio; ``channels_*`` count output channels of conv/linear layers
    and ``parameter_fraction = parameters_after / parameters_before``.
    """

    model: nn.Module
    zeroed: nn.Module
    certificate: Certificate
    history: History
    channel_ratio: float
    importance: str
    round_to: int | None
    channels_before: int
    channels_after: int
    parameters_before: int
    parameters_after: int
    parameter_fraction: float
    max_difference: float
    checked_inputs: int
    input_shape: tuple[int, ...]

    def summary(self) -> str:
        return (f"structured pruning ({self.importance} importance), channel ratio "
                f"{self.channel_ratio:g} per group (round_to={self.round_to}): channels "
                f"{self.channels_before:,} -> {self.channels_after:,}, parameters "
                f"{self.parameters_before:,} -> {self.parameters_after:,} (fraction kept "
                f"{self.parameter_fraction:.4f}); smaller model = zeroed equivalent within "
                f"{self.max_difference:.2e} on {self.checked_inputs} inputs\n"
                + self.certificate.summary())

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_structured(self, path)


def _count(model: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    channels = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            channels += int(m.out_channels)
        elif isinstance(m, nn.Linear):
            channels += int(m.out_features)
    return params, channels


def _output_modules(graph: Graph) -> set[str]:
    """Modules of the affine nodes that reach an output through non-affine ops only."""
    found: set[str] = set()
    stack, seen = list(graph.outputs), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        if isinstance(node.op, AffineOp):
            if node.module:
                found.add(node.module)
            if not isinstance(node.op, ChannelAffineOp):
                continue
        stack.extend(node.inputs)
    return found


def _history(raw: Sequence[Any]) -> History:
    return tuple((str(n), bool(o), tuple(int(i) for i in idx)) for n, o, idx in raw)


def _example(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(shape, dtype=dtype)


def _replay(model: nn.Module, history: History, shape: tuple[int, ...]) -> None:
    """Replay ``history`` on ``model`` in place (torch-pruning's load_pruning_history)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=_example(model, shape))
        dg.load_pruning_history([[n, o, list(i)] for n, o, i in history])


def _zeroed_equivalent(model: nn.Module, history: History, shape: tuple[int, ...]
                       ) -> nn.Module:
    """The original architecture with every parameter entry the history removes set to
    +0.0: replay the history on a float64 copy whose entries hold their own index + 1,
    and keep exactly the indices that survive."""
    ids = copy.deepcopy(model).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(
            ids, example_inputs=torch.zeros(shape, dtype=torch.float64))
    with torch.no_grad():
        for p in ids.parameters():
            p.copy_(torch.arange(1, p.numel() + 1, dtype=torch.float64).reshape(p.shape))
    dg.load_pruning_history([[n, o, list(i)] for n, o, i in history])
    kept = {k: v.detach().reshape(-1).long() - 1 for k, v in ids.named_parameters()}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in zeroed.named_parameters():
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[kept[name]] = True
            p.masked_fill_(~keep.reshape(p.shape), 0.0)
    return zeroed


def _check_same(small: nn.Module, zeroed: nn.Module, shape: tuple[int, ...], radius: float,
                reference: Tensor | None, samples: int, seed: int) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(seed)
    per = shape[1:]
    x = (torch.rand((samples,) + per, generator=gen, dtype=torch.float64) * 2 - 1) * radius
    if reference is not None:
        x = torch.cat([reference.reshape((-1,) + per)[:samples].double(), x])
    f, g = float64_function(small), float64_function(zeroed)
    with torch.no_grad():
        a, b = f(x), g(x)
    if a.shape != b.shape:
        raise VerificationError(f"the physically pruned model's output has shape "
                                f"{tuple(a.shape)}, the zeroed equivalent's {tuple(b.shape)}")
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    if not math.isfinite(diff) or diff > 1e-9 * max(1.0, scale):
        raise VerificationError(
            f"the physically pruned model and its zeroed equivalent differ by {diff:.3g} "
            f"(output scale {scale:.3g}) on {x.shape[0]} inputs: torch-pruning removed "
            "something the zeroed model keeps (an unsupported layer, or a bug); nothing "
            "is returned")
    return diff, int(x.shape[0])


def prune_channels(model: nn.Module, ratio: float, *, importance: str = "magnitude",
                   input_shape: Sequence[int] | None = None, input_radius: float | None = None,
                   round_to: int | None = None, ignored_layers: Sequence[str] = (),
                   global_pruning: bool = False, reference_inputs: Tensor | None = None,
                   search_steps: int = 20, search_restarts: int = 4, seed: int = 0,
                   check_samples: int = 8) -> StructuredPruning:
    """Remove the ``ratio`` fraction of channels of every prunable group (see the module
    docstring for the ratio semantics) with torch-pruning's ``BasePruner``.

    ``importance``: ``magnitude`` (torch-pruning's ``MagnitudeImportance``: group L2 norm,
    mean-normalized) or ``path-magnitude`` (:class:`PathMagnitudeImportance`).
    ``ignored_layers``: module names or glob patterns kept whole (output layers always
    are). ``round_to``: kept channels rounded down to a multiple. ``model`` is not
    modified. The certificate is on the zeroed equivalent; see :class:`StructuredPruning`.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or \
            not 0.0 <= float(ratio) < 1.0:
        raise ConfigurationError(f"ratio must be a channel fraction in [0, 1), got {ratio!r}")
    if importance not in IMPORTANCES:
        raise ConfigurationError(f"importance {importance!r} is unknown; available: "
                                 f"{', '.join(IMPORTANCES)}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise ConfigurationError(f"round_to must be a positive integer, got {round_to!r}")
    shape = input_shape_for(model, input_shape, "structured pruning")
    radius = resolve_radius(model, input_radius, domain_hint=False)[0]
    graph = trace(model, shape)
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    ignored = set(_output_modules(graph))
    for i, pat in enumerate(ignored_layers):
        hit = {n for n in modules if n and fnmatch.fnmatchcase(n, pat)}
        if not hit:
            raise ConfigurationError(f"ignored_layers[{i}] = {pat!r} matches no module; "
                                     f"modules are: {listing(n for n in modules if n)}")
        ignored |= hit
    imp: Any
    if importance == "path-magnitude":
        from ...bounds.pathnorm import path_magnitude_scores

        node_scores = path_magnitude_scores(graph)
        by_module = {n.module: node_scores[n.name] for n in graph.affine_nodes
                     if n.module and n.name in node_scores}
        imp = PathMagnitudeImportance(by_module, {m: n for n, m in modules.items()})
    else:
        imp = tp.importance.MagnitudeImportance()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            work, _example(work, shape), importance=imp, pruning_ratio=float(ratio),
            ignored_layers=[modules[n] for n in sorted(ignored) if n in modules],
            round_to=round_to, global_pruning=global_pruning)
        pruner.step()
    history = _history(pruner.pruning_history())
    work.eval()
    zeroed = _zeroed_equivalent(model, history, shape)
    diff, checked = _check_same(work, zeroed, shape, radius, reference_inputs,
                                check_samples, seed)
    cert = certify(model, zeroed, shape, radius, reference_inputs=reference_inputs,
                   search_steps=search_steps, search_restarts=search_restarts, seed=seed)
    p0, c0 = _count(model)
    p1, c1 = _count(work)
    return StructuredPruning(
        model=work, zeroed=zeroed, certificate=cert, history=history,
        channel_ratio=float(ratio), importance=importance, round_to=round_to,
        channels_before=c0, channels_after=c1, parameters_before=p0, parameters_after=p1,
        parameter_fraction=p1 / p0 if p0 else 1.0, max_difference=diff,
        checked_inputs=checked, input_shape=shape)


# ---------------------------------------------------------------------- files
def save_structured(result: StructuredPruning, path: str | os.PathLike[str]) -> Path:
    """Write the history, the smaller model's state dict and the certificate (no model
    object is pickled; the file loads with ``torch.load(weights_only=True)``)."""
    payload = {
        "format": FORMAT,
        "history": [[n, o, list(i)] for n, o, i in result.history],
        "state_dict": {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
        "input_shape": list(result.input_shape),
        "channel_ratio": result.channel_ratio,
        "importance": result.importance,
        "parameter_fraction": result.parameter_fraction,
        "certificate": result.certificate.to_json(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"structured pruning file '{p}' does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read structured pruning file '{p}' ({type(exc).__name__}"
                             f": {str(exc).splitlines()[0] if str(exc) else ''}); it must be "
                             "written by save_structured") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelLoadError(f"'{p}' is not a structured pruning file (format {FORMAT!r})")
    for key in ("history", "state_dict", "input_shape", "certificate"):
        if key not in obj:
            raise ModelLoadError(f"structured pruning file '{p}' lacks field {key!r}")
    return obj


def load_structured(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """The smaller model saved at ``path``, rebuilt from ``model`` (a fresh instance of the
    original architecture, not modified): the pruning history is replayed on a copy and
    the saved state dict loaded (``strict=True``)."""
    obj = _read(path)
    history = _history(obj["history"])
    shape = tuple(int(s) for s in obj["input_shape"])
    small = copy.deepcopy(model)
    try:
        _replay(small, history, shape)
    except Exception as exc:
        raise ModelLoadError(f"the pruning history in '{path}' does not fit "
                             f"{type(model).__name__} ({type(exc).__name__}: {exc}); pass the "
                             "original architecture") from None
    try:
        small.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the state dict in '{path}' does not fit the replayed model: "
                             f"{' '.join(str(exc).split())[:400]}") from None
    return small.eval()


def read_structured_certificate(path: str | os.PathLike[str]) -> Certificate:
    """The certificate stored with a structured pruning file."""
    return Certificate.from_json(_read(path)["certificate"])
