"""Parsing VNN-LIB files (the verification community's property format, an SMT-LIB
subset used with ONNX models) into input boxes; the base of
:meth:`certcompress.InputDomain.from_vnnlib` and :func:`certcompress.read_vnnlib`.

Supported: ``(declare-const X_i Real)`` and ``(declare-const Y_j Real)``; assertions on
inputs ``(<= X_i c)``, ``(>= X_i c)`` (either side may be the constant), conjunctions of
them, and one ``(or (and ...) ...)`` of such conjunctions (several boxes). Every input
needs a lower and an upper bound in every box. Assertions that mention outputs are kept
as text (:attr:`VnnlibBoxes.output_constraints`); equivalence verification uses the boxes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ._io import read_text_file
from .errors import ConfigurationError

__all__ = ["VnnlibBoxes", "parse_boxes", "read_boxes"]

SExpr = str | list["SExpr"]
# ASCII indices of at most 18 digits (int() refuses more than 4300 with a ValueError)
_VAR = re.compile(r"^([XY])_([0-9]{1,18})$")


@dataclass(frozen=True)
class VnnlibBoxes:
    """``boxes``: ``(lower, upper)`` per box (each ``n_inputs`` floats);
    ``output_constraints``: the assertions on outputs, as written."""

    n_inputs: int
    n_outputs: int
    boxes: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]
    output_constraints: tuple[str, ...]
    source: str = ""


def _tokens(text: str, where: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        line = line.split(";", 1)[0]
        out.extend(re.findall(r"\(|\)|[^\s()]+", line))
    if not out:
        raise ConfigurationError(f"{where}: empty VNN-LIB file (no declarations)")
    return out


def _parse(tokens: list[str], where: str) -> list[SExpr]:
    stack: list[list[SExpr]] = [[]]
    for t in tokens:
        if t == "(":
            stack.append([])
        elif t == ")":
            if len(stack) == 1:
                raise ConfigurationError(f"{where}: unbalanced ')' in the VNN-LIB file")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(t)
    if len(stack) != 1:
        raise ConfigurationError(f"{where}: {len(stack) - 1} unclosed '(' in the VNN-LIB file")
    return stack[0]


def _num(t: SExpr, where: str) -> float | None:
    if not isinstance(t, str) or _VAR.match(t):
        return None
    try:
        v = float(t)
    except ValueError:
        return None
    if not math.isfinite(v):
        raise ConfigurationError(f"{where}: non-finite constant {t!r}")
    return v


def _text(e: SExpr) -> str:
    return e if isinstance(e, str) else "(" + " ".join(_text(x) for x in e) + ")"


def _mentions(e: SExpr, letter: str) -> bool:
    if isinstance(e, str):
        m = _VAR.match(e)
        return bool(m and m.group(1) == letter)
    return any(_mentions(x, letter) for x in e)


def _bounds(e: SExpr, n: int, where: str) -> list[tuple[int, str, float]]:
    """Input bounds of a conjunction: ``(index, 'lo'|'hi', value)``."""
    if not isinstance(e, list) or not e:
        raise ConfigurationError(f"{where}: expected a constraint, got {_text(e)!r}")
    head = e[0]
    if head == "and":
        out: list[tuple[int, str, float]] = []
        for x in e[1:]:
            out.extend(_bounds(x, n, where))
        return out
    if head in ("<=", ">=") and len(e) == 3:
        a, b = e[1], e[2]
        va, vb = _num(a, where), _num(b, where)
        var, val, op = (b, va, head) if va is not None else (a, vb, head)
        if va is not None:  # constant on the left: flip
            op = ">=" if head == "<=" else "<="
        m = _VAR.match(var) if isinstance(var, str) else None
        if val is None or m is None or m.group(1) != "X":
            raise ConfigurationError(f"{where}: unsupported input constraint {_text(e)}; only "
                                     "bounds '(<= X_i c)' / '(>= X_i c)' are supported")
        i = int(m.group(2))
        if i >= n:
            raise ConfigurationError(f"{where}: {var} is not declared (only X_0..X_{n - 1})")
        return [(i, "hi" if op == "<=" else "lo", val)]
    raise ConfigurationError(f"{where}: unsupported input constraint {_text(e)}; only bounds "
                             "and their conjunctions, or one disjunction of them")


def parse_boxes(text: str, source: str = "") -> VnnlibBoxes:
    """Parse VNN-LIB text (see the module docstring for the subset)."""
    where = source or "VNN-LIB"
    exprs = _parse(_tokens(text, where), where)
    xs: set[int] = set()
    ys: set[int] = set()
    asserts: list[SExpr] = []
    for e in exprs:
        if not isinstance(e, list) or not e:
            raise ConfigurationError(f"{where}: unexpected top-level {_text(e)!r}")
        if e[0] == "declare-const":
            if len(e) != 3 or not isinstance(e[1], str) or e[2] != "Real":
                raise ConfigurationError(f"{where}: malformed declaration {_text(e)}")
            m = _VAR.match(e[1])
            if m is None:
                raise ConfigurationError(f"{where}: variable {e[1]!r} is neither X_i nor Y_j")
            (xs if m.group(1) == "X" else ys).add(int(m.group(2)))
        elif e[0] == "assert":
            if len(e) != 2:
                raise ConfigurationError(f"{where}: malformed assertion {_text(e)}")
            asserts.append(e[1])
        else:
            raise ConfigurationError(f"{where}: unsupported command {e[0]!r}")
    n = len(xs)
    if n == 0:
        raise ConfigurationError(f"{where}: no input variables X_i declared")
    if xs != set(range(n)):
        raise ConfigurationError(f"{where}: inputs must be X_0..X_{n - 1}, got "
                                 f"{sorted(xs)}")
    common: list[tuple[int, str, float]] = []
    alternatives: list[list[tuple[int, str, float]]] | None = None
    outputs: list[str] = []
    for a in asserts:
        if _mentions(a, "Y"):
            if _mentions(a, "X"):
                raise ConfigurationError(f"{where}: an assertion mixes inputs and outputs: "
                                         f"{_text(a)}")
            outputs.append(_text(a))
            continue
        if isinstance(a, list) and a and a[0] == "or":
            if alternatives is not None:
                raise ConfigurationError(f"{where}: more than one disjunction over inputs")
            alternatives = [_bounds(x, n, where) for x in a[1:]]
            continue
        common.extend(_bounds(a, n, where))
    boxes = []
    for alt in (alternatives or [[]]):
        lo = [-math.inf] * n
        hi = [math.inf] * n
        for i, kind, v in common + alt:
            if kind == "lo":
                lo[i] = max(lo[i], v)
            else:
                hi[i] = min(hi[i], v)
        missing = [f"X_{i}" for i in range(n) if not (math.isfinite(lo[i])
                                                         and math.isfinite(hi[i]))]
        if missing:
            raise ConfigurationError(f"{where}: input(s) {', '.join(missing[:5])} lack a lower "
                                     "or an upper bound; every input needs both")
        empty = [f"X_{i}" for i in range(n) if lo[i] > hi[i]]
        if empty:
            raise ConfigurationError(f"{where}: empty box: lower > upper for "
                                     f"{', '.join(empty[:5])}")
        boxes.append((tuple(lo), tuple(hi)))
    return VnnlibBoxes(n, len(ys), tuple(boxes), tuple(outputs), source)


def read_boxes(path: str | os.PathLike[str]) -> VnnlibBoxes:
    """Read a VNN-LIB file (see :func:`parse_boxes`)."""
    return parse_boxes(read_text_file(path, "VNN-LIB file", ConfigurationError), str(path))
