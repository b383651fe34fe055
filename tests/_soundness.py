"""The shared soundness harness: every test that checks a certified bound against
deviations it can find draws its points and applies its tolerance here.

Points of a box ``[lo, hi]`` (per-sample tensors, no batch dimension): uniform samples,
random vertices, every corner where there are few, the centre, a dense grid for one to
three inputs, and PGD (projected sign-gradient ascent on the l1 deviation, in float64 or
with both models run in float32; optionally on each output coordinate alone).

One tolerance policy, one-sided everywhere:

* soundness: ``found <= bound``. A deviation measured in float64 carries its own rounding,
  relative to the bound and to the size of the outputs it was formed from, so it may
  exceed the bound by ``MEASURE_REL * (|bound| + ||f(x)||_1 + ||g(x)||_1)`` (the allowance
  certify's own self-check uses). A deviation of float32 outputs against a float32
  certificate gets no allowance at all: the certificate covers float32 execution.
* tightness, only where a tier claims it: ``bound <= found * (1 + slack)``.

Ratios bound / found are recorded (:func:`record`); tests/conftest.py prints them in the
terminal summary and writes them to ``soundness_tightness.json`` in pytest's base
temporary directory. ``record(..., at_most=)`` guards a ratio.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from certcompress.domain import InputDomain
from certcompress.measure import adversarial_deviation, float32_function, float64_function

Fn = Callable[[Tensor], Tensor]

#: the float64 rounding of a measured deviation, relative to the bound and the outputs
MEASURE_REL = 1e-9
#: every corner is probed when the box has at most this many
MAX_CORNERS = 256


# ------------------------------------------------------------------------ the box
def box(domain: InputDomain | float, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per-sample float64 bounds ``(lo, hi)`` of a domain, or of the ball of the given
    radius in the l-infinity norm."""
    per = tuple(int(s) for s in shape[1:])
    if isinstance(domain, InputDomain):
        return (domain.lower_tensor().double().reshape(per),
                domain.upper_tensor().double().reshape(per))
    r = float(domain)
    return (torch.full(per, -r, dtype=torch.float64), torch.full(per, r, dtype=torch.float64))


def _clip(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Inside the box despite rounding (``lo + (hi - lo) * u`` may round past ``hi``)."""
    return torch.minimum(torch.maximum(x, lo), hi)


def uniform(lo: Tensor, hi: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return _clip(lo + (hi - lo) * torch.rand((n,) + tuple(lo.shape), generator=gen,
                                             dtype=torch.float64), lo, hi)


def vertices(lo: Tensor, hi: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` random vertices of the box."""
    return torch.where(torch.rand((n,) + tuple(lo.shape), generator=gen) < 0.5, lo, hi)


def corners(lo: Tensor, hi: Tensor, limit: int = MAX_CORNERS) -> Tensor | None:
    """Every vertex of the box, or ``None`` where there are more than ``limit``."""
    d = lo.numel()
    if 2 ** d > limit:
        return None
    pick = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=torch.float64)
    return torch.where(pick.bool(), hi.reshape(1, -1), lo.reshape(1, -1)
                       ).reshape((-1,) + tuple(lo.shape))


def centre(lo: Tensor, hi: Tensor) -> Tensor:
    return _clip(lo / 2 + hi / 2, lo, hi).unsqueeze(0)


def dense_grid(lo: Tensor, hi: Tensor, per_axis: int | None = None) -> Tensor:
    """The regular grid over a box of one to three inputs (box vertices included):
    2001, 121 or 31 points per axis unless ``per_axis`` is given."""
    d = lo.numel()
    if per_axis is None:
        per_axis = {1: 2001, 2: 121, 3: 31}[d]
    axes = [torch.linspace(float(a), float(b), per_axis, dtype=torch.float64)
            for a, b in zip(lo.reshape(-1).tolist(), hi.reshape(-1).tolist())]
    return _clip(torch.cartesian_prod(*axes).reshape((-1,) + tuple(lo.shape)), lo, hi)


def points(lo: Tensor, hi: Tensor, gen: torch.Generator, n_uniform: int = 48,
           n_vertices: int = 24) -> Tensor:
    """Centre, the all-lower and all-upper corners, uniform samples, random vertices,
    and every corner where there are few."""
    xs = [centre(lo, hi), lo.unsqueeze(0), hi.unsqueeze(0), uniform(lo, hi, n_uniform, gen),
          vertices(lo, hi, n_vertices, gen)]
    c = corners(lo, hi)
    if c is not None:
        xs.append(c)
    return torch.cat(xs)


