"""Linear forms of the pair for back-substitution (docs/bounds.md).

A *form* at node ``v`` is ``<L_z, z_v> + <L_d, d_v> + const``: ``z`` is the original
network's value, ``d = z - c`` the difference to the compressed network's value ``c``
(a form of the compressed network alone is ``L_z = L``, ``L_d = -L``). Each ``L`` has a
leading row dimension (one form per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .interval import PairBounds

__all__ = ["Form", "dot", "box_max", "concretize", "take"]


@dataclass
class Form:
    """Coefficients ``coef[q]`` (``q`` in ``z``, ``d``) of shape ``(R, *shape)`` and a
    constant ``(R,)``."""

    coef: dict[str, Tensor]
    const: Tensor

    def add(self, q: str, t: Tensor | None) -> None:
        if t is not None:
            self.coef[q] = self.coef[q] + t if q in self.coef else t


def dot(coef: Tensor, t: Tensor) -> Tensor:
    """``<coef[r], t>`` per row; ``t`` is ``shape`` or ``(R or 1, *shape)``."""
    return (coef * t).reshape(coef.shape[0], -1).sum(1)


def box_max(coef: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``max <coef[r], t>`` over ``lo <= t <= hi`` per row."""
    return dot(coef.clamp(min=0), hi) + dot(coef.clamp(max=0), lo)


def concretize(form: Form, b: PairBounds, prob: Tensor | None) -> Tensor:
    """Upper bound ``(R,)`` of ``form`` (at a node with interval bounds ``b``) over those
    intervals: the smaller of the ``(z, d)`` and the ``(c, d)`` readings."""
    def rows(t: Tensor) -> Tensor:
        return t if prob is None else t[prob]

    lz, ld = form.coef.get("z"), form.coef.get("d")
    zl, zu, cl, cu, dl, du = (rows(t) for t in (b.zl, b.zu, b.cl, b.cu, b.dl, b.du))
    v1 = form.const + (0 if lz is None else box_max(lz, zl, zu)) + \
        (0 if ld is None else box_max(ld, dl, du))
    if lz is None:
        return v1
    ld2 = lz if ld is None else lz + ld
    v2 = form.const + box_max(lz, cl, cu) + box_max(ld2, dl, du)
    return torch.minimum(v1, v2)


def take(pending: dict[int, Form], j: int, const: Tensor | None) -> Form:
    """The form accumulating at node ``j`` (created on first use); ``const`` is moved
    into it (each form's constant travels down to the input exactly once)."""
    f = pending.get(j)
    if f is None:
        f = Form({}, torch.zeros((), dtype=torch.float64) if const is None else const)
        pending[j] = f
    elif const is not None:
        f.const = f.const + const
    return f
