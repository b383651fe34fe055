"""Small networks for the pruning tests (imported by the test files of this folder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ResBNNet(nn.Module):
    """conv-BN-ReLU, conv-BN + residual add, ReLU, max-pool, linear: BatchNorm folding, a
    skip connection and pooling in a net small enough for per-weight oracles."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(h + self.bn2(self.conv2(h)))
        return self.fc(torch.flatten(self.pool(h), 1))


def res_bn_net(seed: int = 0) -> ResBNNet:
    """A ResBNNet with non-trivial BatchNorm statistics, in eval mode (input 1x1x4x4)."""
    torch.manual_seed(seed)
    net = ResBNNet()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def mlp(widths: Sequence[int], seed: int = 0, bias: bool = True) -> nn.Sequential:
    """Linear/ReLU chain with the given widths (input first), eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


class ConvChain(nn.Module):
    """conv-ReLU-conv-ReLU-flatten-linear without BatchNorm (neuron rescaling is a plain
    weight operation on it)."""

    def __init__(self, c1: int = 4, c2: int = 3, size: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * size * size, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(torch.flatten(h, 1))


def conv_chain(seed: int = 0) -> ConvChain:
    torch.manual_seed(seed)
    return ConvChain().eval()


def rescale_neurons(model: nn.Module, pairs: Sequence[tuple[str, str]],
                    factors: Sequence[float], seed: int = 0) -> nn.Module:
    """A copy of ``model`` where each output neuron (channel) of layer ``a`` in ``pairs``
    is multiplied by a factor drawn from ``factors`` (incoming weights and bias) and its
    outgoing weights in layer ``b`` divided by it: the same function (ReLU is positively
    homogeneous), different weights."""
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a, b in pairs:
            la, lb = out.get_submodule(a), out.get_submodule(b)
            n = la.weight.shape[0]
            f = torch.tensor(factors, dtype=la.weight.dtype)[
                torch.randint(len(factors), (n,), generator=gen)]
            la.weight.mul_(f.reshape((-1,) + (1,) * (la.weight.dim() - 1)))
            if la.bias is not None:
                la.bias.mul_(f)
            if isinstance(lb, nn.Linear) and lb.weight.shape[1] != n:  # flatten after conv
                rep = lb.weight.shape[1] // n
                lb.weight.div_(f.repeat_interleave(rep).reshape(1, -1))
            else:
                lb.weight.div_(f.reshape((1, -1) + (1,) * (lb.weight.dim() - 2)))
    return out
