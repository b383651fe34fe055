"""Small original/compressed pairs for the equivalence tests (MLPs and a 1-D CNN with
one to three inputs), and dense-grid references."""

from __future__ import annotations

import copy

import _soundness as sh
import torch
from torch import nn

from certcompress.domain import InputDomain


def mlp(n_in: int, width: int, depth: int, n_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers).double().eval()


def cnn(n_in: int, channels: int, n_out: int, seed: int) -> nn.Module:
    """Conv1d over the inputs as a length-``n_in`` signal (padding keeps the length)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Unflatten(1, (1, n_in)), nn.Conv1d(1, channels, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(channels * n_in, 6), nn.ReLU(),
                        nn.Linear(6, n_out))
    return net.double().eval()


def compress(net: nn.Module, kind: str, amount: float = 0.3) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            if kind == "prune":
                k = max(1, int(amount * p.numel()))
                thr = p.abs().reshape(-1).kthvalue(k).values
                p.masked_fill_(p.abs() <= thr, 0.0)
            elif kind == "round":
                p.copy_(torch.round(p * 8) / 8)
            elif kind == "float16":
                p.copy_(p.half().double())
            else:
                raise ValueError(kind)
    return out


def grid(dom: InputDomain, n_in: int) -> torch.Tensor:
    """The shared harness's dense grid over the domain (tests/_soundness.py)."""
    lo, hi = sh.box(dom, dom.shape)
    return sh.dense_grid(lo, hi).reshape(-1, n_in)


def outputs(net: nn.Module, comp: nn.Module, x: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return net(x.double()), comp(x.double())


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