# ----------------------------------------------------------------------- functions
def f64(model: nn.Module) -> Fn:
    """The model in float64 (never mutated), flattened outputs."""
    return float64_function(model)


def f32(model: nn.Module) -> Fn:
    """The model executed in float32 as deployed; outputs widened to float64 exactly."""
    fn = float32_function(model)
    return lambda x: fn(x).double()


def pgd(f: Fn, g: Fn, lo: Tensor, hi: Tensor, *, steps: int = 40, restarts: int = 6,
        starts: Tensor | None = None, seed: int = 0, output: int | None = None) -> Tensor:
    """Maximizers of the l1 deviation (or of one output's deviation) found by PGD from
    ``restarts`` random starts and ``starts``; returns the best point, shape (1, ...)."""
    if output is not None:
        o, ff, gg = output, f, g
        f = lambda x: ff(x)[:, o:o + 1]  # noqa: E731
        g = lambda x: gg(x)[:, o:o + 1]  # noqa: E731
    adv = adversarial_deviation(f, g, (1,) + tuple(lo.shape), lo, hi, steps=steps,
                                restarts=restarts, starts=starts, seed=seed)
    x = adv.argmax.reshape((1,) + tuple(lo.shape))
    assert bool(((x >= lo) & (x <= hi)).all()), "a PGD point left the box"
    return x


# -------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Found:
    """Deviations measured at points ``x``: the largest l1 deviation, the largest
    per-output deviations, the outputs' size at the worst point, and whether they were
    measured in float32 (no allowance) or float64."""

    x: Tensor
    l1: Tensor  # per point
    per_output: Tensor  # max over points
    size: Tensor  # ||f(x)||_1 + ||g(x)||_1 per point
    float32: bool

    @property
    def worst(self) -> float:
        return float(self.l1.max())

    def merged(self, other: Found) -> Found:
        assert self.float32 == other.float32
        return Found(torch.cat([self.x, other.x]), torch.cat([self.l1, other.l1]),
                     torch.maximum(self.per_output, other.per_output),
                     torch.cat([self.size, other.size]), self.float32)


