"""Re-check an embedded certificate by recomputation (``verify_onnx(recertify=True)``).

Digests show that a file is unchanged since someone computed them; they do not show
that its certificate is true. Recertification does, without trusting the file: the
compressed network is rebuilt as the original's architecture (the ``original`` module
the verifier trusts) holding the file's own weights (every initializer by name, and
the weights onnxruntime computes from ``DequantizeLinear`` nodes), and each tier the
certificate states (:mod:`certcompress.bounds.tiers`) is computed again, in float64 as
the certificate states, over the certificate's domain, by the tier's own
:meth:`~certcompress.bounds.tierbase.Tier.recheck`:

- ``path-metric``: ``max(radius, 1) * path-metric`` of the two traced graphs;
- ``bounds``: differential bound propagation over the domain's box, with the
  ``intermediate`` mode and the optimized-slope settings (``slope_steps``, ``slope_lr``)
  the tier records;
- ``bab``: its bound depends on the search's budget, so it is not recomputed but
  proven: a stated bound at least the one-pass bound stands, a smaller one must be
  proven by a branch-and-bound run with the stated bound as its target (a deterministic
  region budget, :meth:`~certcompress.equivalence.tier.BabTier.recheck`).

A recomputed bound (a tier's l1 bound and its per-output bounds, the certificate's bound
and per-output bounds, the path-metric) must equal the stated one within a relative
``RECERTIFY_RTOL`` (1e-9, far above float64 reordering, far below any meaningful edit)
plus ``1e-12``: a smaller stated bound is a false certificate; a larger or merely
different one is not what this file's weights give. The certificate's bound must be the
minimum over its worst-case tiers of the values each tier's check accepted. The file's weights must also have
the certificate's compressed parameter digest, and what the certificate derives from its
own numbers must follow (radius and domain, the factor ``max(radius, 1)``, ``vacuous``
against the measured output scale). The measurements themselves (deviations on the
certifier's reference inputs, the search) are data, not claims that can be recomputed
without those inputs; the ``bound`` check of :mod:`.verify` measures afresh. A file whose weights do not fit the
original's architecture (a physically smaller, structured-pruned export) cannot be
recertified this way and fails the check with that reason.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from torch import nn

from ..bounds.arithmetic import float32_error
from ..bounds.tierbase import RECERTIFY_RTOL, compare_values, differs
from ..bounds.tiers import GraphPair, tier_registry
from ..capture import trace
from ..certificate import WORST_CASE, Certificate
from ..digest import parameter_digest
from ..domain import InputDomain
from .qdq import dequantized_weights

__all__ = ["recertify", "RECERTIFY_RTOL"]

def file_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weights the runtime computes with, by name: initializers, and the outputs of
    ``DequantizeLinear`` nodes on initializers (computed by onnxruntime)."""
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights.update(dequantized_weights(model))
    return weights


def rebuild(original: nn.Module, weights: Mapping[str, np.ndarray]) -> nn.Module:
    """A copy of ``original`` holding ``weights`` (every floating parameter and buffer by
    name and shape, same dtype); raises ValueError naming what does not fit."""
    rebuilt = copy.deepcopy(original).eval()
    state = rebuilt.state_dict()
    missing, shapes = [], []
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        w = weights.get(name)
        if w is None:
            missing.append(name)
        elif tuple(w.shape) != tuple(t.shape):
            shapes.append(f"{name}: file {tuple(w.shape)}, original {tuple(t.shape)}")
        else:
            state[name] = torch.from_numpy(np.array(w)).to(t.dtype)
    if missing or shapes:
        parts = ([f"no weight named {', '.join(missing[:3])}"] if missing else []) + \
                ([f"other shapes ({'; '.join(shapes[:3])})"] if shapes else [])
        raise ValueError("the file's weights do not fit the original's architecture: "
                         + ", ".join(parts) + " (a physically smaller, structured-pruned "
                         "export cannot be recertified against the original)")
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt


