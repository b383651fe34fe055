"""Full-batch gradient descent under the mean-field learning-rate scaling."""

from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigurationError
from ._data import as_features, as_targets
from ._model import ScaledResNet

__all__ = ["Checkpoint", "TrainRun", "train", "data_fingerprint", "progress_enabled"]


def progress_enabled(progress: bool) -> bool:
    """Show a bar only when asked and stderr is a terminal."""
    import sys

    return bool(progress) and sys.stderr.isatty()


def data_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """A short hash of float64 training data, to check estimate() gets the same data."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The network after ``step`` steps; ``time`` = lr * step is gradient-flow time.

    ``loss`` is the training loss (1/2n) sum_i (f(x_i) - y_i)^2; ``state`` holds
    detached float copies of the five particle tensors.
    """

    step: int
    time: float
    loss: float
    state: Mapping[str, Tensor]


@dataclass(frozen=True, eq=False)
class TrainRun:
    """The result of :func:`train`.

    ``model`` is a trained copy (the network passed in is not modified); it holds the
    parameters of ``checkpoints[-1]``. ``losses[k]`` is the training loss after k steps.
    When ``diverged`` the run stopped early (non-finite loss or loss above
    ``divergence_factor`` times the initial loss) and the model is the last checkpoint.
    ``seconds_per_step`` is the mean wall time of one gradient step (forward, backward,
    update), without checkpointing. ``lr`` is the step actually used (flow time per
    step): the requested one divided by beta^2 when ``lr_scale == "beta"``.
    ``trainable``: ``"all"``, or ``"head"`` when only the head particles were trained
    (the frozen-features ablation).
    """

    model: ScaledResNet
    checkpoints: tuple[Checkpoint, ...]
    losses: tuple[float, ...]
    lr: float
    steps_requested: int
    diverged: bool
    n_train: int
    fingerprint: str
    seconds_per_step: float
    wall_seconds: float
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    lr_scale: str = "none"
    trainable: str = "all"

    @property
    def steps_done(self) -> int:
        return self.checkpoints[-1].step


def _loss(net: ScaledResNet, X: Tensor, y: Tensor) -> Tensor:
    r = net(X) - y
    return 0.5 * (r * r).mean()


def train(
    net: ScaledResNet,
    X_train: object,
    y_train: object,
    *,
    steps: int = 1000,
    record_every: int = 100,
    lr: float = 0.5,
    divergence_factor: float = 1e4,
    progress: bool = False,
    lr_scale: str = "beta",
    trainable: str = "all",
) -> TrainRun:
    """Train a copy of ``net`` by full-batch gradient descent on the squared loss.

    Loss (1/2n) sum_i (f(x_i) - y_i)^2. Each step moves parameter p by
    ``-lr * net.lr_multipliers()[p] * grad_p``: residual particles by L*M for the
    mean-field scaling (function-space matched for the others), head particles by K.
    Gradient-flow time after k steps is ``lr * k``. Deterministic: no randomness enters
    here (the initial particles come from ``ScaledResNet(seed=...)``).

    Args:
        X_train: (n, input_dim) features; y_train: (n,) targets ({0,1} become +-1).
        steps: gradient steps (>= 1). record_every: checkpoint period in steps (the
            first and last step are always recorded).
        lr: step size (> 0). With ``lr_scale="beta"`` (default) the step used is
            lr / beta^2, the mean-field time scale: the outputs then move at a speed
            independent of beta (df/dt carries beta^2), so large-beta runs do not diverge
            at the default lr; ``lr_scale="none"`` uses lr as given. Flow time is the
            step used times the step count.
    A run that diverges stops and issues a RuntimeWarning naming the step and the lr.
    """
    if not isinstance(net, ScaledResNet):
        raise ConfigurationError(
            f"train() needs a ScaledResNet, got {type(net).__name__}; "
            "for a network of your own use mf.audit()"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"train: steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ConfigurationError(f"train: record_every must be an integer >= 1, got {record_every!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigurationError(f"train: lr must be a finite number > 0, got {lr!r}")
    if lr_scale not in ("beta", "none"):
        raise ConfigurationError(f"train: lr_scale must be 'beta' or 'none', got {lr_scale!r}")
    if trainable not in ("all", "head"):
        raise ConfigurationError(f"train: trainable must be 'all' or 'head', got {trainable!r}")
    Xa = as_features(X_train, "X_train")
    ya = as_targets(y_train, Xa.shape[0], "y_train")
    model = copy.deepcopy(net)
    model.train()
    dtype = model.res_u.dtype
    X = torch.as_tensor(Xa, dtype=dtype)
    y = torch.as_tensor(ya, dtype=dtype)
    model.embed_input(X)  # shape check with a clear message
    mults = model.lr_multipliers()
    lr_used = float(lr) / model.config.beta**2 if lr_scale == "beta" else float(lr)
    params = dict(model.named_parameters())
    if trainable == "head":
        mults = {k: (0.0 if k in model.residual_parameter_names() else v) for k, v in mults.items()}

    checkpoints: list[Checkpoint] = []
    losses: list[float] = []
    diverged = False
    step_seconds = 0.0
    n_timed = 0
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="train", disable=not progress_enabled(progress), leave=False)
    try:
        for k in range(steps + 1):
            t0 = time.perf_counter()
            loss = _loss(model, X, y)
            value = float(loss.detach())
            forward_seconds = time.perf_counter() - t0
            if k == 0 and not math.isfinite(value):
                raise ConfigurationError("train: the initial loss is not finite; check the data scale")
            if not math.isfinite(value) or value > divergence_factor * max(losses[:1] or [value]):
                diverged = True
                break
            losses.append(value)
            if k % record_every == 0 or k == steps:
                checkpoints.append(Checkpoint(k, lr_used * k, value, _snapshot(model)))
            if k == steps:
                break
            t1 = time.perf_counter()
            for p in params.values():
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for name, p in params.items():
                    if p.grad is not None:
                        p.sub_(p.grad, alpha=lr_used * mults[name])
            step_seconds += forward_seconds + (time.perf_counter() - t1)
            n_timed += 1
            bar.update(1)
    finally:
        bar.close()
    if diverged:
        warnings.warn(f"train: the run diverged at step {len(losses)} (loss non-finite or above "
                      f"{divergence_factor:g} x the initial loss) with step {lr_used:g}; "
                      "lower lr", RuntimeWarning, stacklevel=2)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(checkpoints[-1].state[name])
    model.eval()
    return TrainRun(
        model=model,
        checkpoints=tuple(checkpoints),
        losses=tuple(losses),
        lr=lr_used,
        steps_requested=steps,
        diverged=diverged,
        n_train=int(Xa.shape[0]),
        fingerprint=data_fingerprint(Xa, ya),
        seconds_per_step=step_seconds / max(n_timed, 1),
        wall_seconds=time.perf_counter() - start,
        lr_multipliers=dict(mults),
        lr_scale=lr_scale,
        trainable=trainable,
    )


def _snapshot(model: ScaledResNet) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}
