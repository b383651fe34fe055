"""The per-kind rules of the primitive pair network: one :class:`Rule` per primitive kind,
each owning everything the passes need from it (docs/bounds.md).

=============  ===============================================================
method         used by
=============  ===============================================================
``interval``   the forward pass (``engine.propagate``): bounds on ``z``, ``c`` and
               ``d = z - c`` at the node from the bounds at its inputs
``magnitude``  the forward pass: the same sums on absolute values (the rounding
               margin is proportional to it)
``relaxation`` the forward pass: the data a back-substitution needs at the node
               (ReLU chords and slopes), None for a node that is exact
``evaluate``   ``evaluate.evaluate_pair``: the concrete values of both networks
``backward``   back-substitution (``crown.backsubstitute``): the form at the node's
               output rewritten as forms at its inputs (or, at the input, maximized
               over the box)
``dense``      the chain pass (``certcompress.equivalence.chain``): the node as dense
               matrices ``(W, b, W', b')``, or None when it is not one affine map
=============  ===============================================================

The passes are interpreters: they walk the nodes in order and dispatch on
:func:`rules_for`, which looks the node's class up in :data:`RULES` (along its MRO) and
refuses a pair with every node that has no rule listed. A new primitive kind is one
:class:`Rule` subclass and one :func:`register_rule` call.

The rules themselves:

* input: ``z = c = x`` in the box, ``d = 0``; its bounds and values are seeded by the
  passes from the box (or the inputs), and back-substitution ends there:
  ``const + <L_z, mid> + <|L_z|, rad>``;
* affine: center/radius form, ``z``: ``W m + b`` and ``|W| r``; the difference in both
  exact forms ``W z - W' c + (b - b') = W' d + (W - W') z + db = W d + (W - W') c + db``,
  intersected (the ReluDiff idea: ``d`` is propagated, not recomputed from ``z`` and
  ``c``); backward ``L_z -> W^T L_z + (W - W')^T L_d`` and ``L_d -> W'^T L_d`` (exact;
  transposes are vector-Jacobian products);
* select ``sum_i w_i x_i`` over ``k`` stacked tensors, weights ``w`` in the original and
  ``w'`` in the compressed network: the affine rule without a bias (its weights are a
  vector over the stacked dimension; backward ``w_i L`` into slot ``i``);
* fixed linear map ``L``: ``L m + const`` and ``|L| r``; ``d`` without the constant; a
  max-pooling level is intersected with its group's envelope; backward ``L^T`` on both,
  the constant on ``z`` only;
* ReLU: monotone on ``z`` and ``c``; ``d' = ReLU(z) - ReLU(c)`` lies between
  ``min(d, 0)`` and ``max(d, 0)`` and in ``[ReLU(l_z) - ReLU(u_c), ReLU(u_z) -
  ReLU(l_c)]``, and equals ``d`` where both are active; backward through the relaxation
  of :mod:`.relax`;
* bounded perturbation ``z + e_z``, ``c + e_c`` with ``|e_z| <= delta_z``, ``|e_c| <=
  delta_c`` (an activation quantizer's rounding): ``z`` and ``c`` widened by their delta,
  ``d = z - c`` by the sum; backward: the form passes through and its constant gains the
  maximum over ``e`` of ``(L_z + L_d) e_z - L_d e_c``, i.e. ``<|L_z + L_d|, delta_z> +
  <|L_d|, delta_c>``; with ``near_zero`` (a quantizer whose grid contains 0) ``delta`` is
  per element and per input box, ``min(delta, max(|l|, |u|) + near_zero)`` from the
  input's bounds (docs/quantization.md, "Per-element rounding bound").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

from ...errors import RefusalKind, UnsupportedModelError, UnsupportedNode
from .form import Form, dot, take
from .interval import Magnitude, PairBounds, relu_interval
from .primitives import PAffine, PairNet, PInput, PLinear, PNode, PPerturb, PReLU, PSelect
from .relax import (
    PerturbRelaxation,
    Relaxation,
    ReluRelaxation,
    perturb_deltas,
    relax_relu,
    relu_backward,
)

__all__ = ["Rule", "InputRule", "AffineRule", "SelectRule", "LinearRule", "ReLURule",
           "PerturbRule", "RULES", "register_rule", "rules_for", "Backward", "SplitParams",
           "DenseMaps"]

SplitParams = Mapping[int, Mapping[str, Tensor]]  # node -> {"theta", "alpha_z", "alpha_c"}
DenseMaps = tuple[Tensor, Tensor, Tensor, Tensor]  # (W, b, W', b'), (out, in) matrices

N = TypeVar("N", bound=PNode)


@dataclass
class Backward:
    """What a backward step needs besides its node and form: the forms pending at
    earlier nodes, the relaxations, the input boxes ``(P, *input_shape)``, the row's
    problem ``prob[r]`` (None: one box) and optional per-row split parameters."""

    pending: dict[int, Form]
    relax: Mapping[int, Relaxation]
    lower: Tensor
    upper: Tensor
    prob: Tensor | None
    params: SplitParams | None = None

    def take(self, j: int, const: Tensor | None) -> Form:
        """The form accumulating at node ``j``, ``const`` moved into it."""
        return take(self.pending, j, const)


def _mid_rad(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    return (lo + hi) * 0.5, (hi - lo) * 0.5


def _dense(fn_apply: Callable[[Tensor], Tensor], in_shape: tuple[int, ...],
           n_in: int) -> Tensor:
    """The ``(out, in)`` matrix of a linear map (applied to the standard basis)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + in_shape)
    out = fn_apply(eye)
    return out.reshape(n_in, -1).T.contiguous()


