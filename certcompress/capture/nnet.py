"""The NNet format (``.nnet``, of Reluplex, sisl/NNet, ReluVal and ReluDiff), read as data.

A ``.nnet`` file is a fully connected ReLU network in comma-separated text (the ACAS-Xu
networks are distributed in it). Layout, one record a line, each line optionally ending
with a comma:

1. header comment lines starting with ``//`` (none, in files written by ReluDiff);
2. ``numLayers,inputSize,outputSize,maxLayerSize``: ``numLayers`` counts the affine
   layers (hidden and output, not the input);
3. the ``numLayers + 1`` layer sizes, input first;
4. a flag line (unused, one integer);
5. the ``inputSize`` input minimums; 6. the ``inputSize`` input maximums;
7. ``inputSize + 1`` means (the inputs', then one for every output);
8. ``inputSize + 1`` ranges (the same);
9. per layer: its weight matrix, one line per output neuron holding one weight per input
   neuron, then its bias vector, one value per line.

Every hidden layer is followed by a ReLU; the output layer is affine. The file's network
computes on *normalized* inputs, ``x_norm = (clip(x, min, max) - mean) / range``, and
its outputs are normalized too (``y = y_norm * range[-1] + mean[-1]``).

:func:`load_nnet` returns the network on normalized inputs and outputs, as the ONNX
conversions of VNN-COMP and the VNN-LIB properties use it (the ACAS-Xu property boxes
are stated in normalized units): a plain float64 ``nn.Sequential`` of ``nn.Linear`` and
``nn.ReLU``, with no normalization layer. :func:`read_nnet` returns everything in the
file (:class:`NNetFile`, with the mins, maxes, means and ranges and the helpers that
normalize a raw box). The file is data: only numbers are parsed (never evaluated), and
every malformed file (a wrong count, a non-number, a non-finite value, a truncated file,
layer sizes that do not chain) is a :class:`~certcompress.errors.ModelLoadError` naming
the file and the line. See docs/onnx-import.md ("NNet files").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._io import atomic_write_text
from ..errors import ModelLoadError

__all__ = ["NNetFile", "read_nnet", "load_nnet", "write_nnet", "is_nnet_spec",
           "MAX_NNET_BYTES", "MAX_NNET_PARAMETERS"]

#: the largest .nnet file read (text; the ACAS-Xu files are about 170 KB)
MAX_NNET_BYTES = 2**30
#: the most weights and biases a file may declare (checked before any is read)
MAX_NNET_PARAMETERS = 2**27

_INT = re.compile(r"[+-]?[0-9]+")
#: the most digits an integer field may have (Python's int() refuses strings of more
#: than 4300 digits with a ValueError; no size in a file we can read needs 19)
_INT_DIGITS = 18
# a decimal number: no 'nan', 'inf', underscores, hex or other forms float() accepts.
# The integer part and the fraction are separated by a required '.': a pattern in which
# two digit runs can meet (``[0-9]+\.?[0-9]*``) backtracks quadratically on a long run
# of digits that does not match, minutes for a 40 KB field of a hostile file
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def is_nnet_spec(spec: object) -> bool:
    """Whether ``spec`` names a NNet file (``FILE.nnet``)."""
    return isinstance(spec, str) and Path(spec.strip()).suffix.lower() == ".nnet"


@dataclass(frozen=True, eq=False)
class NNetFile:
    """The contents of a ``.nnet`` file.

    ``weights[k]`` is layer ``k``'s matrix, shape ``(layer_sizes[k + 1], layer_sizes[k])``
    (``nn.Linear`` layout), ``biases[k]`` its bias, shape ``(layer_sizes[k + 1],)``, both
    float64. ``input_mins``/``input_maxes`` have one value per input; ``means``/``ranges``
    one per input and then one for all outputs. ``path`` is the file read (or written).
    """

    path: str
    layer_sizes: tuple[int, ...]
    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    input_mins: tuple[float, ...]
    input_maxes: tuple[float, ...]
    means: tuple[float, ...]
    ranges: tuple[float, ...]

    @property
    def input_size(self) -> int:
        return self.layer_sizes[0]

    @property
    def output_size(self) -> int:
        return self.layer_sizes[-1]

    def module(self) -> nn.Sequential:
        """The network on normalized inputs and outputs: a float64, eval-mode
        ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` (no ReLU after the last
        layer), with the file's weights copied exactly."""
        layers: list[nn.Module] = []
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers.append(lin)
            if k < len(self.weights) - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers).eval()

    def normalize_input(self, x: Tensor) -> Tensor:
        """Raw inputs ``(..., input_size)`` to the network's: clipped to the file's
        mins and maxes, then ``(x - mean) / range`` (float64)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        lo = torch.tensor(self.input_mins, dtype=torch.float64)
        hi = torch.tensor(self.input_maxes, dtype=torch.float64)
        mean = torch.tensor(self.means[:-1], dtype=torch.float64)
        rng = torch.tensor(self.ranges[:-1], dtype=torch.float64)
        return (torch.minimum(torch.maximum(x, lo), hi) - mean) / rng

    def denormalize_output(self, y: Tensor) -> Tensor:
        """The network's outputs to raw units: ``y * range[-1] + mean[-1]``."""
        return torch.as_tensor(y, dtype=torch.float64) * self.ranges[-1] + self.means[-1]

    def normalized_box(self, low: Sequence[float], high: Sequence[float]
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The box ``[low, high]`` of raw inputs as the network sees it (the image of
        the box under :meth:`normalize_input`, which is monotone per input; every range
        must be positive)."""
        if len(low) != self.input_size or len(high) != self.input_size:
            raise ValueError(f"the box needs {self.input_size} lower and upper values, got "
                             f"{len(low)} and {len(high)}")
        if any(r <= 0 for r in self.ranges[:-1]):
            raise ValueError(f"'{self.path}' has a non-positive input range "
                             f"{list(self.ranges[:-1])}: normalization is not monotone")
        lo = self.normalize_input(torch.tensor([float(v) for v in low]))
        hi = self.normalize_input(torch.tensor([float(v) for v in high]))
        if bool((lo > hi).any()):
            raise ValueError(f"empty box: low {list(low)} exceeds high {list(high)}")
        return tuple(lo.tolist()), tuple(hi.tolist())


class _Lines:
    """The file's lines with their numbers; blank lines are skipped."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.i = 0

    def fail(self, line: int | None, what: str) -> ModelLoadError:
        where = f", line {line}" if line is not None else ""
        return ModelLoadError(f"NNet file '{self.path}'{where}: {what}")

    def next(self, what: str) -> tuple[int, list[str]]:
        """The next non-blank line as ``(number, fields)``; one trailing comma allowed."""
        while self.i < len(self.lines) and not self.lines[self.i].strip():
            self.i += 1
        if self.i >= len(self.lines):
            raise self.fail(None, f"ends before {what} (truncated file?)")
        self.i += 1
        text = self.lines[self.i - 1].strip()
        if text.endswith(","):
            text = text[:-1]
        return self.i, [f.strip() for f in text.split(",")]

    def rest(self) -> int | None:
        """The number of the first non-blank line left, or None."""
        for j in range(self.i, len(self.lines)):
            if self.lines[j].strip():
                return j + 1
        return None


def _ints(src: _Lines, what: str, count: int | None) -> tuple[int, list[int]]:
    line, fields = src.next(what)
    if count is not None and len(fields) != count:
        raise src.fail(line, f"{what}: expected {count} integers, found {len(fields)}")
    for f in fields:
        if not _INT.fullmatch(f):
            raise src.fail(line, f"{what}: '{f[:40]}' is not an integer")
        if len(f.lstrip("+-").lstrip("0")) > _INT_DIGITS:
            raise src.fail(line, f"{what}: '{f[:40]}...' ({len(f)} characters) is too large "
                                 f"an integer (at most {_INT_DIGITS} digits)")
    return line, [int(f) for f in fields]


def _floats(src: _Lines, what: str, count: int) -> list[float]:
    line, fields = src.next(what)
    if len(fields) != count:
        raise src.fail(line, f"{what}: expected {count} numbers, found {len(fields)}")
    out = []
    for f in fields:
        if not _FLOAT.fullmatch(f):
            raise src.fail(line, f"{what}: '{f[:40]}' is not a number")
        v = float(f)
        if v != v or v in (float("inf"), float("-inf")):
            raise src.fail(line, f"{what}: '{f[:40]}' is not finite")
        out.append(v)
    return out


def read_nnet(path: str | os.PathLike[str]) -> NNetFile:
    """Read the ``.nnet`` file ``path`` (layout in the module docstring).

    Raises :class:`ModelLoadError` naming the file (and the line) for a missing or
    unreadable file, a count that disagrees with the header, a field that is not a
    decimal number (``nan``, ``inf`` and values that overflow float64 included), layer
    sizes that are not positive or do not chain (``numLayers + 1`` sizes, the first the
    input size, the last the output size, the largest ``maxLayerSize``), a file that ends
    early, or data after the last bias.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"NNet file '{p}' does not exist")
    if not p.is_file():
        raise ModelLoadError(f"NNet file '{p}' is not a file")
    size = p.stat().st_size
    if size > MAX_NNET_BYTES:
        raise ModelLoadError(f"NNet file '{p}' has {size} bytes (more than "
                             f"{MAX_NNET_BYTES}); refused")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"NNet file '{p}' is not UTF-8 text (byte {exc.start}); is it "
                             "a .nnet file?") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read NNet file '{p}': {exc.strerror or exc}") from None
    src = _Lines(p, text)
    while src.i < len(src.lines) and (src.lines[src.i].lstrip().startswith("//")
                                      or not src.lines[src.i].strip()):
        src.i += 1
    line, head = _ints(src, "the header numLayers,inputSize,outputSize,maxLayerSize", 4)
    n_layers, n_in, n_out, max_size = head
    if n_layers < 1 or n_in < 1 or n_out < 1 or max_size < 1:
        raise src.fail(line, f"numLayers, inputSize, outputSize and maxLayerSize must be "
                             f"positive, got {head}")
    line, sizes = _ints(src, f"the {n_layers + 1} layer sizes", n_layers + 1)
    if any(s < 1 for s in sizes):
        raise src.fail(line, f"layer sizes must be positive, got {sizes}")
    if sizes[0] != n_in or sizes[-1] != n_out or max(sizes) != max_size:
        raise src.fail(line, f"layer sizes {sizes} do not chain with the header "
                             f"(inputSize {n_in}, outputSize {n_out}, maxLayerSize "
                             f"{max_size}): the first must be the input size, the last the "
                             "output size, the largest maxLayerSize")
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if n_params > MAX_NNET_PARAMETERS:
        raise src.fail(line, f"the layer sizes declare {n_params} weights and biases (more "
                             f"than {MAX_NNET_PARAMETERS}); refused before reading them")
    _ints(src, "the flag line", 1)
    mins = _floats(src, f"the {n_in} input minimums", n_in)
    maxes = _floats(src, f"the {n_in} input maximums", n_in)
    means = _floats(src, f"the {n_in + 1} means (inputs, then outputs)", n_in + 1)
    ranges = _floats(src, f"the {n_in + 1} ranges (inputs, then outputs)", n_in + 1)
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    for k in range(n_layers):
        fan_in, fan_out = sizes[k], sizes[k + 1]
        rows = [_floats(src, f"layer {k + 1} weight row {r + 1} of {fan_out}", fan_in)
                for r in range(fan_out)]
        bias = [_floats(src, f"layer {k + 1} bias {r + 1} of {fan_out}", 1)[0]
                for r in range(fan_out)]
        weights.append(torch.tensor(rows, dtype=torch.float64))
        biases.append(torch.tensor(bias, dtype=torch.float64))
    extra = src.rest()
    if extra is not None:
        raise src.fail(extra, f"data after the last bias of layer {n_layers} (the header "
                              f"declares {n_layers} layers of sizes {sizes})")
    return NNetFile(str(p), tuple(sizes), tuple(weights), tuple(biases), tuple(mins),
                    tuple(maxes), tuple(means), tuple(ranges))


def load_nnet(path: str | os.PathLike[str]) -> nn.Sequential:
    """The network of the ``.nnet`` file ``path`` on *normalized* inputs and outputs
    (no normalization layer: the input box must be given in normalized units, as
    VNN-LIB properties of these networks are), as a float64 eval-mode ``nn.Sequential``
    of ``nn.Linear`` and ``nn.ReLU``. Use :func:`read_nnet` for the file's input mins,
    maxes, means and ranges (``NNetFile.normalized_box`` maps a raw box). Raises
    :class:`ModelLoadError` as :func:`read_nnet` does."""
    return read_nnet(path).module()


def _num(v: float) -> str:
    return repr(float(v))


def write_nnet(path: str | os.PathLike[str], model: nn.Sequential | NNetFile, *,
               input_mins: Sequence[float] | None = None,
               input_maxes: Sequence[float] | None = None,
               means: Sequence[float] | None = None, ranges: Sequence[float] | None = None,
               header: str = "written by certcompress") -> Path:
    """Write ``model`` to ``path`` in the NNet format, atomically, every value as the
    shortest decimal that reads back to the same float64 (so :func:`read_nnet` returns
    it exactly).

    ``model`` is an :class:`NNetFile` or an ``nn.Sequential`` of ``nn.Linear`` layers
    with one ``nn.ReLU`` between each two (none after the last). The normalization
    (defaults: mins ``-1e30``, maxes ``1e30``, means 0, ranges 1, i.e. none) is stored
    as given; ``header`` becomes ``//`` comment lines.
    """
    if isinstance(model, NNetFile):
        weights = [w.detach().double() for w in model.weights]
        biases = [b.detach().double() for b in model.biases]
        input_mins = model.input_mins if input_mins is None else input_mins
        input_maxes = model.input_maxes if input_maxes is None else input_maxes
        means = model.means if means is None else means
        ranges = model.ranges if ranges is None else ranges
    else:
        weights, biases = _sequential_layers(model)
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    for k, w in enumerate(weights):
        if w.shape[1] != sizes[k]:
            raise ValueError(f"layer {k + 1} has {w.shape[1]} inputs, the layer before "
                             f"has {sizes[k]} outputs")
    n_in = sizes[0]
    input_mins = [-1e30] * n_in if input_mins is None else list(input_mins)
    input_maxes = [1e30] * n_in if input_maxes is None else list(input_maxes)
    means = [0.0] * (n_in + 1) if means is None else list(means)
    ranges = [1.0] * (n_in + 1) if ranges is None else list(ranges)
    for name, vals, n in (("input_mins", input_mins, n_in), ("input_maxes", input_maxes, n_in),
                          ("means", means, n_in + 1), ("ranges", ranges, n_in + 1)):
        if len(vals) != n:
            raise ValueError(f"{name} needs {n} values, got {len(vals)}")
    values = torch.cat([t.reshape(-1) for t in weights + biases])
    norms = torch.tensor(input_mins + input_maxes + means + ranges, dtype=torch.float64)
    if not (bool(torch.isfinite(values).all()) and bool(torch.isfinite(norms).all())):
        raise ValueError("the network or its normalization holds non-finite values")
    out = [f"// {line}" for line in header.splitlines() or [""]]
    out.append(f"{len(weights)},{n_in},{sizes[-1]},{max(sizes)},")
    out.append(",".join(map(str, sizes)) + ",")
    out.append("0,")
    for vals in (input_mins, input_maxes, means, ranges):
        out.append(",".join(_num(v) for v in vals) + ",")
    for w, b in zip(weights, biases):
        out.extend(",".join(_num(v) for v in row) + "," for row in w.tolist())
        out.extend(_num(v) + "," for v in b.tolist())
    return atomic_write_text(path, "\n".join(out) + "\n")


def _sequential_layers(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"write_nnet needs an nn.Sequential of Linear and ReLU layers or an "
                         f"NNetFile, got {type(model).__name__}")
    mods = list(model)
    linear = mods[0::2]
    relus = mods[1::2]
    if not mods or len(mods) % 2 == 0 or \
            not all(isinstance(m, nn.Linear) for m in linear) or \
            not all(type(m) is nn.ReLU for m in relus):
        kinds = ", ".join(type(m).__name__ for m in mods)
        raise ValueError(f"write_nnet needs Linear, ReLU, Linear, ..., Linear; got {kinds}")
    layers = [m for m in linear if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().double() for m in layers]
    biases = [m.bias.detach().double() if m.bias is not None
              else torch.zeros(m.out_features, dtype=torch.float64) for m in layers]
    return weights, biases
