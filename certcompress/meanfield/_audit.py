"""Regime audit of a residual network: alpha_eff, beta_eff, depth exponent and a label [D].

A block z + c * V s(W z + b) (V: d x M, W: M x d) is written in particle form
z + (a/M) sum_m u_m s(w_m^T z + b_m) with u = M V / p and w the rows of W, where the
particle scale p = sqrt(d) * rms(W) (1 for mean-field particles w ~ N(0, I/d)). Then

    rho_l  = M * rms(V_l) / (sqrt(d) * rms(W_l))   (1 for mean-field init, ~sqrt(M) for
                                                    PyTorch's default Linear init)
    g_l    = c_l * rho_l                           (the block's effective gain: a scale
                                                    folded into the weights counts too)
    alpha_eff = sum_l g_l                          (= alpha for c = alpha/L, mean-field init)
    beta_eff  = c_head * K * rms(A) / (sqrt(d) * rms(W'))   for a head A s(W' z).

Depth exponent gamma in g ~ a * L^-gamma, with any constant a:
- declared by a ScaledResNet with a named scaling (or the ``depth_exponent`` argument);
- FITTED over depths when ``family=`` gives the same parameterisation at other depths
  (least squares of log mean_l g_l against log L; the fitted constant is reported);
- otherwise not identifiable from one depth (NaN): one network of depth L with
  alpha_eff = sum g_l IS a c = alpha_eff / L network, so it is labelled by alpha_eff.
Labels: gamma < 1/4 "unstable", gamma < 3/4 "SDE"; with one depth "unstable" when
alpha_eff > ALPHA_MAX without a standard-init ratio, or with one the explicit gains
sum above ALPHA_MAX; otherwise "large-scale" when alpha_eff > ALPHA_MAX, when the
median rho is at least max(2, M^(1/4)) (the geometric midpoint of 1 and sqrt(M): standard
init) or when beta_eff > BETA_LARGE -- the classic lazy-training knobs -- and
"mean-field" otherwise. "lazy" is given only when MEASURED (``data=(X, y)`` for a
ScaledResNet, or :func:`laziness` on a training run): the particles of the module's own
training move less than LAZY_MOVE of their scale and G2 changes by less than LAZY_GRAM
(relative Frobenius) while the training loss at least halves; a large-scale network
whose particles moved stays "large-scale", with the measurement as evidence. Only
"mean-field" with a smooth bounded activation (tanh, sigmoid) and plain
one-hidden-layer blocks is in the scope of Chen et al. 2024.

Convolutional blocks (z + c * Conv(act(Conv(z))), normalisation allowed in between, as
in torchvision's ResNets) are read the same way with M and d the fan-ins of V and W
(in_channels * kernel size); they get a label and alpha_eff, and are out of scope.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConfigurationError, UnsupportedModelError, UnsupportedNode
from ._gram import gram_matrices, lambda_min
from ._model import ScaledResNet, particles_from_state
from ._train import TrainRun, train
from ._types import Regime

__all__ = ["AuditReport", "BlockInfo", "LazinessMeasurement", "audit", "laziness", "with_laziness",
           "IN_SCOPE_ACTIVATIONS", "ALPHA_MAX", "BETA_LARGE", "LAZY_MOVE", "LAZY_GRAM"]

ALPHA_MAX = 6.0
"""alpha_eff above this: the theorem's constants (exponential in alpha) are meaningless."""
BETA_LARGE = 10.0
"""beta_eff above this: large output scaling, the classic lazy knob (measure it)."""
LAZY_MOVE = 0.1
"""Lazy: rms particle displacement below this fraction of the rms particle scale..."""
LAZY_GRAM = 0.1
"""...and ||G2(T) - G2(0)||_F / ||G2(0)||_F below this, with the loss at least halved."""

IN_SCOPE_ACTIVATIONS = frozenset({"tanh", "sigmoid"})