def _two_weight_interval(node: PAffine | PSelect, b: PairBounds,
                         bias: tuple[Tensor, Tensor, Tensor] | None) -> PairBounds:
    """Interval bounds at a node that applies the weights ``w`` in the original network
    and ``w'`` in the compressed one (an affine or a select node), plus the biases
    ``(b, b', b - b')`` when given, from the bounds ``b`` at its input: center/radius form
    on ``z`` and ``c``, and on ``d`` both exact difference forms, intersected."""

    def plus(t: Tensor, c: Tensor | None) -> Tensor:
        return t if c is None else t + c

    bz, bc, db = (None, None, None) if bias is None else bias
    mz, rz = _mid_rad(b.zl, b.zu)
    mc, rc = _mid_rad(b.cl, b.cu)
    md, rd = _mid_rad(b.dl, b.du)
    # each weight is read once and used for all its products (a PAffine may compute it
    # where read: docs/bounds.md "Compact graph parameters"); the sums are as before
    w = node.w
    ez, wd = plus(node.apply(mz, w), bz), node.apply(md, w)
    del w
    w_abs = node.w_abs
    fz, wrd = node.apply(rz, w_abs), node.apply(rd, w_abs)
    del w_abs
    if not node.changed:
        wc = node.wc
        ec = plus(node.apply(mc, wc), bc)
        del wc
        fc = node.apply(rc, node.wc_abs)
        return PairBounds(ez - fz, ez + fz, ec - fc, ec + fc, wd - wrd, wd + wrd)
    wc = node.wc
    ec, wcd = plus(node.apply(mc, wc), bc), node.apply(md, wc)
    del wc
    wc_abs = node.wc_abs
    fc, wcrd = node.apply(rc, wc_abs), node.apply(rd, wc_abs)
    del wc_abs
    dw = node.dw
    dwz, dwc = node.apply(mz, dw), node.apply(mc, dw)
    del dw
    dw_abs = node.dw_abs
    dwrz, dwrc = node.apply(rz, dw_abs), node.apply(rc, dw_abs)
    del dw_abs
    # d' = W' d + dW z + db
    e1 = plus(wcd + dwz, db)
    f1 = wcrd + dwrz
    # d' = W d + dW c + db
    e2 = plus(wd + dwc, db)
    f2 = wrd + dwrc
    return PairBounds(ez - fz, ez + fz, ec - fc, ec + fc,
                      torch.maximum(e1 - f1, e2 - f2), torch.minimum(e1 + f1, e2 + f2))


