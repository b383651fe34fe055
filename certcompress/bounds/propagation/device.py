"""Where the propagation runs: the CPU, or a CUDA GPU when one is present
(``PropagationOptions.device``; docs/bounds.md, "On a GPU").

The arithmetic is the same on both: float64 with round-to-nearest, every bound pushed
outward by the engine's margins (:mod:`certcompress.bounds.numerics`). That error model
needs every kernel to compute plain sums of products, in any order. On a GPU, cuBLAS's
float64 GEMM does (fused multiply-adds only make a sum more accurate), but cuDNN may
pick transform-based convolution algorithms (FFT, Winograd), whose rounding is not such
a sum: :func:`on_device` therefore turns cuDNN off, and PyTorch's own CUDA convolution
(unfold, then a cuBLAS GEMM) runs instead. Float64 on CUDA keeps subnormals (no
flush-to-zero), so the underflow margins hold as well.

The two devices sum in different orders. Where that only moves the last bits, the
bound computed on a GPU, stated ``DEVICE_MARGIN`` (``2^-31``) relative higher, passes a
CPU re-check (``RECERTIFY_RTOL = 1e-9``). But a last-bit difference can tip the
engine's discrete choices and move a CROWN bound by percent (both sound), so a GPU's
entry is re-checked on a GPU where one is present (:func:`recheck_device`), and
``"auto"`` does not pick a GPU (:data:`AUTO_PICKS_GPU`): a GPU runs when asked for.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

from ...errors import CertcompressError, ConfigurationError
from ...ir import AffineParams, Graph

T = TypeVar("T")

__all__ = ["DEVICE_ENV", "AUTO_CUDA_ELEMENTS", "AUTO_PICKS_GPU", "DEVICE_MARGIN",
           "check_device", "resolve_device", "on_device", "run_on", "recheck_device",
           "graph_on", "graph_elements", "stated_up"]

#: the environment variable that overrides what ``device="auto"`` picks ("cpu", "cuda",
#: "cuda:N"): e.g. to run a test suite's bound tiers on a GPU
DEVICE_ENV = "CERTCOMPRESS_DEVICE"
#: ``"auto"`` runs a pair on a GPU (when one is present) from this many node elements of
#: the traced pair on (resnet18 at 32x32 has ~1.4 million; a 784-100-100-10 MLP ~1,000):
#: below it, kernel launches and transfers cost more than the arithmetic saves
AUTO_CUDA_ELEMENTS = 100_000
#: whether ``"auto"`` picks a GPU at all. Off: the GPU path has not yet run on a GPU in
#: this project's checks, and a 1-ulp change of the arithmetic can tip the engine's
#: discrete choices (which neurons get CROWN rows, adaptive slopes) and move a CROWN
#: bound by up to 18% (``benchmarks/bench_reorder_sensitivity.py``): both bounds sound,
#: but a GPU's certificate then needs a GPU to be re-checked (:func:`recheck_device`).
#: A GPU is used when asked for (``device="cuda"`` or :data:`DEVICE_ENV`)
AUTO_PICKS_GPU = False
#: the relative amount a bound computed on a GPU is stated higher (module docstring)
DEVICE_MARGIN = 2.0 ** -31

_SPEC = re.compile(r"(auto|cpu|cuda(:\d{1,3})?)")

# cuDNN's switch is process-wide (not per thread): blocks that overlap in several threads
# turn it off once and the last one out restores what was set before the first came in
# (as certcompress/_threads.py does for the thread count), so one thread leaving cannot
# turn cuDNN back on under another's convolutions
_cudnn_lock = threading.Lock()
_cudnn_users = 0
_cudnn_before = True


def check_device(spec: object, what: str = "device") -> str:
    """``spec`` as a device string (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``; a
    :class:`torch.device` of those types is accepted), or a ConfigurationError that says
    what is accepted."""
    text = str(spec) if isinstance(spec, torch.device) else spec
    if not isinstance(text, str) or not _SPEC.fullmatch(text):
        raise ConfigurationError(
            f"{what} must be 'auto' (a CUDA GPU for large pairs when one is present, else "
            f"the CPU), 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    return text


def resolve_device(spec: str, elements: int) -> torch.device:
    """The device a pair of ``elements`` node elements runs on: ``spec`` itself, or for
    ``"auto"`` the environment's :data:`DEVICE_ENV` when set, else (with
    :data:`AUTO_PICKS_GPU`, off) the first CUDA GPU when one is present and the pair has
    at least :data:`AUTO_CUDA_ELEMENTS` elements, else the CPU. A CUDA device asked for where none is usable is a ConfigurationError
    (never a silent fall-back: the caller asked for it)."""
    text = check_device(spec)
    if text == "auto":
        env = os.environ.get(DEVICE_ENV, "").strip()
        if env and env != "auto":
            text = check_device(env, f"the environment variable {DEVICE_ENV}")
        elif AUTO_PICKS_GPU and torch.cuda.is_available() and elements >= AUTO_CUDA_ELEMENTS:
            text = "cuda"
        else:
            text = "cpu"
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {text!r} was asked for, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}): this "
                "machine or torch build has no usable GPU; use device='cpu' or 'auto'")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"device {text!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        dev = torch.device("cuda", index)
    return dev


@contextmanager
def on_device(dev: torch.device) -> Iterator[None]:
    """Run the block with ``dev`` as the default device of new tensors (the lowering's and
    the engine's own constants follow it) and, on a GPU, with cuDNN off (module
    docstring). Nothing changes on the CPU."""
    if dev.type == "cpu":
        yield
        return
    with torch.device(dev), _cudnn_off():
        yield


@contextmanager
def _cudnn_off() -> Iterator[None]:
    """cuDNN off for the block, in every thread at once (see ``_cudnn_lock``); only
    ``enabled`` changes (``torch.backends.cudnn.flags`` would also reset ``deterministic``
    and ``benchmark`` process-wide)."""
    global _cudnn_users, _cudnn_before
    with _cudnn_lock:
        if _cudnn_users == 0:
            _cudnn_before = torch.backends.cudnn.enabled
        _cudnn_users += 1
        torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        with _cudnn_lock:
            _cudnn_users -= 1
            if _cudnn_users == 0:
                torch.backends.cudnn.enabled = _cudnn_before


def run_on(spec: str, dev: torch.device, fn: Callable[[torch.device], T]
           ) -> tuple[T, torch.device]:
    """``(fn(dev), dev)`` with ``fn`` run under :func:`on_device`. Where ``dev`` is a GPU
    that ``spec`` ``"auto"`` chose and the run fails there (a RuntimeError: out of GPU
    memory, an op the device lacks), a RuntimeWarning that says why and ``(fn(cpu),
    cpu)``: the CPU computes the same bound. A device the caller named explicitly, and
    certcompress's own errors (a refusal, an overflow), propagate."""
    try:
        with on_device(dev):
            return fn(dev), dev
    except RuntimeError as exc:
        if spec != "auto" or dev.type == "cpu" or isinstance(exc, CertcompressError):
            raise
        warnings.warn(f"the bound computation on {dev} failed ({type(exc).__name__}: "
                      f"{str(exc)[:300]}); it ran on the CPU instead (the same bound). Pass "
                      f"device='cpu' to skip the GPU", RuntimeWarning, stacklevel=3)
    cpu = torch.device("cpu")
    return fn(cpu), cpu


