"""Joint allocation of weight and activation bit widths, and allocation proven by
equivalence checking (docs/quantization.md, "Activation quantization").

:func:`descend_jointly` is :func:`~.allocate.choose_bitwidths` with ``activations=B``
and/or ``certifier="equivalence"``. The decision variables are the width of every
quantized layer's weights (``candidates``) and, with ``activations``, the width of every
activation quantizer (``activation_candidates``, at most ``B``; a max-pooling quantizer
shares its input's grid and is not a variable). The model is BatchNorm-folded first; the
activation ranges come from ``calibration`` (clipping certified) or else from the bounds
tier over the domain (float folded model, once; clipping of the quantized model past
them is certified too).

A configuration is *accepted* when

* ``certifier="bounds"`` (or another worst-case tier): :func:`certcompress.certify` with
  the path-metric tier and that tier over the domain bounds it by ``budget``;
* ``certifier="equivalence"``: :func:`certcompress.equivalence.verify_equivalence`
  proves ``||f(x) - f_q(x)||_1 <= epsilon`` on the whole domain (l1 norm,
  branch-and-bound, ``timeout`` seconds); a falsified *or unknown* verdict is not
  accepted.

Search: the narrowest uniform configuration (every weight layer at one candidate, every
activation at one candidate, both indices moving together from the narrowest) that is
accepted; then one variable at a time is lowered by one candidate step, largest saving
first (weights: ``numel x step``; activations: ``elements x step``), while the result is
accepted, until no single step is: the result is locally minimal for the certifier. The
returned allocation's certificate is :func:`certcompress.certify`'s of the final model
(for ``equivalence`` its bound can exceed ``epsilon``; the proof is recorded in its
notes and in :attr:`~.allocate.BitAllocation.equivalence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from ...api import certify
from ...certificate import Certificate
from ...domain import InputDomain
from ...equivalence.verify import verify_equivalence
from ...errors import ConfigurationError
from .activations import (
    ActivationPlan,
    activation_ranges,
    add_kernel_slack,
    bounds_ranges,
    fold_batchnorm,
    insert_quantizers,
    quantizers_of,
    set_ranges,
)
from .config import QuantConfig
from .grid import quantization_grid
from .quantizers import affine_layers

__all__ = ["JointChoice", "descend_jointly"]


@dataclass(frozen=True)
class JointChoice:
    """The result of :func:`descend_jointly`: the configuration, the BatchNorm-folded
    float model with disabled quantizers (``original``) and the quantized one
    (``model``), the certificate, the activation widths, the equivalence proof (or None),
    the number of configurations tried and whether it is locally minimal."""

    config: QuantConfig
    original: nn.Module
    model: nn.Module
    certificate: Certificate
    activation_bits: dict[str, int]
    equivalence: Any
    tries: int
    locally_minimal: bool


def _check_act_candidates(activations: int, act_cands: Sequence[int] | None) -> list[int]:
    if isinstance(activations, bool) or not isinstance(activations, int) \
            or not 2 <= activations <= 8:
        raise ConfigurationError(f"activations must be an integer number of bits in [2, 8], "
                                 f"got {activations!r}")
    cands = sorted(set(act_cands)) if act_cands is not None else \
        list(range(max(2, activations - 4), activations + 1))
    if not cands or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= activations
                        for b in cands):
        raise ConfigurationError(f"activation_candidates must be integers in [2, "
                                 f"{activations}] (activations={activations}), got {act_cands!r}")
    return cands


def descend_jointly(model: nn.Module, *, budget: float, domain: InputDomain,
                    candidates: Sequence[int], granularity: str, bias_bits: int | None,
                    layers: Sequence[str] | None, activations: int | None,
                    activation_candidates: Sequence[int] | None, calibration: Tensor | None,
                    certifier: str, timeout: float, reference_inputs: Tensor | None,
                    search_steps: int, search_restarts: int, seed: int) -> JointChoice:
    """The search of the module docstring (``budget`` is ``epsilon`` for the equivalence
    certifier)."""
    if not isinstance(domain, InputDomain):
        raise ConfigurationError("joint allocation needs domain=InputDomain.box(...)")
    wc = sorted(set(int(c) for c in candidates))
    folded = fold_batchnorm(model)
    names = list(affine_layers(folded)) if layers is None else \
        [n for n in layers if n in affine_layers(folded)]
    if not names:
        raise ConfigurationError(f"{type(model).__name__} has no layer to quantize")
    ac = _check_act_candidates(activations, activation_candidates) \
        if activations is not None else []
    plan: ActivationPlan | None = None
    ranges: dict[str, tuple[float, float]] = {}
    acts: list[str] = []
    elements: dict[str, int] = {}
    if activations is not None:
        orig0, plan = insert_quantizers(folded, max(ac))
        if calibration is not None:
            ranges = activation_ranges(orig0, calibration.detach().float())
        else:
            comp0, _ = insert_quantizers(folded, max(ac))
            ranges = bounds_ranges(orig0, comp0, domain)
        acts = [n for n in quantizers_of(orig0) if n not in plan.shares]
        sizes: dict[str, int] = {}
        hooks = [m.register_forward_pre_hook(
            lambda mod, a, n=n: sizes.__setitem__(n, int(a[0][0].numel())))
            for n, m in quantizers_of(orig0).items()]
        orig0(domain.lower_tensor().float().reshape(domain.shape))
        for h in hooks:
            h.remove()
        elements = {n: sizes[n] for n in acts}
    numel: dict[str, int] = {}
    for n in names:
        w = folded.get_submodule(n).weight
        assert isinstance(w, Tensor)
        numel[n] = int(w.numel())
    tries = 0

    def build(wbits: dict[str, int], abits: dict[str, int]
              ) -> tuple[QuantConfig, nn.Module, nn.Module]:
        cfg = QuantConfig.from_bits(wbits, granularity, bias_bits=bias_bits)
        grid = quantization_grid(folded, cfg)
        wq = grid.apply(folded)
        if plan is None:
            return cfg, folded, wq
        orig, _ = insert_quantizers(folded, max(ac))
        comp, _ = insert_quantizers(wq, max(ac))
        set_ranges(orig, plan, ranges, {**abits, **dict.fromkeys(plan.shares, max(ac))},
                   enabled=False)
        set_ranges(comp, plan, ranges, {**abits, **dict.fromkeys(plan.shares, max(ac))})
        add_kernel_slack(comp, {q.param: float(q.scale.max()) for q in grid.tensors.values()})
        return cfg, orig, comp

    def accepted(wbits: dict[str, int], abits: dict[str, int]) -> tuple[bool, Any]:
        nonlocal tries
        tries += 1
        _, orig, comp = build(wbits, abits)
        if certifier == "equivalence":
            # input splitting, as search_sparsity (docs/equivalence.md, "ReLU splitting")
            res = verify_equivalence(orig, comp, domain, epsilon=budget, norm="l1",
                                     timeout=timeout, seed=seed, split="input")
            return res.status == "verified", res
        cert = certify(orig, comp, domain=domain, methods=("path-metric", certifier),
                       search_steps=0, seed=seed)
        return cert.bound <= budget, None

    # narrowest accepted uniform start
    n_steps = max(len(wc), len(ac))
    start: tuple[dict[str, int], dict[str, int], Any] | None = None
    for k in range(n_steps):
        wb = dict.fromkeys(names, wc[min(k, len(wc) - 1)])
        ab = dict.fromkeys(acts, ac[min(k, len(ac) - 1)]) if ac else {}
        ok, proof = accepted(wb, ab)
        if ok:
            start = (wb, ab, proof)
            break
    if start is None:
        what = "proven by verify_equivalence" if certifier == "equivalence" else \
            f"certified within {budget:.6g}"
        raise ConfigurationError(
            f"no configuration is {what} even at the widest candidates (weights "
            f"{wc[-1]} bits" + (f", activations {ac[-1]} bits" if ac else "") + "): raise the "
            "budget" + (" or the timeout (an unknown verdict counts as not proven)"
                        if certifier == "equivalence" else ""))
    wbits, abits, proof = start
    moves: list[tuple[int, str, str]] = [(numel[n], "w", n) for n in names] + \
        [(elements[n], "a", n) for n in acts]

    def saving(m: tuple[int, str, str]) -> int:  # largest first
        return -m[0] * _step(wc if m[1] == "w" else ac, (wbits if m[1] == "w" else abits)[m[2]])

    improved = True
    while improved:
        improved = False
        for _, kind, name in sorted(moves, key=saving):
            cur, cands = (wbits, wc) if kind == "w" else (abits, ac)
            i = cands.index(cur[name])
            if i == 0:
                continue
            trial = {**cur, name: cands[i - 1]}
            ok, res = accepted(trial, abits) if kind == "w" else accepted(wbits, trial)
            if ok:
                if kind == "w":
                    wbits = trial
                else:
                    abits = trial
                proof, improved = res, True
                break
    cfg, orig, comp = build(wbits, abits)
    cert = certify(orig, comp, domain=domain, reference_inputs=reference_inputs,
                   search_steps=search_steps, search_restarts=search_restarts, seed=seed,
                   methods=("path-metric", "bounds") if certifier == "equivalence" else
                   ("path-metric", certifier))
    if certifier == "equivalence":
        cert = replace(cert, notes=tuple(cert.notes) + (
            f"proven by verify_equivalence: ||f(x) - f_q(x)||_1 <= {proof.bound:.6g} <= "
            f"epsilon {budget:.6g} on the whole domain (branch-and-bound, "
            f"{proof.regions} regions)",))
    elif not cert.bound <= budget:
        raise RuntimeError(f"internal error: the chosen allocation certifies {cert.bound:.17g}"
                           f" > budget {budget:.17g}; please report it")
    return JointChoice(config=cfg, original=orig, model=comp, certificate=cert,
                       activation_bits=dict(abits), equivalence=proof, tries=tries,
                       locally_minimal=True)


def _step(cands: list[int], b: int) -> int:
    i = cands.index(b)
    return b - cands[i - 1] if i > 0 else 0
