"""train_many(): several ScaledResNets trained at once, particles batched across runs.

Every run is an independent full-batch gradient descent exactly as in :func:`train`
(same loss, step multipliers, 1/beta^2 step scaling, divergence rule and checkpoints);
networks of the same shape (L, M, K, d, input dimension, activation, dtype) are stacked
along a leading batch axis (runs with equal n share a batch: no padding work) and trained by one batched forward/backward per step, which
for the small networks of a designed sweep removes most of the per-operation overhead.
Different training sets (sizes n_b) are padded to the largest and weighted by 1/n_b, so
the gradient reaching run b is that of its own loss (1/2n_b) sum_i (f_b(x_i) - y_i)^2:
the runs do not interact. Results agree with :func:`train` to rounding (the batched
matrix products sum in another order); the tests check 1e-9.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigurationError
from ._data import as_features, as_targets
from ._model import ScaledResNet
from ._train import Checkpoint, TrainRun, data_fingerprint

__all__ = ["TrainJob", "train_many"]

_PARAMS = ("res_u", "res_w", "res_bias", "head_a", "head_w")


@dataclass(frozen=True, eq=False)
class TrainJob:
    """One run of :func:`train_many`: a network, its training data and what trains.

    ``trainable``: ``"all"`` (every particle, as :func:`train`) or ``"head"`` (the
    frozen-features ablation: residual particles stay at their initialisation).
    """

    net: ScaledResNet
    X: object
    y: object
    trainable: str = "all"


def _shape_key(job: TrainJob) -> tuple[object, ...]:
    c = job.net.config
    n = len(job.X) if hasattr(job.X, "__len__") else -1  # type: ignore[arg-type]
    return (c.d, c.depth, c.width, c.head_width, c.input_dim, c.activation, job.net.res_u.dtype, n)


def train_many(
    jobs: Sequence[TrainJob],
    *,
    steps: int = 1000,
    record_every: int = 100,
    lr: float = 0.5,
    divergence_factor: float = 1e4,
    lr_scale: str = "beta",
) -> list[TrainRun]:
    """Train every job (see :class:`TrainJob`) and return one :class:`TrainRun` each, in order.

    Arguments as in :func:`train`; ``seconds_per_step`` of each run is its share of the
    batched step time (batch time / batch size). A diverged run stops updating at the
    divergence, keeps its last checkpoint and is reported by a RuntimeWarning, as in
    :func:`train`; the other runs of its batch continue.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"train_many: steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ConfigurationError(f"train_many: record_every must be an integer >= 1, got {record_every!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigurationError(f"train_many: lr must be a finite number > 0, got {lr!r}")
    if lr_scale not in ("beta", "none"):
        raise ConfigurationError(f"train_many: lr_scale must be 'beta' or 'none', got {lr_scale!r}")
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        if not isinstance(job, TrainJob) or not isinstance(job.net, ScaledResNet):
            raise ConfigurationError(f"train_many: job {i} must be a TrainJob holding a ScaledResNet")
        if job.trainable not in ("all", "head"):
            raise ConfigurationError(f"train_many: job {i}: trainable must be 'all' or 'head', "
                                     f"got {job.trainable!r}")
        groups.setdefault(_shape_key(job), []).append(i)
    out: list[TrainRun | None] = [None] * len(jobs)
    for idx in groups.values():
        for i, run in zip(idx, _train_group([jobs[i] for i in idx], steps, record_every, lr,
                                            divergence_factor, lr_scale), strict=True):
            out[i] = run
    return [r for r in out if r is not None]


def _train_group(jobs: list[TrainJob], steps: int, record_every: int, lr: float,
                 divergence_factor: float, lr_scale: str) -> list[TrainRun]:
    nets = [j.net for j in jobs]
    cfg0 = nets[0].config
    dtype = nets[0].res_u.dtype
    B = len(jobs)
    Xs, ys = [], []
    for j in jobs:
        Xa = as_features(j.X, "X_train")
        ya = as_targets(j.y, Xa.shape[0], "y_train")
        j.net.embed_input(torch.as_tensor(Xa, dtype=dtype))  # shape check, clear message
        Xs.append(Xa)
        ys.append(ya)
    ns = [x.shape[0] for x in Xs]
    n_max = max(ns)
    X = torch.zeros(B, n_max, cfg0.input_dim, dtype=dtype)
    Y = torch.zeros(B, n_max, dtype=dtype)
    W = torch.zeros(B, n_max, dtype=dtype)  # 1/n_b on real rows, 0 on padding
    for b, (Xa, ya) in enumerate(zip(Xs, ys, strict=True)):
        X[b, :ns[b]] = torch.as_tensor(Xa, dtype=dtype)
        Y[b, :ns[b]] = torch.as_tensor(ya, dtype=dtype)
        W[b, :ns[b]] = 1.0 / ns[b]
    embed = torch.stack([n.embed for n in nets])  # type: ignore[misc]
    Z0 = X @ embed.transpose(1, 2)  # (B, n, d), fixed
    params = {k: torch.stack([getattr(n, k).detach() for n in nets]).clone().requires_grad_(True)
              for k in _PARAMS}
    scale = torch.tensor([n.residual_multiplier / cfg0.width for n in nets], dtype=dtype)
    head_scale = torch.tensor([n.config.beta / cfg0.head_width for n in nets], dtype=dtype)
    lr_used = [lr / n.config.beta**2 if lr_scale == "beta" else lr for n in nets]
    mults = [n.lr_multipliers() for n in nets]
    step_size = {k: torch.tensor([lr_used[b] * mults[b][k] * (0.0 if jobs[b].trainable == "head"
                                                              and k.startswith("res") else 1.0)
                                  for b in range(B)], dtype=dtype) for k in _PARAMS}
    act = nets[0].act.fn

    def forward() -> Tensor:
        z = Z0
        for layer in range(cfg0.depth):
            h = act(z @ params["res_w"][:, layer].transpose(1, 2) + params["res_bias"][:, layer, None, :])
            z = z + scale[:, None, None] * (h @ params["res_u"][:, layer])
        s = act(z @ params["head_w"].transpose(1, 2))  # (B, n, K)
        return head_scale[:, None] * (s @ params["head_a"][:, :, None])[..., 0]

    active = torch.ones(B, dtype=torch.bool)
    losses: list[list[float]] = [[] for _ in range(B)]
    ckpts: list[list[Checkpoint]] = [[] for _ in range(B)]
    diverged = [False] * B
    start = time.perf_counter()
    step_seconds = 0.0
    n_timed = 0
    for k in range(steps + 1):
        t0 = time.perf_counter()
        r = forward() - Y
        per_run = 0.5 * (W * r * r).sum(dim=1)  # (B,)
        values = per_run.detach().tolist()
        for b in range(B):
            if not active[b]:
                continue
            v = values[b]
            if k == 0 and not math.isfinite(v):
                raise ConfigurationError("train_many: an initial loss is not finite; check the data scale")
            first = losses[b][0] if losses[b] else v
            if not math.isfinite(v) or v > divergence_factor * first:
                diverged[b] = True
                active[b] = False
                continue
            losses[b].append(v)
            if k % record_every == 0 or k == steps:
                state = {name: params[name][b].detach().clone() for name in _PARAMS}
                ckpts[b].append(Checkpoint(k, lr_used[b] * k, v, state))
        if k == steps or not bool(active.any()):
            break
        for p in params.values():
            p.grad = None
        per_run.sum().backward()
        with torch.no_grad():
            mask = active.to(dtype)
            for name, p in params.items():
                assert p.grad is not None
                step = (step_size[name] * mask).reshape(-1, *([1] * (p.dim() - 1)))
                p.sub_(step * p.grad)
        step_seconds += time.perf_counter() - t0
        n_timed += 1
    wall = time.perf_counter() - start
    runs = []
    for b, job in enumerate(jobs):
        if diverged[b]:
            warnings.warn(f"train_many: run {b} diverged at step {len(losses[b])} (loss non-finite "
                          f"or above {divergence_factor:g} x the initial loss) with step "
                          f"{lr_used[b]:g}; lower lr", RuntimeWarning, stacklevel=3)
        model = copy.deepcopy(job.net)
        with torch.no_grad():
            for name in _PARAMS:
                getattr(model, name).copy_(ckpts[b][-1].state[name])
        model.eval()
        runs.append(TrainRun(
            model=model, checkpoints=tuple(ckpts[b]), losses=tuple(losses[b]), lr=lr_used[b],
            steps_requested=steps, diverged=diverged[b], n_train=ns[b],
            fingerprint=data_fingerprint(Xs[b], ys[b]),
            seconds_per_step=step_seconds / max(n_timed, 1) / B, wall_seconds=wall / B,
            lr_multipliers=dict(mults[b]), lr_scale=lr_scale, trainable=job.trainable))
    return runs