def recheck_device(recorded: object) -> str:
    """Where a certificate entry is re-checked: on a GPU when it was computed on one and
    a GPU is present (the same kernels make the same discrete choices), else on the CPU
    (where a GPU-made CROWN bound may be refused as differing: docs/bounds.md, "On a
    GPU")."""
    if isinstance(recorded, str) and recorded.startswith("cuda") \
            and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def graph_on(graph: Graph, dev: torch.device) -> Graph:
    """``graph`` with its parameters on ``dev`` (the graph itself when they are there)."""
    params = graph.params
    if all(p.device == dev for p in params.values()):
        return graph
    return graph.with_params({
        k: AffineParams(p.weight.to(dev), None if p.bias is None else p.bias.to(dev))
        for k, p in params.items()})


def graph_elements(graph: Graph) -> int:
    """The node elements of a traced graph per input (what ``"auto"`` sizes a pair by)."""
    return sum(math.prod(int(s) for s in n.shape[1:]) for n in graph.nodes)


def stated_up(dev: torch.device, values: Sequence[float] | Tensor) -> list[float]:
    """``values`` as stated by a bound computed on ``dev``: unchanged on the CPU, else
    raised by :data:`DEVICE_MARGIN` relative and rounded up (module docstring)."""
    vals = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    if dev.type == "cpu":
        return vals
    return [math.nextafter(v * (1.0 + DEVICE_MARGIN), math.inf) if v > 0 else v
            for v in vals]
