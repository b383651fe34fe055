"""Shared test helpers: tiny DAG networks, random networks and compressions, neuron
rescalings, and the brute-force neuron-level oracle.

Nothing here uses certcompress: the oracle is built from the model's own modules
(explicit matrices from autograd Jacobians, biases from the output at zero input), so
it checks the engine independently of its IR.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class Layer:
    """One step of a :class:`DagNet`: ``module`` applies ``mods[name]``; ``add``,
    ``cat`` (along ``dim``) and ``flatten`` (from dimension 1) only wire."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    dim: int = 1


class DagNet(nn.Module):
    """A network given as a list of layers over named tensors (the input is ``"x"``)."""

    def __init__(self, layers: Sequence[Layer], mods: dict[str, nn.Module], output: str) -> None:
        super().__init__()
        self.layers = list(layers)
        self.mods = nn.ModuleDict(mods)
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        env = {"x": x}
        for layer in self.layers:
            ins = [env[i] for i in layer.inputs]
            if layer.kind == "module":
                out = self.mods[layer.name](ins[0])
            elif layer.kind == "add":
                out = ins[0] + ins[1]
            elif layer.kind == "cat":
                out = torch.cat(ins, dim=layer.dim)
            elif layer.kind == "flatten":
                out = torch.flatten(ins[0], 1)
            else:
                raise ValueError(f"unknown layer kind {layer.kind}")
            env[layer.name] = out
        return env[self.output]


class NetBuilder:
    """Builds a :class:`DagNet` step by step, tracking every tensor's shape."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)
        self.shapes: dict[str, tuple[int, ...]] = {"x": self.input_shape}
        self.layers: list[Layer] = []
        self.mods: dict[str, nn.Module] = {}
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def module(self, m: nn.Module, inp: str, prefix: str = "m") -> str:
        name = self._name(prefix)
        m.eval()
        with torch.no_grad():
            out = m(torch.zeros(self.shapes[inp]))
        self.layers.append(Layer(name, "module", (inp,)))
        self.mods[name] = m
        self.shapes[name] = tuple(out.shape)
        return name

    def add(self, a: str, b: str) -> str:
        assert self.shapes[a] == self.shapes[b], (self.shapes[a], self.shapes[b])
        name = self._name("add")
        self.layers.append(Layer(name, "add", (a, b)))
        self.shapes[name] = self.shapes[a]
        return name

    def cat(self, names: Sequence[str], dim: int = 1) -> str:
        name = self._name("cat")
        self.layers.append(Layer(name, "cat", tuple(names), dim))
        shape = list(self.shapes[names[0]])
        shape[dim] = sum(self.shapes[n][dim] for n in names)
        self.shapes[name] = tuple(shape)
        return name

    def flatten(self, a: str) -> str:
        name = self._name("flat")
        self.layers.append(Layer(name, "flatten", (a,)))
        self.shapes[name] = (self.shapes[a][0], math.prod(self.shapes[a][1:]))
        return name

    def channels(self, a: str) -> int:
        return self.shapes[a][1]

    def build(self, output: str, gen: torch.Generator | None = None,
              scale: float = 0.6) -> DagNet:
        net = DagNet(self.layers, self.mods, output).eval()
        if gen is not None:
            randomize(net, gen, scale)
        return net


def randomize(model: nn.Module, gen: torch.Generator, scale: float = 0.6) -> nn.Module:
    """Random parameters (and BatchNorm running statistics) from ``gen``, in place."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(_sign(gen, n) * (0.5 + torch.rand(n, generator=gen)))
                m.bias.copy_(0.5 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                fan_in = m.weight[0].numel() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d,
                                                                nn.Conv3d)) \
                    else m.weight[:, 0].numel()
                s = scale * 2.0 / math.sqrt(max(1, fan_in))
                m.weight.copy_(s * torch.randn(m.weight.shape, generator=gen))
                if m.bias is not None:
                    m.bias.copy_(scale * torch.randn(m.bias.shape, generator=gen))
    return model


