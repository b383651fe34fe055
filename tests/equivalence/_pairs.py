"""Small original/compressed pairs for the equivalence tests (MLPs and a 1-D CNN with
one to three inputs), and dense-grid references."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import _soundness as sh
import torch
from _nets import conv1d_mlp as cnn
from _nets import deterministic_copy, mlp
from torch import nn

import certcompress as cc
from certcompress.domain import InputDomain


def compress(net: nn.Module, kind: str, amount: float = 0.3) -> nn.Module:
    return deterministic_copy(net, kind, amount)


def grid(dom: InputDomain, n_in: int) -> torch.Tensor:
    """The shared harness's dense grid over the domain (tests/_soundness.py)."""
    lo, hi = sh.box(dom, dom.shape)
    return sh.dense_grid(lo, hi).reshape(-1, n_in)


def outputs(net: nn.Module, comp: nn.Module, x: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return net(x.double()), comp(x.double())


def layer_values(chain: Any, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(z, c)`` after every layer of the chain at the points ``x`` (float64)."""
    z = c = x
    out = []
    for layer in chain.layers:
        if layer.kind == "relu":
            z, c = z.clamp(min=0), c.clamp(min=0)
        else:
            z = z @ layer.w.T + layer.b
            c = c @ layer.wc.T + layer.bc
        out.append((z, c))
    return out


def build(p: dict) -> tuple[nn.Module, nn.Module, InputDomain]:
    """A hypothesis-drawn pair (``arch``, ``n_in``, ``kind``, ``seed``, ``half``, ``depth``)
    and a box of half-width ``half`` around a fixed centre."""
    n = p["n_in"]
    net = (mlp(n, 8, p["depth"], 3, p["seed"]) if p["arch"] == "mlp"
           else cnn(n, 3, 3, p["seed"]))
    comp = compress(net, p["kind"])
    c = torch.linspace(-0.3, 0.4, n, dtype=torch.float64)[None]
    dom = InputDomain.box(c - p["half"], c + p["half"], shape=(1, n))
    return net, comp, dom


def top1_violations(f: torch.Tensor, g: torch.Tensor, conf: float | None,
                    ties: bool = False) -> torch.Tensor:
    """Where the top-1 property fails: ``f``'s top class is strict (and, with ``conf``,
    its softmax at least ``conf``) and another class scores above it in ``g`` (with
    ``ties``, at least as high: a tie is not a violation, but it is not provable either,
    since "verified" needs every margin below 0)."""
    top = f.topk(2, dim=1).values
    strict = top[:, 0] > top[:, 1]
    i = f.argmax(1)
    gi = g.gather(1, i[:, None])[:, 0]
    other = g.scatter(1, i[:, None], -float("inf")).amax(1)
    bad = strict & ((other >= gi) if ties else (other > gi))
    if conf is not None:
        bad &= torch.softmax(f, 1).amax(1) >= conf
    return bad


def deviation(net: nn.Module, comp: nn.Module, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per point, ``|f(x) - f'(x)|`` in ``norm`` ("inf" or "l1"), in float64."""
    f, g = outputs(net, comp, x)
    d = (f - g).abs().flatten(1)
    return d.amax(1) if norm == "inf" else d.sum(1)


def _points(dom: InputDomain, points: int | torch.Tensor) -> torch.Tensor:
    """The dense grid of an ``n_in``-input box, or the given points."""
    return grid(dom, points) if isinstance(points, int) else points


def check_eps(net: nn.Module, comp: nn.Module, dom: InputDomain, points: int | torch.Tensor,
              eps: float, norm: str, **kw: Any) -> Any:
    """``verify_equivalence`` at ``eps`` checked one-sidedly against ``points`` (the dense
    grid for an int, the number of inputs): never "verified" where a point violates, a
    verified bound at least the worst point's deviation, and a counterexample in the box
    that violates in float64. Returns the result."""
    worst = float(deviation(net, comp, _points(dom, points), norm).max())
    res = cc.verify_equivalence(net, comp, dom, epsilon=eps, norm=norm, **kw)
    if worst > eps:
        assert res.status != "verified", (worst, eps, res.summary())
    if res.status == "verified":
        assert res.bound is not None and sh.within(worst, res.bound), (worst, res.bound)
    if res.status == "falsified":
        assert res.counterexample is not None
        x = torch.tensor(res.counterexample, dtype=torch.float64).reshape(dom.shape)
        assert bool(dom.contains(x).all())
        assert float(deviation(net, comp, x, norm)) > eps, res.summary()
    return res


def check_top1(net: nn.Module, comp: nn.Module, dom: InputDomain, points: int | torch.Tensor,
               conf: float | None = None, **kw: Any) -> Any:
    """``verify_equivalence(..., property="top1")`` checked against ``points`` (the dense
    grid for an int, the number of inputs): never "verified" where a point violates, and a
    counterexample lies in the box and violates in float64. Returns the result."""
    f, g = outputs(net, comp, _points(dom, points))
    bad = top1_violations(f, g, conf, ties=True)
    res = cc.verify_equivalence(net, comp, dom, property="top1", confidence=conf, **kw)
    if bool(bad.any()):
        assert res.status != "verified", res.summary()
    if res.status == "falsified":
        assert res.counterexample is not None
        x = torch.tensor(res.counterexample, dtype=torch.float64).reshape(dom.shape)
        assert bool(dom.contains(x).all())
        fx, gx = outputs(net, comp, x)
        assert bool(top1_violations(fx, gx, conf).all())
    return res


def exact_layers(net: nn.Sequential, x: torch.Tensor) -> list[list[Fraction]]:
    """Pre-activations of every Linear of ``net`` at ``x`` (the last is the output), in
    exact rational arithmetic (float64 values are rationals)."""
    v = [Fraction(float(t)) for t in x.reshape(-1)]
    out = []
    for m in net:
        if isinstance(m, nn.Linear):
            w, b = m.weight.tolist(), m.bias.tolist()
            v = [sum((Fraction(w[o][i]) * v[i] for i in range(len(v))), Fraction(b[o]))
                 for o in range(len(w))]
            out.append(v)
        else:
            v = [max(t, Fraction(0)) for t in v]
    return out


def cancelling_mlp(gen: torch.Generator, x0: torch.Tensor, width: int, depth: int,
                   n_out: int, scale: Callable[[int], float],
                   bias: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                   last_bias: bool = True) -> nn.Sequential:
    """A float64 ReLU MLP of ``depth`` hidden layers whose pre-activations cancel at the
    point ``x0``: layer ``i``'s weight is ``randn * scale(i)`` and its bias
    ``bias(pre, gen)``, ``pre`` the layer's weighted sum at ``x0`` (so ``-pre`` makes a
    neuron's exact value there 0, up to rounding). The output layer's weight is ``randn``,
    its bias ``randn`` (or 0 without ``last_bias``)."""
    layers: list[nn.Module] = []
    d, h = x0.shape[1], x0
    for i in range(depth):
        lin = nn.Linear(d, width, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn((width, d), generator=gen, dtype=torch.float64)
                             * scale(i))
            lin.bias.copy_(bias((h @ lin.weight.T)[0], gen))
            h = (h @ lin.weight.T + lin.bias).clamp(min=0)
        layers += [lin, nn.ReLU()]
        d = width
    last = nn.Linear(d, n_out, dtype=torch.float64)
    with torch.no_grad():
        last.weight.copy_(torch.randn((n_out, d), generator=gen, dtype=torch.float64))
        if last_bias:
            last.bias.copy_(torch.randn(n_out, generator=gen, dtype=torch.float64))
        else:
            last.bias.zero_()
    return nn.Sequential(*layers, last).eval()


def assert_bounds_hold(chain: Any, bounds: list[Any], zs: list[torch.Tensor],
                       cs: list[torch.Tensor], inside: torch.Tensor) -> None:
    """Every affine layer's ``z``, ``c`` and ``d = z - c`` bounds (``bounds[k]``, a
    problem's :class:`PairBounds`) hold at the inputs ``inside`` selects, whose layer
    values are ``zs[k]``, ``cs[k]`` (:func:`layer_values`); 1e-9 covers the values' own
    float64 evaluation."""
    for k, b in enumerate(bounds):
        if chain.layers[k].kind == "relu":
            continue
        zk, ck = zs[k][inside], cs[k][inside]
        assert bool((zk >= b.zl - 1e-9).all() & (zk <= b.zu + 1e-9).all())
        assert bool((ck >= b.cl - 1e-9).all() & (ck <= b.cu + 1e-9).all())
        assert bool((zk - ck >= b.dl - 1e-9).all() & (zk - ck <= b.du + 1e-9).all())