class Rule(Generic[N]):
    """The rules of one primitive kind. Subclasses implement every method that applies
    to their kind; the defaults refuse (naming the kind and the method) or say "exact"
    (no relaxation). Which earlier bounds a relaxation reads is the node's
``relaxed_inputs`` (they are tightened by back-substitution first)."""

    kind: type[PNode] = PNode
    is_input: bool = False

    def _missing(self, what: str) -> TypeError:
        return TypeError(f"the {type(self).__name__} rule of {self.kind.__name__} nodes has "
                         f"no {what}")

    def interval(self, node: N, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        """Interval bounds at ``node`` from those at its inputs (``earlier``: every
        earlier node's bounds)."""
        raise self._missing("interval rule")

    def magnitude(self, node: N, inputs: Sequence[Magnitude]) -> Magnitude:
        """``|z|`` and ``|c|`` bounds from the same sums on absolute values."""
        raise self._missing("magnitude rule")

    def relaxation(self, node: N, earlier: Sequence[PairBounds]) -> Relaxation | None:
        """The node's relaxation from its inputs' (final) bounds; None when exact."""
        return None

    def evaluate(self, node: N, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        """The values of both networks at ``node`` from every earlier node's values."""
        raise self._missing("evaluation rule")

    def backward(self, node: N, index: int, form: Form, ctx: Backward) -> Tensor | None:
        """Rewrite ``form`` (at ``node``'s output) as forms at its inputs, in
        ``ctx.pending``; at the input, return the form's maximum over the box instead."""
        raise self._missing("back-substitution rule")

    def dense(self, node: N, n_in: int) -> DenseMaps | None:
        """The node as dense ``(W, b, W', b')`` over one input, or None."""
        return None


class InputRule(Rule[PInput]):
    """The network input: ``z = c = x``, ``d = 0``."""

    kind = PInput
    is_input = True

    def interval(self, node: PInput, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        raise TypeError("the input's bounds come from its box (interval.input_bounds)")

    def magnitude(self, node: PInput, inputs: Sequence[Magnitude]) -> Magnitude:
        raise TypeError("the input's magnitude comes from its box")

    def evaluate(self, node: PInput, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        raise TypeError("the input's values are the inputs themselves")

    def backward(self, node: PInput, index: int, form: Form, ctx: Backward) -> Tensor:
        value = form.const
        lx = form.coef.get("z")
        if lx is not None:
            mid = (ctx.lower + ctx.upper) * 0.5
            rad = (ctx.upper - ctx.lower) * 0.5
            if ctx.prob is not None:
                mid, rad = mid[ctx.prob], rad[ctx.prob]
            value = value + dot(lx, mid) + dot(lx.abs(), rad)
        return value


class AffineRule(Rule[PAffine]):
    """A parametric node: ``W z + b`` in the original, ``W' c + b'`` in the compressed."""

    kind = PAffine

    def interval(self, node: PAffine, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        return _two_weight_interval(node, inputs[0], (node.bias, node.bias_c, node.dbias))

    def magnitude(self, node: PAffine, inputs: Sequence[Magnitude]) -> Magnitude:
        m = inputs[0]
        return Magnitude(node.apply(m.mz, node.w_abs) + node.bias.abs(),
                         node.apply(m.mc, node.wc_abs) + node.bias_c.abs())

    def evaluate(self, node: PAffine, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        j = node.inputs[0]
        return (node.apply(zs[j], node.w) + node.bias,
                node.apply(cs[j], node.wc) + node.bias_c)

    def backward(self, node: PAffine, index: int, form: Form, ctx: Backward) -> None:
        out = ctx.take(node.inputs[0], form.const)
        lz, ld = form.coef.get("z"), form.coef.get("d")
        if lz is not None:
            out.add("z", node.t_w(lz)[0])
            out.const = out.const + dot(lz, node.bias)
        if ld is not None:
            if node.changed:
                out.add("d", node.t_wc(ld)[0])
                out.add("z", node.t_dw(ld)[0])
                out.const = out.const + dot(ld, node.dbias)
            else:
                out.add("d", node.t_w(ld)[0])

    def dense(self, node: PAffine, n_in: int) -> DenseMaps:
        w = _dense(lambda e: node.apply(e, node.w), node.in_shape, n_in)
        wc = _dense(lambda e: node.apply(e, node.wc), node.in_shape, n_in)
        return w, node.bias.reshape(-1).clone(), wc, node.bias_c.reshape(-1).clone()


class SelectRule(Rule[PSelect]):
    """``sum_i w_i x_i`` in the original, ``sum_i w'_i x_i`` in the compressed network,
    over the ``k`` tensors stacked in its input (no bias)."""

    kind = PSelect

    def interval(self, node: PSelect, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        return _two_weight_interval(node, inputs[0], None)

    def magnitude(self, node: PSelect, inputs: Sequence[Magnitude]) -> Magnitude:
        m = inputs[0]
        return Magnitude(node.apply(m.mz, node.w_abs), node.apply(m.mc, node.wc_abs))

    def evaluate(self, node: PSelect, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        j = node.inputs[0]
        return node.apply(zs[j], node.w), node.apply(cs[j], node.wc)

    def backward(self, node: PSelect, index: int, form: Form, ctx: Backward) -> None:
        out = ctx.take(node.inputs[0], form.const)
        lz, ld = form.coef.get("z"), form.coef.get("d")
        if lz is not None:
            out.add("z", node.transpose(lz, node.w))
        if ld is not None:
            if node.changed:
                out.add("d", node.transpose(ld, node.wc))
                out.add("z", node.transpose(ld, node.dw))
            else:
                out.add("d", node.transpose(ld, node.w))

    def dense(self, node: PSelect, n_in: int) -> DenseMaps:
        w = _dense(lambda e: node.apply(e, node.w), node.in_shape, n_in)
        wc = _dense(lambda e: node.apply(e, node.wc), node.in_shape, n_in)
        zeros = torch.zeros(node.numel, dtype=torch.float64)
        return w, zeros, wc, zeros.clone()


class LinearRule(Rule[PLinear]):
    """A fixed map ``L(x_1, ..., x_k) + const``, the same in both networks."""

    kind = PLinear

    def interval(self, node: PLinear, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        parts = []
        for lo_name, hi_name, const in (("zl", "zu", True), ("cl", "cu", True),
                                        ("dl", "du", False)):
            mids, rads = zip(*(_mid_rad(getattr(b, lo_name), getattr(b, hi_name))
                               for b in inputs))
            e = node.apply(list(mids))
            if const and node.const is not None:
                e = e + node.const
            f = node.apply_abs(list(rads))
            parts.extend([e - f, e + f])
        out = PairBounds(*parts)
        if node.envelope is not None and earlier:
            out = self._envelope(out, earlier[node.envelope[0]], node.envelope[1])
        return out

    @staticmethod
    def _envelope(b: PairBounds, src: PairBounds, groups: Tensor) -> PairBounds:
        """Intersect with the bounds of a maximum over ``groups`` of ``src``'s elements:
        ``max_g l <= max <= max_g u`` for ``z`` and ``c``, and ``max z - max c`` between
        the group's smallest and largest difference."""
        P = src.zl.shape[0]
        flat = groups.reshape(-1)

        def g(t: Tensor) -> Tensor:
            return t.reshape(P, -1)[:, flat].reshape((P,) + tuple(groups.shape))

        env = PairBounds(g(src.zl).amax(-1), g(src.zu).amax(-1), g(src.cl).amax(-1),
                         g(src.cu).amax(-1), g(src.dl).amin(-1), g(src.du).amax(-1))
        return b.intersect(env)

    def magnitude(self, node: PLinear, inputs: Sequence[Magnitude]) -> Magnitude:
        c = 0.0 if node.const is None else node.const.abs()
        return Magnitude(node.apply_abs([m.mz for m in inputs]) + c,
                         node.apply_abs([m.mc for m in inputs]) + c)

    def evaluate(self, node: PLinear, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        z = node.apply([zs[j] for j in node.inputs])
        c = node.apply([cs[j] for j in node.inputs])
        if node.const is not None:
            z, c = z + node.const, c + node.const
        return z, c

    def backward(self, node: PLinear, index: int, form: Form, ctx: Backward) -> None:
        outs = [ctx.take(j, None) for j in node.inputs]
        const = form.const
        for q, lam in form.coef.items():
            for o, part in zip(outs, node.transpose(lam)):
                o.add(q, part)
            if q == "z" and node.const is not None:
                const = const + dot(lam, node.const_out())
        outs[0].const = outs[0].const + const

    def dense(self, node: PLinear, n_in: int) -> DenseMaps | None:
        if node.envelope is not None or len(node.inputs) != 1:
            return None
        w = _dense(lambda e: node.apply([e]), node.in_shapes[0], n_in)
        b = node.const_out().reshape(-1).clone()
        return w, b, w, b


class ReLURule(Rule[PReLU]):
    """``max(., 0)`` element-wise on both networks."""

    kind = PReLU

    def interval(self, node: PReLU, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        return relu_interval(inputs[0])

    def magnitude(self, node: PReLU, inputs: Sequence[Magnitude]) -> Magnitude:
        return inputs[0]

    def relaxation(self, node: PReLU, earlier: Sequence[PairBounds]) -> ReluRelaxation:
        return relax_relu(earlier[node.inputs[0]])

    def evaluate(self, node: PReLU, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        j = node.inputs[0]
        return zs[j].clamp(min=0), cs[j].clamp(min=0)

    def backward(self, node: PReLU, index: int, form: Form, ctx: Backward) -> None:
        out = ctx.take(node.inputs[0], form.const)
        p = None if ctx.params is None else ctx.params.get(index)
        relaxation = ctx.relax[index]
        assert isinstance(relaxation, ReluRelaxation)
        cz, cd, const = relu_backward(
            relaxation, form.coef.get("z"), form.coef.get("d"), ctx.prob,
            None if p is None else p.get("theta"),
            None if p is None else p.get("alpha_z"),
            None if p is None else p.get("alpha_c"))
        out.add("z", cz)
        out.add("d", cd)
        out.const = out.const + const


class PerturbRule(Rule[PPerturb]):
    """``z + e_z`` and ``c + e_c`` for every ``|e_z| <= delta_z``, ``|e_c| <= delta_c``;
    with ``near_zero_*`` given, the bounds are per element and per input box,
    ``min(delta, max(|l|, |u|) + near_zero)`` from the input's bounds ``[l, u]`` in that
    network (:func:`.relax.perturb_deltas`)."""

    kind = PPerturb

    @staticmethod
    def _deltas(node: PPerturb, b: PairBounds) -> tuple[Tensor, Tensor]:
        return (perturb_deltas(node.delta_z, node.near_zero_z, b.zl, b.zu),
                perturb_deltas(node.delta_c, node.near_zero_c, b.cl, b.cu))

    def interval(self, node: PPerturb, inputs: Sequence[PairBounds],
                 earlier: Sequence[PairBounds]) -> PairBounds:
        b = inputs[0]
        ez, ec = self._deltas(node, b)
        return PairBounds(b.zl - ez, b.zu + ez, b.cl - ec, b.cu + ec, b.dl - (ez + ec),
                          b.du + (ez + ec))

    def magnitude(self, node: PPerturb, inputs: Sequence[Magnitude]) -> Magnitude:
        return Magnitude(inputs[0].mz + node.delta_z, inputs[0].mc + node.delta_c)

    def relaxation(self, node: PPerturb, earlier: Sequence[PairBounds]
                   ) -> PerturbRelaxation | None:
        if node.near_zero_z is None and node.near_zero_c is None:
            return None
        return PerturbRelaxation(*self._deltas(node, earlier[node.inputs[0]]))

    def evaluate(self, node: PPerturb, zs: Sequence[Tensor], cs: Sequence[Tensor]
                 ) -> tuple[Tensor, Tensor]:
        j = node.inputs[0]  # e = 0: one of the values the node allows
        return zs[j], cs[j]

    def backward(self, node: PPerturb, index: int, form: Form, ctx: Backward) -> None:
        # z_out = z + e_z, d_out = d + e_z - e_c: the form passes through and gains
        # max over e of (lz + ld) e_z - ld e_c = <|lz + ld|, delta_z> + <|ld|, delta_c>
        lz, ld = form.coef.get("z"), form.coef.get("d")
        const = form.const
        r = ctx.relax.get(index)
        if r is None:
            dz, dc = node.delta_z.expand(node.shape), node.delta_c.expand(node.shape)
        else:
            assert isinstance(r, PerturbRelaxation)
            dz = r.dz if ctx.prob is None else r.dz[ctx.prob]
            dc = r.dc if ctx.prob is None else r.dc[ctx.prob]
        lzd = lz if ld is None else (ld if lz is None else lz + ld)
        if lzd is not None:
            const = const + dot(lzd.abs(), dz)
        if ld is not None:
            const = const + dot(ld.abs(), dc)
        out = ctx.take(node.inputs[0], const)
        out.add("z", lz)
        out.add("d", ld)


RULES: dict[type[PNode], Rule[PNode]] = {}


def register_rule(rule: Rule[N]) -> None:
    """Make ``rule`` the rule of ``rule.kind`` nodes (and of their subclasses without a
    rule of their own)."""
    if not (isinstance(rule.kind, type) and issubclass(rule.kind, PNode)) \
            or rule.kind is PNode:
        raise TypeError(f"{type(rule).__name__}.kind must be a PNode subclass, got "
                        f"{rule.kind!r}")
    RULES[rule.kind] = rule  # type: ignore[assignment]


register_rule(InputRule())
register_rule(AffineRule())
register_rule(SelectRule())
register_rule(LinearRule())
register_rule(ReLURule())
register_rule(PerturbRule())


def _rule_of(node: PNode) -> Rule[PNode] | None:
    for cls in type(node).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule
    return None


def rules_for(pair: PairNet) -> tuple[Rule[PNode], ...]:
    """The rule of every node of ``pair``, in order; a pair with nodes of kinds that have
    no rule is refused with every such node listed."""
    rules = tuple(_rule_of(n) for n in pair.nodes)
    missing = [UnsupportedNode(n.source, type(n).__name__, n.source,
                               f"primitive kind {type(n).__name__} has no propagation rule",
                               kind=RefusalKind.NO_LOWERING, group=type(n).__name__)
               for n, r in zip(pair.nodes, rules) if r is None]
    if missing:
        raise UnsupportedModelError(
            f"the bound propagation has no rule for {len(missing)} primitive node(s) of "
            f"'{pair.model_name}' (known kinds: "
            f"{', '.join(sorted(k.__name__ for k in RULES))}); a lowering may only emit "
            "these, or register a Rule with certcompress.bounds.propagation.rules."
            "register_rule", missing)
    return rules  # type: ignore[return-value]