def measure(f: Fn, g: Fn, x: Tensor, *, float32: bool = False, chunk: int = 512) -> Found:
    l1, per, size = [], [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            fx, gx = f(xb).double(), g(xb).double()
            d = (fx - gx).abs()
            l1.append(d.sum(1))
            per.append(d.amax(0))
            size.append(fx.abs().sum(1) + gx.abs().sum(1))
    return Found(x, torch.cat(l1), torch.stack(per).amax(0), torch.cat(size), float32)


def attack(f: Fn, g: Fn, lo: Tensor, hi: Tensor, seed: int, *, float32: bool = False,
           steps: int = 40, restarts: int = 6, per_output: bool = False,
           extra: Tensor | None = None, n_uniform: int = 48, n_vertices: int = 24) -> Found:
    """Deviations at the centre, uniform points, vertices (every corner where few), the
    ``extra`` points, and PGD maximizers of the l1 deviation (started from some of the
    above) and, with ``per_output``, of each output's deviation."""
    gen = torch.Generator().manual_seed(seed)
    xs = points(lo, hi, gen, n_uniform, n_vertices)
    if extra is not None:
        xs = torch.cat([extra.reshape((-1,) + tuple(lo.shape)).double(), xs])
    found = measure(f, g, xs, float32=float32)
    if steps > 0:
        top = xs[found.l1.argsort(descending=True)[:3]]
        adv = [pgd(f, g, lo, hi, steps=steps, restarts=restarts, starts=top, seed=seed)]
        if per_output:
            for o in range(found.per_output.numel()):
                adv.append(pgd(f, g, lo, hi, steps=max(steps // 2, 1), restarts=2,
                               seed=seed + 1 + o, output=o))
        found = found.merged(measure(f, g, torch.cat(adv), float32=float32))
    return found


def attack_models(model: nn.Module, compressed: nn.Module, domain: InputDomain | float,
                  shape: Sequence[int], seed: int, *, float32: bool = False,
                  **kwargs: object) -> Found:
    """:func:`attack` on two models over a domain (or an l-infinity radius), with both
    models in float64 or both in float32."""
    lo, hi = box(domain, shape)
    wrap = f32 if float32 else f64
    return attack(wrap(model), wrap(compressed), lo, hi, seed, float32=float32,
                  **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the policy
def allowance(bound: Tensor | float, size: Tensor | float, float32: bool) -> Tensor:
    """How far a measured deviation may exceed ``bound`` for its own rounding alone."""
    b = torch.as_tensor(bound, dtype=torch.float64)
    if float32:
        return torch.zeros_like(b)
    return MEASURE_REL * (b.abs() + torch.as_tensor(size, dtype=torch.float64))


def within(measured: Tensor | float, bound: Tensor | float, size: Tensor | float = 0.0,
           float32: bool = False) -> bool:
    """``measured <= bound`` up to the measurement's own float64 rounding (one-sided)."""
    m = torch.as_tensor(measured, dtype=torch.float64)
    b = torch.as_tensor(bound, dtype=torch.float64)
    return bool((m <= b + allowance(b, size, float32)).all())


def assert_sound(found: Found, bound: float, per_output: Sequence[float] | None = None,
                 what: str = "") -> None:
    """Every measured l1 deviation is within ``bound``, and every output's deviation
    within its per-output bound."""
    bad = found.l1 > bound + allowance(bound, found.size, found.float32)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: measured deviation {float(found.l1[i]):.17g} exceeds the bound "
            f"{bound:.17g} ({'float32' if found.float32 else 'float64'} measurement)")
    if per_output is not None:
        po = torch.tensor(list(per_output), dtype=torch.float64)
        assert po.shape == found.per_output.shape, (po.shape, found.per_output.shape)
        size = float(found.size.max())
        ok = found.per_output <= po + allowance(po, size, found.float32)
        assert bool(ok.all()), (f"{what}: a per-output deviation exceeds its bound",
                                found.per_output.tolist(), po.tolist())


def assert_tight(bound: float, found: float, slack: float, what: str = "") -> None:
    """The bound is at most ``found * (1 + slack)``: for tiers that claim tightness."""
    assert bound <= found * (1 + slack), (
        f"{what}: bound {bound:.17g} above the found {found:.17g} by more than "
        f"the claimed slack {slack:g}")


# --------------------------------------------------------------------- records
RECORDS: list[dict[str, object]] = []


def record(name: str, bound: float, found: float, at_most: float | None = None,
           **extra: object) -> float:
    """Record the tightness ratio ``bound / found`` under ``name`` (``inf`` where nothing
    was found) and, with ``at_most``, guard it."""
    ratio = bound / found if found > 0 else math.inf
    RECORDS.append({"name": name, "bound": bound, "found": found, "ratio": ratio, **extra})
    if at_most is not None:
        assert ratio <= at_most, f"{name}: tightness ratio {ratio:.6g} above {at_most:g}"
    return ratio


def summary_lines() -> list[str]:
    by: dict[str, list[float]] = {}
    for r in RECORDS:
        by.setdefault(str(r["name"]), []).append(float(r["ratio"]))  # type: ignore[arg-type]
    lines = []
    for name in sorted(by):
        v = sorted(x for x in by[name] if math.isfinite(x))
        if not v:
            lines.append(f"{name}: {len(by[name])} case(s), nothing found")
            continue
        lines.append(f"{name}: {len(by[name])} case(s), bound/found min {v[0]:.4g} "
                     f"median {statistics.median(v):.4g} max {v[-1]:.4g}")
    return lines


def write_records(path: Path) -> None:
    if not RECORDS:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(RECORDS, indent=1, default=str))
    tmp.replace(path)


def margin_pgd(fn: Fn, lo: Tensor, hi: Tensor, c: int, gen: torch.Generator,
               steps: int = 25, restarts: int = 4) -> Tensor:
    """Every iterate of PGD minimizing the decision margin ``f_c - max_{j != c} f_j``
    over the box (the centre among the starts): points where the class may change."""
    x = uniform(lo, hi, restarts, gen)
    x[0] = centre(lo, hi)[0]
    alpha = 2.5 * float((hi - lo).max()) / steps
    found = [x.clone()]
    for _ in range(steps):
        x.requires_grad_(True)
        out = fn(x)
        other = out.clone()
        other[:, c] = -torch.inf
        margin = out[:, c] - other.max(1).values
        (g,) = torch.autograd.grad(margin.sum(), x)
        with torch.no_grad():
            x = torch.maximum(torch.minimum(x.detach() - alpha * g.sign(), hi), lo)
        found.append(x.clone())
    return torch.cat(found)
