"""Trace an original and its compressed copy together: one capture, two graphs.

A pruned or quantized copy usually has the original's structure exactly: the same module
tree, the same code, only other parameter values. Its fx graph is then the original's,
so :func:`trace_pair` captures the original once and rebinds that graph to the copy's
own parameters (skipping the second symbolic trace and meta-shape pass) when
:func:`structure_difference` finds nothing that could make the two traces differ; any
difference, or anything it cannot compare, falls back to a full trace of the copy. The
copy still gets every per-model step of :func:`certcompress.capture.trace`: the training
mode and hook refusals, the in-place analysis, the conversion of its own parameters and
the trace check's probes (docs/architecture.md, "Trace check").

The two SHA-256 parameter digests (:func:`certcompress.digest.parameter_digest`) are
computed in a worker thread meanwhile (``hashlib`` releases the GIL on large buffers), so
they cost no separate sweep after the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..digest import model_state, state_digest
from ..ir.graph import Graph
from .check import TraceCheckReport
from .registry import AdapterRegistry
from .tracer import trace_captured

__all__ = ["TracedPair", "structure_difference", "trace_pair"]

# nn.Module bookkeeping compared separately (parameters, buffers, submodules)
_TENSOR_DICTS = ("_parameters", "_buffers", "_modules")
_SCALARS = (bool, int, float, complex, str, bytes, type(None))


@dataclass(frozen=True)
class TracedPair:
    """The graphs of the original (``graph``) and of the compressed model (``other``),
    ``reused``: whether ``other`` was built on the original's fx capture (else ``why``
    says what differed), the two parameter digests (:meth:`digests`) and the two trace
    check reports (``checks``: original, compressed; their probe outputs are reusable
    samples of each model in the domain)."""

    graph: Graph
    other: Graph
    reused: bool
    why: str
    _digests: Future[tuple[str, str]]
    checks: tuple[TraceCheckReport | None, TraceCheckReport | None] = (None, None)

    def digests(self) -> tuple[str, str]:
        """``(original digest, compressed digest)``; waits for the worker thread."""
        return self._digests.result()


def _same_value(a: Any, b: Any, depth: int = 0) -> bool:
    """Equal plain data (scalars, strings, containers of them), or the same object."""
    if a is b:
        return True
    if depth > 8 or type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return False  # a plain tensor attribute becomes a graph constant: trace it again
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, _SCALARS):
        return bool(a == b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, (set, frozenset)):
        return all(isinstance(x, _SCALARS) for x in a) and a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k], depth + 1) for k in a)
    if isinstance(a, (torch.dtype, torch.device, torch.Size)):
        return bool(a == b)
    return False  # another object: only the same object is known to trace the same


def _same_tensor_slots(kind: str, a: dict[str, Any], b: dict[str, Any], where: str
                       ) -> str | None:
    if list(a) != list(b):
        return f"{where}: {kind} {sorted(a)} vs {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if (x is None) != (y is None):
            return f"{where}: {kind} '{k}' is None in one model only"
        if x is None:
            continue
        if (x.shape, x.dtype, x.device, x.layout) != (y.shape, y.dtype, y.device, y.layout):
            return (f"{where}: {kind} '{k}' is {tuple(x.shape)} {x.dtype} vs "
                    f"{tuple(y.shape)} {y.dtype}")
        if type(x) is not type(y):
            return f"{where}: {kind} '{k}' is a {type(x).__name__} vs {type(y).__name__}"
    return None


def structure_difference(model: nn.Module, other: nn.Module) -> str | None:
    """Why ``other`` might not trace to ``model``'s fx graph (None: it traces the same).

    Strict: the same module tree (names and exact types, hence the same ``forward``
    code), no ``forward`` set on an instance, parameters and buffers of the same names,
    shapes, dtypes and devices, and every other attribute of every module equal as
    plain data (numbers, strings, containers of them) or the very same object. A plain
    tensor attribute, or an object it cannot compare, counts as a difference."""
    mods_a = list(model.named_modules(remove_duplicate=False))
    mods_b = list(other.named_modules(remove_duplicate=False))
    if [n for n, _ in mods_a] != [n for n, _ in mods_b]:
        return "the module trees differ"
    for (name, a), (_, b) in zip(mods_a, mods_b):
        where = f"module '{name or '(root)'}'"
        if type(a) is not type(b):
            return f"{where} is a {type(a).__name__} vs a {type(b).__name__}"
        va, vb = vars(a), vars(b)
        if "forward" in va or "forward" in vb:
            return f"{where} has an instance-level forward"
        for kind in ("_parameters", "_buffers"):
            why = _same_tensor_slots(kind.strip("_"), va[kind], vb[kind], where)
            if why:
                return why
        keys = [k for k in va if k not in _TENSOR_DICTS]
        if keys != [k for k in vb if k not in _TENSOR_DICTS]:
            return f"{where} has other attributes"
        for k in keys:
            if not _same_value(va[k], vb[k]):
                return f"{where}: attribute '{k}' differs or cannot be compared"
    return None


def _digests(state: Mapping[str, object], other: Mapping[str, object]) -> tuple[str, str]:
    return state_digest(state), state_digest(other)


def trace_pair(model: nn.Module, compressed: nn.Module, input_shape: Sequence[int],
               domain: Any = None, *, registry: AdapterRegistry | None = None) -> TracedPair:
    """Trace ``model`` and ``compressed`` for inputs of ``input_shape``, each checked on
    probes of ``domain`` (as :func:`certcompress.capture.trace`), reusing the original's
    capture for the compressed model when :func:`structure_difference` allows it, with
    both parameter digests computed alongside (see module doc)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certcompress-digest")
    try:
        # snapshots taken here: tracing swaps the modules' parameters to meta tensors for a
        # moment (shape propagation), which the worker must not see
        digests = pool.submit(_digests, model_state(model), model_state(compressed))
    finally:
        pool.shutdown(wait=False)
    graph, captured = trace_captured(model, input_shape, registry=registry, domain=domain)
    why = structure_difference(model, compressed) if captured.how == "torch.fx" \
        else f"the original was captured with {captured.how}"
    other, checked = trace_captured(compressed, input_shape, registry=registry, domain=domain,
                                    reuse=captured if why is None else None)
    return TracedPair(graph, other, why is None, why or "", digests,
                      (captured.check, checked.check))