def _consistency(cert: Certificate, problems: list[str]) -> None:
    """What the certificate derives from its own numbers must follow from them."""
    if cert.input_domain is not None and differs(cert.input_domain.radius, cert.radius):
        problems.append(f"the radius {cert.radius:.10g} is not the domain's "
                        f"{cert.input_domain.radius:.10g}")
    if cert.input_domain is not None and \
            tuple(cert.input_domain.shape) != tuple(cert.input_shape):
        problems.append(f"the input shape {tuple(cert.input_shape)} is not the domain's "
                        f"{tuple(cert.input_domain.shape)}")
    compare_values("factor max(radius, 1)", cert.factor, max(cert.radius, 1.0), problems)
    pm = cert.path_metric_details
    if pm is not None:
        pm_tier = cert.by_method["path-metric"]
        compare_values("path-metric tier bound factor x path-metric",
                       pm_tier.details.get("bound_exact", pm_tier.bound),
                       pm.factor * pm.path_metric, problems)
    scale = cert.measurements.output_scale
    if scale is not None and cert.vacuous != (cert.bound > scale):
        problems.append(f"'vacuous' is {cert.vacuous}, but the bound {cert.bound:.6g} is "
                        f"{'above' if cert.bound > scale else 'within'} the measured output "
                        f"scale {scale:.6g}")


def recertify(cert: Certificate, original: nn.Module, model: onnx.ModelProto,
              export_info: Mapping[str, object] | None = None) -> tuple[bool, str, float]:
    """Recompute ``cert``'s tiers from ``original`` and ``model``'s own weights; returns
    ``(ok, detail, recomputed bound)``. ``export_info`` (the file's export record), when
    given, must name the same weights as exported. Raises ValueError when the file
    cannot be rebuilt in the original's architecture."""
    rebuilt = rebuild(original, file_weights(model))
    problems: list[str] = []
    digest = parameter_digest(rebuilt)
    if digest != cert.compressed_digest:
        problems.append("the file's weights are not the certified weights (their parameter "
                        "digest is not the certificate's compressed digest)")
    if export_info is not None and export_info.get("exported_digest") != digest:
        problems.append("the export record's exported digest is not the file's weights'")
    _consistency(cert, problems)
    shape = tuple(cert.input_shape)
    g, g2 = trace(original, shape), trace(rebuilt, shape)
    domain = cert.input_domain or InputDomain.box(-cert.radius, cert.radius, shape=shape)
    tiers = {}
    pair = GraphPair(g, g2)
    registry = tier_registry()
    err = None
    if cert.arithmetic == "float32":  # the models as executed in float32 (both roundings)
        err = float32_error(trace(original, shape, fold_bn=False),
                            trace(rebuilt, shape, fold_bn=False), domain, model=original,
                            compressed=rebuilt)
    for name, stated in cert.by_method.items():
        if name not in registry:
            problems.append(f"tier '{name}' is not one certcompress computes (not in the tier "
                            f"registry: {', '.join(registry.names())})")
            continue
        tier, tier_problems = registry.get(name).recheck(pair, domain, stated, err)
        tiers[name] = tier
        problems.extend(tier_problems)
    if cert.path_metric is not None:  # the path-metric tier ran: its value, recomputed
        compare_values("path-metric", cert.path_metric, pair.path_metric.value, problems)
    same = [t for t in tiers.values() if t.sound and t.scope == WORST_CASE]
    if not same:
        problems.append("the certificate states no worst-case tier to recompute")
        return False, "; ".join(problems), float("nan")
    bound = min(t.bound for t in same)
    per = tuple(min(vs) for vs in zip(*(t.per_output for t in same)))
    compare_values("certified bound", cert.bound, bound, problems)
    compare_values("certified per-output bound", cert.per_output, per, problems)
    names = ", ".join(sorted(tiers))
    if problems:
        return False, f"recomputed from the original and the file's weights ({names}): " \
                      + "; ".join(problems), bound
    return True, (f"tiers {names} re-checked from the original and the file's weights in "
                  f"float64 ({cert.arithmetic} arithmetic): bound {bound:.6g} equals the "
                  f"stated {cert.bound:.6g} (relative {RECERTIFY_RTOL:g})"), bound