def _sign(gen: torch.Generator, n: int) -> Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.8, 1.0, -1.0)


# ------------------------------------------------------------------ random networks

VECTOR_BLOCKS = ("dense", "dense_bn", "relu6", "leaky", "hardtanh", "residual", "concat", "bn")
CONV_BLOCKS = ("conv", "conv_bn", "conv_stride", "relu6", "leaky", "residual", "concat",
               "maxpool", "maxpool_ceil", "avgpool", "adaptive", "upsample", "convT", "bn")


def random_vector_net(blocks: Sequence[str], width: int, n_in: int, n_out: int,
                      seed: int, scale: float = 0.6) -> tuple[DagNet, tuple[int, ...]]:
    """An MLP-like ReLU DAG (``(1, n_in) -> (1, n_out)``) from a list of block kinds."""
    rng = random.Random(seed)
    b = NetBuilder((1, n_in))
    h = b.module(nn.Linear(n_in, width), "x", "fc")
    h = b.module(nn.ReLU(), h, "relu")
    for kind in blocks:
        w = b.shapes[h][1]
        if kind == "dense":
            h = b.module(nn.ReLU(), b.module(nn.Linear(w, width), h, "fc"), "relu")
        elif kind == "dense_bn":
            lin = nn.Sequential(nn.Linear(w, width), nn.BatchNorm1d(width))
            h = b.module(nn.ReLU(), b.module(lin, h, "fcbn"), "relu")
        elif kind == "relu6":
            h = b.module(nn.ReLU6(), b.module(nn.Linear(w, width), h, "fc"), "relu6")
        elif kind == "hardtanh":
            act = nn.Hardtanh(-rng.uniform(0.2, 1.5), rng.uniform(0.2, 1.5))
            h = b.module(act, b.module(nn.Linear(w, width), h, "fc"), "htanh")
        elif kind == "leaky":
            act = nn.LeakyReLU(rng.choice([0.01, 0.1, 0.3]))
            h = b.module(act, b.module(nn.Linear(w, width), h, "fc"), "leaky")
        elif kind == "residual":
            r = b.module(nn.ReLU(), b.module(nn.Linear(w, width), h, "fc"), "relu")
            r = b.module(nn.Linear(width, w), r, "fc")
            h = b.module(nn.ReLU(), b.add(h, r), "relu")
        elif kind == "concat":
            r = b.module(nn.ReLU(), b.module(nn.Linear(w, rng.randint(1, width)), h, "fc"),
                         "relu")
            h = b.cat([h, r], dim=1)
        elif kind == "bn":
            h = b.module(nn.BatchNorm1d(w), h, "bn")
        else:
            raise ValueError(kind)
    out = b.module(nn.Linear(b.shapes[h][1], n_out), h, "fc")
    gen = torch.Generator().manual_seed(seed)
    return b.build(out, gen, scale), b.input_shape


