"""Small models and data that run anywhere offline: scikit-learn's digits (shipped
inside scikit-learn) and a small residual CNN trained on it in seconds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DigitsData", "load_digits", "DigitsCNN", "train_classifier", "accuracy"]


@dataclass(frozen=True)
class DigitsData:
    """8x8 digit images scaled to [0, 1], shape ``(n, 1, 8, 8)``, labels 0-9."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> DigitsData:
    """scikit-learn's digits (1797 images), split with a fixed seed."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return DigitsData(x[tr], y[tr], x[te], y[te])


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual add, max-pooling, linear head
    (about 11k parameters): a ReLU-DAG that certcompress certifies exactly."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * 16, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(h + self.bn2(self.conv2(h)))
        h = self.pool(h)
        return self.fc(torch.flatten(h, 1))


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 30,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     progress: bool = True) -> nn.Module:
    """Adam with cross-entropy; returns the model in eval mode."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(range(epochs), desc="training", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def magnitude_prune_copy(model: nn.Module, sparsity: float,
                         kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
                         ) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude ``sparsity`` fraction of the weights
    of its conv/linear layers zeroed (global threshold). Used by the demo; the pruning
    API builds full plans."""
    import copy

    pruned = copy.deepcopy(model)
    weights: list[torch.Tensor] = [m.weight for m in pruned.modules()  # type: ignore[misc]
                                   if isinstance(m, kinds)]
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return pruned
    threshold_idx = torch.argsort(flat)[:k]
    mask = torch.ones_like(flat)
    mask[threshold_idx] = 0
    offset = 0
    with torch.no_grad():
        for w in weights:
            n = w.numel()
            w.mul_(mask[offset:offset + n].reshape(w.shape))
            offset += n
    return pruned.eval()


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
