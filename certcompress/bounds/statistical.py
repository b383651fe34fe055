"""Statistical certificates from held-out samples.

Given samples ``x_1..x_n`` drawn iid from a distribution ``D`` (and not used to choose
the compression), the deviations ``d_i = ||f(x_i) - f'(x_i)||_1`` (float64) are iid
draws of ``d(X)``, ``X ~ D``. The certificate makes up to four statements, each a
distribution-free confidence statement about ``D``:

1. ``threshold`` ``t`` (if given): ``P(d(X) > t) <= exceed_upper`` (one-sided
   Clopper-Pearson upper bound from the number of samples with ``d_i > t``);
2. ``quantile`` ``q``: ``P(d(X) > quantile_bound) <= 1 - q``, where ``quantile_bound``
   is the order statistic ``d_(k)`` with the smallest rank ``k`` such that
   ``P(Binomial(n, q) >= k) <= delta_i`` (then ``d_(k)`` lies below the ``q``-quantile
   of ``d(X)`` with probability at most ``delta_i``); with too few samples no rank
   qualifies and the statement is reported as unavailable;
3. decision agreement (classifiers): ``P(argmax f(X) = argmax f'(X)) >=
   agreement_lower`` (one-sided Clopper-Pearson lower bound);
4. ``labels`` (if given): the accuracy drop ``P(f right) - P(f' right) <=
   P(f right, f' wrong) <= accuracy_drop_upper`` (Clopper-Pearson upper bound).

The statements share ``delta`` by a union bound (Bonferroni): each is made at
confidence ``1 - delta / k`` for ``k`` statements, so all hold together with
probability at least ``1 - delta`` over the draw of the samples. These are
probabilities over ``D``, never worst cases: an input outside ``D``'s support, or a
distribution shift, is not covered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._frozen import FrozenMap, freeze
from .._io import JsonRecord
from .._version import provenance
from ..domain import InputDomain
from ..errors import ConfigurationError, NumericalRangeError

__all__ = ["StatisticalCertificate", "certify_statistical", "clopper_pearson_upper",
           "clopper_pearson_lower", "quantile_rank", "STATISTICAL_SCHEMA"]

STATISTICAL_SCHEMA = "certcompress.statistical-certificate/1"

# scipy's inverse incomplete beta is accurate to a few ulps; bounds are widened by this
# relative amount (outward) so that they stay conservative
_CP_WIDEN = 1e-12


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise ConfigurationError(f"the error probability must be in (0, 1), got {alpha!r}")


def _check_counts(x: int, n: int) -> None:
    if n < 1 or not (0 <= x <= n):
        raise ConfigurationError(f"need 0 <= successes <= trials and trials >= 1, got "
                                 f"{x} of {n}")


def clopper_pearson_upper(x: int, n: int, alpha: float) -> float:
    """One-sided upper ``1 - alpha`` confidence bound on ``p`` from ``x`` successes in
    ``n`` Bernoulli(``p``) trials: the ``p`` with ``P(Binomial(n, p) <= x) = alpha``
    (1 when ``x = n``), widened outward by a relative ``1e-12``."""
    from scipy.stats import beta

    _check_alpha(alpha)
    _check_counts(x, n)
    if x == n:
        return 1.0
    p = float(beta.ppf(1.0 - alpha, x + 1, n - x))
    return min(1.0, p * (1.0 + _CP_WIDEN) + 1e-300)


def clopper_pearson_lower(x: int, n: int, alpha: float) -> float:
    """One-sided lower ``1 - alpha`` confidence bound on ``p`` (0 when ``x = 0``),
    widened outward (down) by a relative ``1e-12``."""
    from scipy.stats import beta

    _check_alpha(alpha)
    _check_counts(x, n)
    if x == 0:
        return 0.0
    p = float(beta.ppf(alpha, x, n - x + 1))
    return max(0.0, p * (1.0 - _CP_WIDEN))


def quantile_rank(n: int, q: float, alpha: float) -> int | None:
    """The smallest rank ``k`` (1-based, ascending) with ``P(Binomial(n, q) >= k) <=
    alpha``: then ``d_(k)`` is at least the ``q``-quantile of the distribution with
    probability ``>= 1 - alpha``. None when no ``k <= n`` qualifies (too few samples:
    ``n`` must satisfy ``q^n <= alpha``)."""
    from scipy.stats import binom

    _check_alpha(alpha)
    if not (0.0 < q < 1.0):
        raise ConfigurationError(f"quantile must be in (0, 1), got {q!r}")
    if n < 1:
        raise ConfigurationError(f"need at least one sample, got {n}")
    ks = np.arange(1, n + 1)
    tail = binom.sf(ks - 1, n, q)  # P(Bin >= k)
    # binom.sf is accurate to a few ulps: ask for a little margin below alpha
    ok = np.nonzero(tail <= alpha * (1.0 - 1e-9))[0]
    return int(ks[ok[0]]) if ok.size else None


@dataclass(frozen=True)
class StatisticalCertificate(JsonRecord):
    """Distribution-free confidence statements about the deviation on held-out data
    (see the module doc). ``None`` marks a statement not made."""

    n: int
    delta: float
    statements: int
    delta_each: float
    threshold: float | None
    exceed_count: int | None
    exceed_upper: float | None
    quantile: float
    quantile_rank: int | None
    quantile_bound: float | None
    agreement_count: int | None
    agreement_lower: float | None
    accuracy_original: float | None
    accuracy_compressed: float | None
    accuracy_drop_count: int | None
    accuracy_drop_upper: float | None
    deviation_mean: float
    deviation_median: float
    deviation_max: float
    output_scale_median: float
    scope: str
    method: str
    model_name: str = "model"
    original_digest: str = ""
    compressed_digest: str = ""
    working_dtype: str = "float64"
    #: the versions that determined the result (read-only; ``provenance()``)
    versions: Mapping[str, str] = field(default_factory=FrozenMap)
    created_utc: str = ""
    schema: str = STATISTICAL_SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", freeze(self.versions))

    def summary(self) -> str:
        conf = 1.0 - self.delta
        lines = [f"certcompress statistical certificate for {self.model_name} ({self.n} held-out "
                 f"samples; all statements hold together with confidence {conf:.4g})"]
        if self.threshold is not None and self.exceed_upper is not None:
            lines.append(f"  P(||f(x) - f'(x)||_1 > {self.threshold:.6g}) <= "
                         f"{self.exceed_upper:.4g}   ({self.exceed_count}/{self.n} samples "
                         "exceed it; Clopper-Pearson)")
        if self.quantile_bound is not None:
            lines.append(f"  P(||f(x) - f'(x)||_1 > {self.quantile_bound:.6g}) <= "
                         f"{1 - self.quantile:.4g}   (order statistic {self.quantile_rank} of "
                         f"{self.n}: a distribution-free bound on the {self.quantile:g}-quantile)")
        else:
            need = math.ceil(math.log(self.delta_each) / math.log(self.quantile))
            lines.append(f"  {self.quantile:g}-quantile bound unavailable: {self.n} samples are "
                         f"too few (at least {need} needed at this confidence)")
        if self.agreement_lower is not None:
            lines.append(f"  P(argmax f(x) = argmax f'(x)) >= {self.agreement_lower:.4g}   "
                         f"({self.agreement_count}/{self.n} samples agree)")
        if self.accuracy_drop_upper is not None:
            lines.append(f"  accuracy drop <= {self.accuracy_drop_upper:.4g}   (measured "
                         f"{self.accuracy_original:.4g} -> {self.accuracy_compressed:.4g}; "
                         f"{self.accuracy_drop_count} samples right before and wrong after)")
        lines += [f"  measured deviation   mean {self.deviation_mean:.4g}, median "
                  f"{self.deviation_median:.4g}, max {self.deviation_max:.4g} (median "
                  f"||f(x)||_1 = {self.output_scale_median:.4g})",
                  f"  method               {self.method}",
                  f"  scope                {self.scope}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "versions": dict(self.versions)}



def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"{what} must be a tensor or array: {exc}") from None
    return x.detach().cpu()


def _check_in_domain(x: Tensor, domain: InputDomain) -> None:
    """Every sample of ``x`` inside ``domain`` (of shape ``(1, *sample_shape)``)."""
    per = (1,) + tuple(int(s) for s in x.shape[1:])
    if not isinstance(domain, InputDomain) or domain.shape != per:
        raise ConfigurationError(f"domain must be an InputDomain of shape {per} (one sample, "
                                 f"batch first), got "
                                 f"{getattr(domain, 'shape', type(domain).__name__)}")
    outside = (~domain.contains(x)).nonzero().reshape(-1)
    if outside.numel():
        raise ConfigurationError(f"{outside.numel()} sample(s) lie outside the domain (first "
                                 f"indices {outside[:5].tolist()}): the statement is about a "
                                 "distribution on the domain; widen it or drop them")


def certify_statistical(model: nn.Module, compressed: nn.Module, samples: Tensor | np.ndarray,
                        *, delta: float = 0.05, threshold: float | None = None,
                        quantile: float = 0.95, labels: Tensor | np.ndarray | None = None,
                        batch_size: int = 256, domain: InputDomain | None = None
                        ) -> StatisticalCertificate:
    """Confidence statements about ``||f(x) - f'(x)||_1`` for ``x`` from the distribution
    that ``samples`` (``(n, *sample_shape)``, iid, held out: not used to train or to
    choose the compression) were drawn from; see the module doc. ``labels`` (``(n,)``
    class indices) adds a bound on the accuracy drop. ``domain`` (an
    :class:`~certcompress.InputDomain` of shape ``(1, *sample_shape)``, as for
    :func:`certcompress.certify`) states where that distribution lives: every sample must
    lie in it (a sample outside is an error naming it)."""
    from ..digest import parameter_digest
    from ..measure import float64_function

    d_ = float(delta)
    if not (0.0 < d_ < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1) (1 - confidence), got {delta!r}")
    q = float(quantile)
    if not (0.0 < q < 1.0):
        raise ConfigurationError(f"quantile must be in (0, 1), got {quantile!r}")
    if threshold is not None:
        t = float(threshold)
        if not math.isfinite(t) or t < 0:
            raise ConfigurationError(f"threshold must be a finite number >= 0, got {threshold!r}")
    for what, mod in (("model", model), ("compressed", compressed)):
        if not isinstance(mod, nn.Module):
            raise ConfigurationError(f"{what} must be a torch nn.Module, got "
                                     f"{type(mod).__name__}")
    x = _as_tensor(samples, "samples")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ConfigurationError(f"samples must be a non-empty batch (n, *sample_shape), got "
                                 f"shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigurationError("samples contain NaN or infinite values")
    n = int(x.shape[0])
    if domain is not None:
        _check_in_domain(x, domain)
    y: Tensor | None = None
    if labels is not None:
        y = _as_tensor(labels, "labels").reshape(-1)
        if y.shape[0] != n:
            raise ConfigurationError(f"labels has {y.shape[0]} entries for {n} samples")
        if y.is_floating_point():
            if not bool((y == y.round()).all()):
                raise ConfigurationError("labels must be integer class indices")
        y = y.to(torch.int64)

    f, fc = float64_function(model), float64_function(compressed)
    fx_parts, fcx_parts = [], []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = x[s:s + batch_size].to(torch.float64)
            fx_parts.append(f(xb))
            fcx_parts.append(fc(xb))
    fx, fcx = torch.cat(fx_parts), torch.cat(fcx_parts)
    if fx.shape != fcx.shape:
        raise ConfigurationError(f"the two models' outputs differ in shape: {tuple(fx.shape)} "
                                 f"vs {tuple(fcx.shape)}")
    devt = (fx - fcx).abs().sum(1)
    if not bool(torch.isfinite(devt).all()):
        raise NumericalRangeError(
            "a sampled deviation ||f(x) - f'(x)||_1 is not finite (outputs up to "
            f"{float(torch.maximum(fx.abs(), fcx.abs()).nan_to_num(posinf=float('inf')).max()):.3g}"
            f", samples up to {float(x.abs().max()):.3g}): the models overflow float64 on "
            "these samples, so no quantile of the deviation can be stated")
    dev = devt.numpy()
    m = fx.shape[1]
    classifier = m >= 2
    if y is not None and not classifier:
        raise ConfigurationError("labels need a classifier output (at least 2 outputs)")
    if y is not None and bool(((y < 0) | (y >= m)).any()):
        raise ConfigurationError(f"labels must lie in 0..{m - 1}")

    k = 1 + (threshold is not None) + classifier + (y is not None)
    a = d_ / k
    exceed_count = exceed_upper = None
    if threshold is not None:
        exceed_count = int((dev > float(threshold)).sum())
        exceed_upper = clopper_pearson_upper(exceed_count, n, a)
    rank = quantile_rank(n, q, a)
    qbound = float(np.sort(dev)[rank - 1]) if rank is not None else None
    agree_count = agree_lower = None
    acc_o = acc_c = drop_count = drop_upper = None
    if classifier:
        po, pc = fx.argmax(1), fcx.argmax(1)
        agree_count = int((po == pc).sum())
        agree_lower = clopper_pearson_lower(agree_count, n, a)
        if y is not None:
            right_o, right_c = po == y, pc == y
            acc_o, acc_c = float(right_o.double().mean()), float(right_c.double().mean())
            drop_count = int((right_o & ~right_c).sum())
            drop_upper = clopper_pearson_upper(drop_count, n, a)
    scope = ("a probability over the distribution the samples were drawn from, never a worst "
             "case: it assumes the samples are iid draws from that distribution and were not "
             "used to train the models or to choose the compression; inputs outside that "
             "distribution (or after a shift) are not covered. Deviations are evaluated in "
             "float64.")
    method = (f"Clopper-Pearson one-sided bounds and a binomial order-statistic quantile "
              f"bound; union bound over {k} statement(s), each at confidence 1 - {a:.4g}")
    return StatisticalCertificate(
        n=n, delta=d_, statements=k, delta_each=a,
        threshold=None if threshold is None else float(threshold),
        exceed_count=exceed_count, exceed_upper=exceed_upper, quantile=q,
        quantile_rank=rank, quantile_bound=qbound, agreement_count=agree_count,
        agreement_lower=agree_lower, accuracy_original=acc_o, accuracy_compressed=acc_c,
        accuracy_drop_count=drop_count, accuracy_drop_upper=drop_upper,
        deviation_mean=float(dev.mean()), deviation_median=float(np.median(dev)),
        deviation_max=float(dev.max()),
        output_scale_median=float(np.median(fx.abs().sum(1).numpy())),
        scope=scope, method=method, model_name=type(model).__name__,
        original_digest=parameter_digest(model), compressed_digest=parameter_digest(compressed),
        **provenance(),
    )