def random_conv_net(blocks: Sequence[str], channels: int, size: int, n_out: int, seed: int,
                    scale: float = 0.6) -> tuple[DagNet, tuple[int, ...]]:
    """A small convolutional ReLU DAG on ``(1, 2, size, size)`` from a list of block kinds
    (blocks that do not fit the current spatial size are skipped)."""
    rng = random.Random(seed)
    b = NetBuilder((1, 2, size, size))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(2, channels, 3, padding=1), "x", "conv"), "relu")
    for kind in blocks:
        c, s = b.shapes[h][1], b.shapes[h][2]
        if kind == "conv":
            h = b.module(nn.ReLU(), b.module(nn.Conv2d(c, channels, 3, padding=1), h, "conv"),
                         "relu")
        elif kind == "conv_bn":
            m = nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels))
            h = b.module(nn.ReLU(), b.module(m, h, "convbn"), "relu")
        elif kind == "conv_stride" and s >= 3:
            m = nn.Conv2d(c, channels, 3, stride=2, padding=1)
            h = b.module(nn.ReLU(), b.module(m, h, "conv"), "relu")
        elif kind == "relu6":
            h = b.module(nn.ReLU6(), b.module(nn.Conv2d(c, channels, 1), h, "conv"), "relu6")
        elif kind == "leaky":
            m = nn.Conv2d(c, channels, 3, padding=1)
            h = b.module(nn.LeakyReLU(0.2), b.module(m, h, "conv"), "leaky")
        elif kind == "residual":
            r = b.module(nn.ReLU(), b.module(nn.Conv2d(c, channels, 3, padding=1), h, "conv"),
                         "relu")
            r = b.module(nn.Conv2d(channels, c, 3, padding=1), r, "conv")
            h = b.module(nn.ReLU(), b.add(h, r), "relu")
        elif kind == "concat":
            r = b.module(nn.ReLU(), b.module(nn.Conv2d(c, rng.randint(1, channels), 1), h,
                                             "conv"), "relu")
            h = b.cat([h, r], dim=1)
        elif kind == "maxpool" and s >= 2:
            h = b.module(nn.MaxPool2d(2), h, "maxpool")
        elif kind == "maxpool_ceil" and s >= 3:
            h = b.module(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), h, "maxpool")
        elif kind == "avgpool" and s >= 3:
            m = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=rng.random() < 0.5,
                             count_include_pad=rng.random() < 0.5)
            h = b.module(m, h, "avgpool")
        elif kind == "adaptive" and s >= 2:
            h = b.module(nn.AdaptiveAvgPool2d((max(1, s - 1), max(1, (2 * s) // 3))), h,
                         "adapt")
        elif kind == "upsample" and s <= 3:
            h = b.module(nn.Upsample(scale_factor=2, mode="nearest"), h, "up")
        elif kind == "convT" and s <= 4:
            m = nn.ConvTranspose2d(c, channels, 3, stride=2, padding=1, output_padding=1)
            h = b.module(nn.ReLU(), b.module(m, h, "convT"), "relu")
        elif kind == "bn":
            h = b.module(nn.BatchNorm2d(c), h, "bn")
    flat = b.flatten(h)
    out = b.module(nn.Linear(b.shapes[flat][1], n_out), flat, "fc")
    gen = torch.Generator().manual_seed(seed)
    return b.build(out, gen, scale), b.input_shape


# ---------------------------------------------------------------------- compressions

_AFFINE = (nn.Linear, nn.modules.conv._ConvNd)


def affine_parameters(model: nn.Module, include_bn: bool = False) -> list[tuple[str, Tensor]]:
    """Weights and biases of Linear/Conv modules (and BatchNorm affine if asked)."""
    types: tuple[type, ...] = _AFFINE + ((nn.modules.batchnorm._BatchNorm,) if include_bn else ())
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, types):
            for pname, p in m.named_parameters(recurse=False):
                out.append((f"{mname}.{pname}", p))
    return out


def compress(model: nn.Module, kind: str, seed: int, amount: float = 0.3,
             include_bn: bool = False) -> nn.Module:
    """A compressed copy of ``model``:

    ``prune``: zero a random fraction ``amount`` of the weights and biases;
    ``round``: round to the grid ``amount * Z`` (contains 0: no sign flips);
    ``round_zero``: round toward zero on that grid (the original dominates);
    ``scale``: multiply each parameter by a factor in [0.5, 1.5] (same signs);
    ``perturb``: add noise of size ``amount`` (sign changes);
    ``flip``: negate a random fraction ``amount`` of the parameters (sign changes).
    """
    gen = torch.Generator().manual_seed(seed)
    c = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in affine_parameters(c, include_bn):
            u = torch.rand(p.shape, generator=gen, dtype=p.dtype)
            if kind == "prune":
                p.mul_((u >= amount).to(p.dtype))
            elif kind == "round":
                p.copy_(torch.round(p / amount) * amount)
            elif kind == "round_zero":
                p.copy_(torch.trunc(p / amount) * amount)
            elif kind == "scale":
                p.mul_(0.5 + u)
            elif kind == "perturb":
                p.add_(amount * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif kind == "flip":
                p.mul_(torch.where(u < amount, -1.0, 1.0).to(p.dtype))
            else:
                raise ValueError(kind)
        if include_bn and kind == "perturb":
            for m in c.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    n = m.num_features
                    m.running_mean.add_(amount * torch.randn(n, generator=gen))
                    m.running_var.mul_(0.8 + 0.4 * torch.rand(n, generator=gen))
    return c


def mlp(n_in: int, width: int, depth: int, n_out: int, seed: int,
        scale: float = 1.0) -> nn.Sequential:
    """A float64 ReLU MLP (``depth`` hidden layers of ``width``), torch's default
    initialization from ``seed``, every parameter times ``scale``; eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_out))
    net = nn.Sequential(*layers).double().eval()
    if scale != 1.0:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
    return net


def conv1d_mlp(n_in: int, channels: int, n_out: int, seed: int) -> nn.Sequential:
    """A Conv1d over the inputs as a length-``n_in`` signal (padding keeps the length),
    then a 6-unit ReLU layer: a chain network (its dense matrix is exact); float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Unflatten(1, (1, n_in)), nn.Conv1d(1, channels, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(channels * n_in, 6), nn.ReLU(),
                         nn.Linear(6, n_out)).double().eval()


def deterministic_copy(net: nn.Module, kind: str, amount: float = 0.3) -> nn.Module:
    """A compressed copy with no randomness: ``prune`` zeroes each parameter tensor's
    ``amount`` smallest magnitudes, ``round`` rounds to the grid Z/8, ``float16`` casts
    to float16 and back, ``ulp`` moves each value one ulp up, ``same`` copies."""
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
            elif kind == "ulp":
                p.copy_(torch.nextafter(p, torch.full_like(p, 10.0)))
            elif kind != "same":
                raise ValueError(kind)
    return out


def float64_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def log_uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


# ----------------------------------------------------------------- brute-force oracle


@dataclass
class NeuronDag:
    """An explicit neuron-level DAG carrying ``k`` parameter sets at once.

    Neuron ``v`` has ``bias[v]`` (shape ``(k,)``), incoming edges ``src[v]`` with
    weights ``w[v]`` (shape ``(n_edges, k)``) and an activation: ``input``, ``id``,
    ``relu`` or ``max`` (1-max-pooling of the weighted inputs).
    """

    k: int
    act: list[str] = field(default_factory=list)
    bias: list[np.ndarray] = field(default_factory=list)
    src: list[np.ndarray] = field(default_factory=list)
    w: list[np.ndarray] = field(default_factory=list)
    outputs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def new(self, act: str, bias: Iterable[float] | np.ndarray, src: Sequence[int],
            w: np.ndarray) -> int:
        self.act.append(act)
        self.bias.append(np.asarray(bias, dtype=np.float64).reshape(self.k))
        self.src.append(np.asarray(src, dtype=np.int64))
        self.w.append(np.asarray(w, dtype=np.float64).reshape(len(src), self.k))
        return len(self.act) - 1

    def fixed(self, act: str, bias: float, src: Sequence[int], w: Sequence[float]) -> int:
        """A neuron whose weights are the same in every parameter set."""
        wk = np.repeat(np.asarray(w, dtype=np.float64).reshape(-1, 1), self.k, axis=1)
        return self.new(act, [bias] * self.k, src, wk)

    def map(self, fn: Callable[[np.ndarray], np.ndarray], k: int) -> NeuronDag:
        """The same DAG with every weight/bias vector ``t`` (shape ``(..., self.k)``)
        replaced by ``fn(t)`` (shape ``(..., k)``)."""
        return NeuronDag(k, list(self.act), [fn(b[None])[0] for b in self.bias],
                         list(self.src), [fn(w) for w in self.w], self.outputs)

    # -- evaluation
    def forward(self, x: np.ndarray, which: int = 0) -> np.ndarray:
        """The function of parameter set ``which`` at input ``x`` (flattened)."""
        val = np.zeros(len(self.act))
        xi = 0
        for v, act in enumerate(self.act):
            if act == "input":
                val[v] = x[xi]
                xi += 1
                continue
            terms = self.w[v][:, which] * val[self.src[v]]
            if act == "max":
                z = terms.max() + self.bias[v][which]
            else:
                z = terms.sum() + self.bias[v][which]
            val[v] = max(z, 0.0) if act == "relu" else z
        return val[self.outputs]

    def magnitude(self, x: np.ndarray, which: int = 0) -> np.ndarray:
        """The absolute-weight map at a non-negative input ``x``."""
        val = np.zeros(len(self.act))
        xi = 0
        for v, act in enumerate(self.act):
            if act == "input":
                val[v] = x[xi]
                xi += 1
            else:
                val[v] = np.abs(self.w[v][:, which]) @ val[self.src[v]] + abs(self.bias[v][which])
        return val[self.outputs]

    def paths(self) -> list[np.ndarray]:
        """Brute-force path enumeration: for every output neuron, the array
        ``Phi_p`` (shape ``(k, n_paths)``) of every path ending there, each path starting
        at an input neuron (value 1) or at a neuron's bias. Columns are the same path in
        every parameter set."""
        last: dict[int, int] = {}
        for v in range(len(self.act)):
            for u in self.src[v]:
                last[int(u)] = v
        keep = set(int(o) for o in self.outputs)
        ph: dict[int, np.ndarray] = {}
        for v, act in enumerate(self.act):
            if act == "input":
                ph[v] = np.ones((self.k, 1))
                continue
            parts = [ph[int(u)] * self.w[v][e][:, None] for e, u in enumerate(self.src[v])]
            parts.append(self.bias[v][:, None])
            ph[v] = np.concatenate(parts, axis=1)
            for u in set(int(u) for u in self.src[v]):
                if last[u] == v and u not in keep:
                    del ph[u]
        return [ph[int(o)] for o in self.outputs]


def _affine_layer(dag: NeuronDag, mods: Sequence[nn.Module], ids: np.ndarray,
                  fn: Callable[[nn.Module, Tensor], Tensor]) -> np.ndarray:
    """Neurons of an affine map: Jacobian and value at zero of each model's module."""
    in_shape = ids.shape
    n_in = ids.size
    mats, biases = [], []
    out_shape: tuple[int, ...] = ()
    for m in mods:
        m64 = float64_copy(m)

        def f(z: Tensor, m64: nn.Module = m64) -> Tensor:
            return fn(m64, z.reshape(in_shape)).reshape(-1)

        zero = torch.zeros(n_in, dtype=torch.float64)
        with torch.no_grad():
            b = f(zero)
            out_shape = tuple(fn(m64, zero.reshape(in_shape)).shape)
            # self-check: the module is affine (else this oracle does not apply)
            g = torch.Generator().manual_seed(1)
            z1 = torch.randn(n_in, generator=g, dtype=torch.float64)
            z2 = torch.randn(n_in, generator=g, dtype=torch.float64)
            lhs, rhs = f(z1) + f(z2), f(z1 + z2) + b
            assert torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-9), f"{m} is not affine"
        jac = torch.autograd.functional.jacobian(f, zero)
        mats.append(jac.reshape(-1, n_in).numpy())
        biases.append(b.numpy())
    j = np.stack(mats, axis=-1)  # (n_out, n_in, k)
    bias = np.stack(biases, axis=-1)  # (n_out, k)
    flat_ids = ids.reshape(-1)
    out = np.empty(len(bias), dtype=np.int64)
    for o in range(len(bias)):
        nz = np.nonzero((j[o] != 0).any(axis=1))[0]
        out[o] = dag.new("id", bias[o], flat_ids[nz], j[o][nz])
    return out.reshape(out_shape)


def _clamp_layer(dag: NeuronDag, ids: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clamp(z, lo, hi) = lo + ReLU(z - lo) - ReLU(z - hi)`` (shared doc, section 1)."""
    out = np.empty_like(ids)
    for i, u in np.ndenumerate(ids):
        r1 = dag.fixed("relu", -lo, [u], [1.0])
        r2 = dag.fixed("relu", -hi, [u], [1.0])
        out[i] = dag.fixed("id", lo, [r1, r2], [1.0, -1.0])
    return out


def _leaky_layer(dag: NeuronDag, ids: np.ndarray, s: float) -> np.ndarray:
    """``LeakyReLU(z) = ReLU(z) - s*ReLU(-z)``."""
    out = np.empty_like(ids)
    for i, u in np.ndenumerate(ids):
        r1 = dag.fixed("relu", 0.0, [u], [1.0])
        r2 = dag.fixed("relu", 0.0, [u], [-1.0])
        out[i] = dag.fixed("id", 0.0, [r1, r2], [1.0, -s])
    return out


def _as_tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _maxpool_layer(dag: NeuronDag, m: nn.Module, ids: np.ndarray) -> np.ndarray:
    """1-max-pool neurons, weight 1 from every in-range element of each window (index
    arithmetic, padding elements excluded)."""
    d = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(m)]
    k, p, dl = (_as_tuple(v, d) for v in (m.kernel_size, m.padding, m.dilation))
    s = _as_tuple(m.stride if m.stride is not None else m.kernel_size, d)
    with torch.no_grad():
        out_shape = tuple(m(torch.zeros(ids.shape)).shape)
    spatial_in = ids.shape[2:]
    out = np.empty(out_shape, dtype=np.int64)
    for idx in np.ndindex(*out_shape):
        pos = idx[2:]
        win: list[list[int]] = []
        for a in range(d):
            start = pos[a] * s[a] - p[a]
            win.append([start + j * dl[a] for j in range(k[a])
                        if 0 <= start + j * dl[a] < spatial_in[a]])
        src = [ids[(idx[0], idx[1]) + q] for q in _product(win)]
        out[idx] = dag.fixed("max", 0.0, src, [1.0] * len(src))
    return out


def _product(lists: list[list[int]]) -> list[tuple[int, ...]]:
    res: list[tuple[int, ...]] = [()]
    for li in lists:
        res = [r + (v,) for r in res for v in li]
    return res


def _module_layer(dag: NeuronDag, mods: Sequence[nn.Module], ids: np.ndarray) -> np.ndarray:
    m = mods[0]
    if type(m) is nn.ReLU:
        return _relu_layer(dag, ids)
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return _clamp_layer(dag, ids, float(m.min_val), float(m.max_val))
    if isinstance(m, nn.LeakyReLU):
        return _leaky_layer(dag, ids, float(m.negative_slope))
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return _maxpool_layer(dag, m, ids)
    if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros":
        # non-zero padding mode: an index map (identity neurons copying inputs), then a
        # zero-padded convolution (the pad copies are distinct neurons, not summed weights)
        pad = m._reversed_padding_repeated_twice
        ids = _affine_layer(dag, mods, ids, lambda mm, z: nn.functional.pad(
            z, pad, mode=mm.padding_mode))
        return _affine_layer(dag, mods, ids, _zero_pad_conv)
    return _affine_layer(dag, mods, ids, lambda mm, z: mm(z))


def _zero_pad_conv(m: nn.Module, z: Tensor) -> Tensor:
    conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}
    return conv[z.dim() - 2](z, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)


def _relu_layer(dag: NeuronDag, ids: np.ndarray) -> np.ndarray:
    out = np.empty_like(ids)
    for i, u in np.ndenumerate(ids):
        out[i] = dag.fixed("relu", 0.0, [u], [1.0])
    return out


def neuron_dag(nets: Sequence[DagNet], input_shape: Sequence[int]) -> NeuronDag:
    """The neuron-level DAG of one or more :class:`DagNet` of identical architecture for
    inputs of ``input_shape``, carrying one parameter set per net (edges present in any
    of them are kept)."""
    first = nets[0]
    dag = NeuronDag(len(nets))
    shape = tuple(input_shape)
    env: dict[str, np.ndarray] = {"x": np.arange(math.prod(shape)).reshape(shape)}
    for _ in range(math.prod(shape)):
        dag.act.append("input")
        dag.bias.append(np.zeros(dag.k))
        dag.src.append(np.zeros(0, dtype=np.int64))
        dag.w.append(np.zeros((0, dag.k)))
    for layer in first.layers:
        ins = [env[i] for i in layer.inputs]
        if layer.kind == "module":
            out = _module_layer(dag, [n.mods[layer.name] for n in nets], ins[0])
        elif layer.kind == "add":
            out = np.empty_like(ins[0])
            for i, u in np.ndenumerate(ins[0]):
                out[i] = dag.fixed("id", 0.0, [u, ins[1][i]], [1.0, 1.0])
        elif layer.kind == "cat":
            out = np.concatenate(ins, axis=layer.dim)
        elif layer.kind == "flatten":
            out = ins[0].reshape(ins[0].shape[0], -1)
        else:
            raise ValueError(layer.kind)
        env[layer.name] = out
    dag.outputs = env[first.output].reshape(-1)
    return dag


@dataclass(frozen=True)
class OracleValues:
    """Per-output brute-force values between parameter sets 0 (theta) and 1 (theta')."""

    norm: np.ndarray  # ||Phi_o(theta)||_1
    norm2: np.ndarray  # ||Phi_o(theta')||_1
    metric: np.ndarray  # sum_p |Phi_p(theta) - Phi_p(theta')|
    minmax: np.ndarray  # sum_p Phi_p(max|.|) - Phi_p(min|.|)
    triangle: np.ndarray  # d(theta, theta'') + minmax(theta'', theta')
    dominated: bool  # |theta| >= |theta'| or |theta'| >= |theta| on every edge and bias
    sign_conflict: bool  # theta_e * theta'_e < 0 on some edge or bias

    def expected(self) -> np.ndarray:
        """What the engine must compute, per output: the path-metric itself when one
        parameter set dominates, else the min/max value, else (sign conflicts) the
        triangle value."""
        if self.sign_conflict:
            return self.triangle
        return self.metric if self.dominated else self.minmax


def _minmax_params(t: np.ndarray) -> np.ndarray:
    a, b = np.abs(t[..., 0]), np.abs(t[..., 1])
    return np.stack([np.maximum(a, b), np.minimum(a, b)], axis=-1)


def _agree_params(t: np.ndarray) -> np.ndarray:
    """``(theta, theta'', theta')`` with ``theta''`` = theta where signs agree, else 0."""
    mid = np.where(t[..., 0] * t[..., 1] < 0, 0.0, t[..., 0])
    return np.stack([t[..., 0], mid, t[..., 1]], axis=-1)


def oracle(dag: NeuronDag) -> OracleValues:
    """Every value the engine computes, by explicit path enumeration."""
    assert dag.k == 2
    ph = dag.paths()
    norm = np.array([np.abs(p[0]).sum() for p in ph])
    norm2 = np.array([np.abs(p[1]).sum() for p in ph])
    metric = np.array([np.abs(p[0] - p[1]).sum() for p in ph])
    mm = dag.map(_minmax_params, 2).paths()
    minmax = np.array([(p[0] - p[1]).sum() for p in mm])
    three = dag.map(_agree_params, 3)
    tp = three.paths()
    d1 = np.array([np.abs(p[0] - p[1]).sum() for p in tp])
    mid = three.map(lambda t: _minmax_params(t[..., 1:]), 2).paths()
    d2 = np.array([(p[0] - p[1]).sum() for p in mid])
    vals = np.concatenate([t.reshape(-1, 2) for t in dag.w + dag.bias])
    a, b = np.abs(vals[:, 0]), np.abs(vals[:, 1])
    dominated = bool(np.all(a >= b) or np.all(b >= a))
    conflict = bool(np.any(vals[:, 0] * vals[:, 1] < 0))
    return OracleValues(norm, norm2, metric, minmax, d1 + d2, dominated, conflict)
