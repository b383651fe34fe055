"""Small original/compressed pairs for the equivalence tests (MLPs and a 1-D CNN with
one to three inputs), and dense-grid references."""

from __future__ import annotations

from typing import Any

import _soundness as sh
import torch
from _nets import conv1d_mlp as cnn
from _nets import deterministic_copy, mlp
from torch import nn

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