_ACT_MODULES: dict[type[nn.Module], str] = {
    nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Softplus: "softplus",
    nn.ReLU6: "relu6", nn.Mish: "mish",
}
_ACT_FUNCTIONS: dict[object, str] = {
    torch.tanh: "tanh", torch.sigmoid: "sigmoid", F.gelu: "gelu", F.silu: "silu",
    torch.relu: "relu", F.relu: "relu", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.softplus: "softplus", F.relu6: "relu6", F.mish: "mish",
}
_ACT_METHODS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu"}
_PASS_MODULES = (nn.Identity, nn.Dropout)
_LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}

_REASONS = {
    "SDE": "c_L ~ L^-1/2: the neural-SDE limit (Marion et al.), outside the mean-field theorem",
    "unstable": "c_L does not decay with depth: unstable as L grows, outside the theorem",
    "lazy": ("measured lazy: the particles stayed near initialisation under training "
             "(the kernel regime), outside the mean-field theorem"),
    "large-scale": ("large alpha_eff, init ratio or beta_eff (the lazy-training knobs), and "
                    "laziness not measured or the particles moved: outside the theorem"),
}


@dataclass(frozen=True)
class BlockInfo:
    """One residual block: width M, hidden dimension d, explicit gain c, init ratio rho."""

    name: str
    width: int
    hidden_dim: int
    gain: float
    init_ratio: float
    activation: str


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`audit`; see the module docstring for every definition."""

    model: str
    depth: int
    width: int
    hidden_dim: int
    head_width: int | None
    blocks: tuple[BlockInfo, ...]
    alpha_eff: float
    beta_eff: float | None
    depth_exponent: float
    depth_exponent_source: str
    regime: Regime
    in_scope: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    depth_constant: float | None = None
    laziness: LazinessMeasurement | None = None
    evidence: tuple[str, ...] = ()

    def raise_if_out_of_scope(self) -> None:
        """Raise UnsupportedModelError listing every reason when not in scope."""
        if not self.in_scope:
            raise UnsupportedModelError(
                f"{self.model}: regime '{self.regime}' is outside the mean-field theorem "
                "(Chen et al. 2024):\n" + "\n".join(f"  - {r}" for r in self.reasons)
            )

    def summary(self) -> str:
        beta = "n/a" if self.beta_eff is None else f"{self.beta_eff:.4g}"
        scope = "in scope" if self.in_scope else "out of scope: " + "; ".join(self.reasons)
        lines = [
            f"{self.model}: L={self.depth}, M={self.width}, d={self.hidden_dim}, "
            f"K={self.head_width}",
            f"  alpha_eff={self.alpha_eff:.4g}  beta_eff={beta}  gamma={self.depth_exponent:.3g} "
            f"({self.depth_exponent_source})",
            f"  regime: {self.regime} ({scope})",
        ]
        lines.extend(f"  evidence: {e}" for e in self.evidence)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class LazinessMeasurement:
    """How far the module's own training moved a ScaledResNet (relative to the scales).

    move_head / move_residual: rms particle displacement / rms initial particle norm;
    gram_change: ||G2(T) - G2(0)||_F / ||G2(0)||_F; lambda_min_G2_init/final;
    loss_ratio: final / initial training loss; lazy: the verdict (see module docstring).
    """

    move_head: float
    move_residual: float
    gram_change: float
    lambda_min_G2_init: float
    lambda_min_G2_final: float
    loss_ratio: float
    steps: int
    lazy: bool

    def describe(self) -> str:
        return (f"measured under training ({self.steps} steps, loss x{self.loss_ratio:.3g}): "
                f"particles moved {self.move_head:.3g} (head) and {self.move_residual:.3g} "
                f"(residual) of their scale, G2 changed {self.gram_change:.3g} (relative), "
                f"lambda_min(G2) {self.lambda_min_G2_init:.3g} -> {self.lambda_min_G2_final:.3g}")


def _rel_move(before: np.ndarray, after: np.ndarray) -> float:
    a = before.reshape(-1, before.shape[-1])
    b = after.reshape(-1, after.shape[-1])
    scale = math.sqrt(float(np.mean(np.sum(a * a, axis=1))))
    return math.sqrt(float(np.mean(np.sum((b - a) ** 2, axis=1)))) / max(scale, 1e-300)


def laziness(run: TrainRun, X: object) -> LazinessMeasurement:
    """Measure laziness on a TrainRun of a ScaledResNet (first vs last checkpoint) on X."""
    if not isinstance(run, TrainRun):
        raise ConfigurationError(f"laziness needs a TrainRun from mf.train(), got {type(run).__name__}")
    first, last = run.checkpoints[0], run.checkpoints[-1]
    p0 = particles_from_state(dict(first.state))
    p1 = particles_from_state(dict(last.state))
    net = copy.deepcopy(run.model).to(torch.float64)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(first.state[name])
    G0 = gram_matrices(net, X).G2
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(last.state[name])
    G1 = gram_matrices(net, X).G2
    move_h = _rel_move(p0.head, p1.head)
    move_r = _rel_move(p0.residual, p1.residual)
    gram = float(np.linalg.norm(G1 - G0) / max(float(np.linalg.norm(G0)), 1e-300))
    ratio = last.loss / first.loss if first.loss > 0 else 0.0
    lazy = bool(max(move_h, move_r) < LAZY_MOVE and gram < LAZY_GRAM and ratio <= 0.5
                and not run.diverged)
    return LazinessMeasurement(move_h, move_r, gram, lambda_min(G0), lambda_min(G1), ratio,
                               last.step, lazy)


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().to(torch.float64).pow(2).mean().sqrt())


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.inf


# ----------------------------------------------------------------- ScaledResNet
def _blocks_scaled(net: ScaledResNet) -> tuple[list[BlockInfo], float | None, int]:
    cfg = net.config
    blocks = []
    for layer in range(cfg.depth):
        rho = _ratio(_rms(net.res_u[layer]), math.sqrt(cfg.d) * _rms(net.res_w[layer]))
        blocks.append(BlockInfo(f"block{layer}", cfg.width, cfg.d, net.residual_multiplier,
                                rho, cfg.activation))
    beta_eff = cfg.beta * _ratio(_rms(net.head_a), math.sqrt(cfg.d) * _rms(net.head_w))
    return blocks, beta_eff, cfg.head_width


# ----------------------------------------------------------------- torch.fx path
@dataclass
class _Chain:
    linears: list[str]  # from the add backwards: [V, ..., W]
    gain: float
    activations: list[str]
    others: list[str]


def _scalar(arg: object, gm: fx.GraphModule) -> float | None:
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return float(arg)
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value.detach())
    return None


def _fan_in(layer: nn.Module) -> int:
    """Inputs feeding one output unit: in_features, or in_channels/groups * kernel size."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight[0].numel())


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node it depends on."""
    seen = {node}
    todo = [node]
    while todo:
        for parent in todo.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _walk(start: object, stop: set[fx.Node], gm: fx.GraphModule,
          modules: dict[str, nn.Module]) -> _Chain | None:
    """Walk back from ``start`` along single-input nodes until a node in ``stop``."""
    chain = _Chain([], 1.0, [], [])
    cur = start
    for _ in range(256):
        if isinstance(cur, fx.Node) and cur in stop:
            return chain
        if not isinstance(cur, fx.Node) or cur.op in ("placeholder", "get_attr", "output"):
            return None
        nodes = [a for a in cur.args if isinstance(a, fx.Node)]
        nxt: object = nodes[0] if nodes else None
        if cur.op == "call_module":
            mod = modules[str(cur.target)]
            if isinstance(mod, _LINEAR_TYPES):
                chain.linears.append(str(cur.target))
            elif type(mod) in _ACT_MODULES:
                chain.activations.append(_ACT_MODULES[type(mod)])
            elif not isinstance(mod, _PASS_MODULES):
                chain.others.append(f"{cur.target} ({type(mod).__name__})")
        elif cur.target in _ACT_FUNCTIONS:
            chain.activations.append(_ACT_FUNCTIONS[cur.target])
        elif cur.op == "call_method" and cur.target in _ACT_METHODS:
            chain.activations.append(_ACT_METHODS[str(cur.target)])
        elif cur.target in _MUL or cur.target in _DIV or (
                cur.op == "call_method" and cur.target in ("mul", "div")):
            a, b = cur.args[0], cur.args[1]
            sb, sa = _scalar(b, gm), _scalar(a, gm)
            is_div = cur.target in _DIV or cur.target == "div"
            if sb is not None and sa is None:
                chain.gain *= (1.0 / sb) if is_div else sb
                nxt = a
            elif sa is not None and sb is None and not is_div:
                chain.gain *= sa
                nxt = b
            else:
                return None  # a product of two computed tensors: not a residual branch
        else:
            chain.others.append(f"{cur.name} ({cur.op} {getattr(cur.target, '__name__', cur.target)})")
        if len(nodes) > 1 and not (cur.target in _MUL or cur.target in _DIV):
            return None
        cur = nxt
    return None


def _blocks_fx(model: nn.Module) -> tuple[list[BlockInfo], float | None, int | None, list[str], list[str]]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
        raise UnsupportedModelError(
            f"audit: cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: "
            f"{exc}); audit needs a traceable model, or build a ScaledResNet"
        ) from exc
    modules = dict(gm.named_modules())
    blocks: list[BlockInfo] = []
    reasons: list[str] = []
    notes: list[str] = []
    rejected: list[UnsupportedNode] = []
    conv: list[str] = []
    deep: list[str] = []
    other: list[str] = []
    last_add: fx.Node | None = None
    for node in gm.graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADD) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        walks = [w for w in (_walk(b, _ancestors(a), gm, modules),
                             _walk(a, _ancestors(b), gm, modules)) if w is not None]
        chain = max(walks, key=lambda w: len(w.linears), default=None)
        if chain is None or len(chain.linears) < 2:
            rejected.append(UnsupportedNode(node.name, node.op, str(getattr(node.target, "__name__", node.target)),
                                            "not z + c * Linear(act(Linear(z)))"))
            continue
        V = modules[chain.linears[0]]
        W = modules[chain.linears[-1]]
        # particle form: M = inputs of one output of V, d = inputs of one unit of W
        # (in_features for Linear; in_channels * kernel size for a convolution)
        M, d = _fan_in(V), _fan_in(W)
        rho = _ratio(M * _rms(V.weight), math.sqrt(d) * _rms(W.weight))
        act = "+".join(chain.activations) or "none"
        blocks.append(BlockInfo(node.name, M, d, chain.gain, rho, act))
        if not all(isinstance(modules[n], nn.Linear) for n in chain.linears):
            conv.append(node.name)
        if len(chain.linears) > 2:
            deep.append(f"'{node.name}' ({len(chain.linears)})")
        if chain.others:
            other.append(f"'{node.name}' ({', '.join(chain.others)})")
        last_add = node
    if conv:
        reasons.append(f"convolutional blocks ({len(conv)}: {', '.join(conv[:4])}"
                       f"{', ...' if len(conv) > 4 else ''}): the theory has fully-connected particles")
    if deep:
        reasons.append(f"blocks with more than two linear layers ({len(deep)}: {', '.join(deep[:4])}"
                       f"{', ...' if len(deep) > 4 else ''}): the theory has one hidden layer")
    if other:
        reasons.append(f"blocks with other operations ({len(other)}: {'; '.join(other[:2])}"
                       f"{'; ...' if len(other) > 2 else ''}): outside the theory")
    if not blocks:
        raise UnsupportedModelError(
            f"audit: no residual block z + c * Linear(act(Linear(z))) found in {type(model).__name__}",
            rejected,
        )
    beta_eff: float | None = None
    head_width: int | None = None
    out = next(n for n in gm.graph.nodes if n.op == "output")
    head = _walk(out.args[0], {last_add}, gm, modules) if last_add is not None else None
    if head is None:
        notes.append("head not recognised after the last block: beta_eff undefined")
        reasons.append("no head of the form A s(W' z) after the last block")
    elif len(head.linears) < 2:
        notes.append("linear readout without a hidden head layer: beta_eff undefined")
        reasons.append("the head has no hidden layer (the theory needs f = (beta/K) sum a s(w'^T z))")
    else:
        A = modules[head.linears[0]]
        Wh = modules[head.linears[-1]]
        head_width = _fan_in(A)
        beta_eff = head.gain * _ratio(head_width * _rms(A.weight),
                                      math.sqrt(_fan_in(Wh)) * _rms(Wh.weight))
        bad = [a for a in head.activations if a not in IN_SCOPE_ACTIVATIONS]
        if bad or not head.activations:
            reasons.append(f"head activation {'+'.join(head.activations) or 'none'} is not smooth and bounded")
    if all(b.gain == 1.0 for b in blocks):
        notes.append("no explicit multiplier on the residual branches; if the depth scaling is "
                     "folded into the weights, pass depth_exponent=")
    return blocks, beta_eff, head_width, reasons, notes


# ----------------------------------------------------------------- labels
def _effective_gain(model: nn.Module) -> tuple[int, float]:
    """(depth, mean effective block gain c_l * rho_l) of one network of a family."""
    if isinstance(model, ScaledResNet):
        blocks = _blocks_scaled(model)[0]
    else:
        blocks = _blocks_fx(model)[0]
    return len(blocks), float(np.mean([b.gain * b.init_ratio for b in blocks]))


def _fit_family(model: nn.Module, family: Sequence[nn.Module]) -> tuple[float, float, str]:
    pts = [_effective_gain(m) for m in (model, *family)]
    depths = sorted({L for L, _ in pts})
    if len(depths) < 2:
        raise ConfigurationError("audit: family= must contain networks of at least two "
                                 f"different depths; got depths {depths}")
    logL = np.log([L for L, _ in pts])
    logg = np.log([max(g, 1e-300) for _, g in pts])
    slope, intercept = np.polyfit(logL, logg, 1)
    return float(-slope), float(math.exp(intercept)), f"fitted over depths {depths}"


def audit(model: nn.Module, *, depth_exponent: float | None = None,
          family: Sequence[nn.Module] = (), data: tuple[object, object] | None = None,
          steps: int = 200, lr: float = 0.5) -> AuditReport:
    """Audit any residual network (a ScaledResNet or a torch.fx-traceable module).

    Finds blocks z + c * Linear(act(Linear(z))) (c: scalar constants or 1-element
    attributes multiplying or dividing the branch), computes alpha_eff, beta_eff,
    the depth exponent and the regime label, each with its evidence (see the module
    docstring). ``depth_exponent`` (gamma in c_L ~ L^-gamma) overrides the declared or
    fitted one; ``family``: the same parameterisation at other depths (the exponent and
    its constant are then fitted); ``data=(X, y)``: for a ScaledResNet, train a copy
    ``steps`` steps with :func:`train` (lr scaled by 1/beta^2) and measure laziness. The
    model is not modified. Raises UnsupportedModelError when no residual block is found.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"audit needs a torch.nn.Module, got {type(model).__name__}")
    notes: list[str] = []
    reasons: list[str] = []
    evidence: list[str] = []
    head_width: int | None
    declared_name = ""
    if isinstance(model, ScaledResNet):
        blocks, beta_eff, head_width = _blocks_scaled(model)
        if model.config.activation not in IN_SCOPE_ACTIVATIONS:
            reasons.append(f"activation '{model.config.activation}' is not smooth and bounded "
                           "(the theory assumes tanh-like activations)")
        declared = model.declared_depth_exponent
        declared_name = str(model.config.scaling)
    else:
        blocks, beta_eff, head_width, reasons, notes = _blocks_fx(model)
        declared = None
        bad = sorted({b.activation for b in blocks if b.activation not in IN_SCOPE_ACTIVATIONS})
        if bad:
            reasons.append(f"activation {', '.join(bad)} is not smooth and bounded "
                           "(the theory assumes tanh-like activations)")
    L = len(blocks)
    alpha_eff = float(sum(b.gain * b.init_ratio for b in blocks))
    rho = float(np.median([b.init_ratio for b in blocks]))
    width = int(np.median([b.width for b in blocks]))
    constant: float | None = None
    if depth_exponent is not None:
        if not math.isfinite(depth_exponent):
            raise ConfigurationError(f"depth_exponent must be finite, got {depth_exponent}")
        gamma, source = float(depth_exponent), "argument"
        constant = alpha_eff * L ** (gamma - 1.0)
    elif family:
        gamma, constant, source = _fit_family(model, family)
        evidence.append(f"depth exponent {gamma:.3g} with constant {constant:.3g}, {source}")
    elif declared is not None:
        gamma, source = declared, "declared"
        constant = alpha_eff * L ** (gamma - 1.0)
        evidence.append(f"depth exponent {gamma:g} declared by the scaling "
                        f"'{declared_name}'")
    else:
        gamma, source = math.nan, "not identifiable from one depth"
        notes.append(f"one depth (L={L}): the depth exponent is not identifiable, so the network "
                     f"is read as c = alpha_eff/L with alpha_eff = {alpha_eff:.3g}; pass family= "
                     "(other depths) or depth_exponent= to label the depth scaling")
    evidence.append(f"alpha_eff = sum_l c_l rho_l = {alpha_eff:.4g} (median init ratio rho = {rho:.3g})")
    if beta_eff is not None:
        evidence.append(f"beta_eff = {beta_eff:.4g}")
    big = []
    standard = rho >= max(2.0, width**0.25)
    if alpha_eff > ALPHA_MAX:
        big.append(f"alpha_eff {alpha_eff:.3g} > {ALPHA_MAX:g}")
    if standard:
        big.append(f"init ratio rho {rho:.3g} >= max(2, M^1/4) (standard initialisation)")
    if beta_eff is not None and beta_eff > BETA_LARGE:
        big.append(f"beta_eff {beta_eff:.3g} > {BETA_LARGE:g}")
    regime: Regime
    if math.isfinite(gamma) and gamma < 0.25:
        regime = "unstable"
    elif math.isfinite(gamma) and gamma < 0.75:
        regime = "SDE"
    elif not math.isfinite(gamma) and (
            (alpha_eff > ALPHA_MAX and not standard)
            or (standard and float(sum(b.gain for b in blocks)) > ALPHA_MAX)):
        # one depth: the residual branch is too strong at this depth (alpha_eff above
        # ALPHA_MAX, or with standard init the explicit gains alone sum above it)
        regime = "unstable"
        evidence.append(f"one depth: alpha_eff {alpha_eff:.3g} or sum of explicit gains "
                        f"{sum(b.gain for b in blocks):.3g} > {ALPHA_MAX:g}")
    elif big:
        regime = "large-scale"
        evidence.append("large-scale: " + "; ".join(big))
    else:
        regime = "mean-field"
    measured: LazinessMeasurement | None = None
    if data is not None:
        if not isinstance(model, ScaledResNet):
            raise ConfigurationError("audit: data= measures laziness by training, which needs a "
                                     "ScaledResNet; for your own network pass a TrainRun to "
                                     "mf.laziness() after training it the same way")
        run = train(model, data[0], data[1], steps=steps, record_every=steps, lr=lr)
        measured = laziness(run, data[0])
    elif big:
        notes.append("laziness not measured: pass data=(X, y) (ScaledResNet) to measure it")
    report = AuditReport(
        model=type(model).__name__, depth=L, width=width, hidden_dim=blocks[0].hidden_dim,
        head_width=head_width, blocks=tuple(blocks), alpha_eff=alpha_eff, beta_eff=beta_eff,
        depth_exponent=gamma, depth_exponent_source=source, regime=regime,
        in_scope=False, reasons=tuple(reasons), notes=tuple(notes),
        depth_constant=constant, laziness=None, evidence=tuple(evidence),
    )
    return with_laziness(report, measured)


def with_laziness(report: AuditReport, measured: LazinessMeasurement | None) -> AuditReport:
    """The report relabelled by a laziness measurement: "lazy" only when measured lazy;
    a large-scale network that moved stays "large-scale" with the evidence. Sets the
    regime reason first and ``in_scope``."""
    regime: Regime = report.regime
    evidence = list(report.evidence)
    if measured is not None:
        evidence.append(measured.describe())
        if measured.lazy and regime in ("mean-field", "large-scale"):
            regime = "lazy"
        elif regime == "large-scale":
            evidence.append("not lazy: the particles moved or the loss did not halve")
    reasons = [r for r in report.reasons if r not in _REASONS.values()]
    if regime in _REASONS:
        reasons.insert(0, _REASONS[regime])
    return dataclasses.replace(report, regime=regime, in_scope=not reasons, reasons=tuple(reasons),
                               laziness=measured, evidence=tuple(evidence))
