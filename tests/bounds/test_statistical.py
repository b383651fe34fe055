"""The statistical certificate's confidence is checked by simulation: on distributions
whose answer is known, the stated bounds hold in at least ``1 - delta`` of repeated
trials, up to three binomial standard deviations of the trial count (seeded, so the
tests are deterministic)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from certcompress._frozen import FrozenMap
from certcompress.bounds.statistical import (
    StatisticalCertificate,
    certify_statistical,
    clopper_pearson_lower,
    clopper_pearson_upper,
    quantile_rank,
)
from certcompress.cli import local as cli_local
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError

TRIALS = 400


def _slack(delta: float, trials: int) -> float:
    return 3.0 * math.sqrt(delta * (1 - delta) / trials)


def test_clopper_pearson_closed_forms():
    # x = 0: P(Bin(n, p) <= 0) = (1-p)^n = alpha
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-10)
    assert clopper_pearson_upper(0, 20, 0.05) >= 1 - 0.05 ** (1 / 20)
    assert clopper_pearson_lower(20, 20, 0.05) == pytest.approx(0.05 ** (1 / 20), rel=1e-10)
    assert clopper_pearson_lower(20, 20, 0.05) <= 0.05 ** (1 / 20)
    assert clopper_pearson_upper(20, 20, 0.05) == 1.0
    assert clopper_pearson_lower(0, 20, 0.05) == 0.0
    from scipy.stats import binom

    for x, n in [(3, 50), (17, 40), (1, 1000)]:
        u = clopper_pearson_upper(x, n, 0.05)
        assert binom.cdf(x, n, u) <= 0.05 + 1e-12  # u is at or above the exact root
        lo = clopper_pearson_lower(x, n, 0.05)
        assert binom.sf(x - 1, n, lo) <= 0.05 + 1e-12
        assert lo < x / n < u


@pytest.mark.parametrize("p, n", [(0.1, 40), (0.02, 100), (0.5, 15)])
def test_clopper_pearson_coverage(p, n):
    rng = np.random.default_rng(int(p * 1000) + n)
    delta = 0.05
    xs = rng.binomial(n, p, size=TRIALS)
    up = np.mean([clopper_pearson_upper(int(x), n, delta) >= p for x in xs])
    lo = np.mean([clopper_pearson_lower(int(x), n, delta) <= p for x in xs])
    assert up >= 1 - delta - _slack(delta, TRIALS)
    assert lo >= 1 - delta - _slack(delta, TRIALS)


@pytest.mark.parametrize("q, n", [(0.9, 60), (0.95, 200), (0.5, 11)])
def test_quantile_coverage_exponential(q, n):
    """d ~ Exponential(1): the q-quantile is -log(1 - q); d_(k) must reach it."""
    rng = np.random.default_rng(n)
    delta = 0.05
    k = quantile_rank(n, q, delta)
    assert k is not None
    true_q = -math.log(1 - q)
    hits = np.mean([np.sort(rng.exponential(size=n))[k - 1] >= true_q for _ in range(TRIALS)])
    assert hits >= 1 - delta - _slack(delta, TRIALS)
    # the rank is the smallest valid one: one less would not be valid
    from scipy.stats import binom

    assert binom.sf(k - 1, n, q) <= delta
    if k > 1:
        assert binom.sf(k - 2, n, q) > delta * (1 - 1e-9)


def test_quantile_rank_too_few_samples():
    assert quantile_rank(10, 0.95, 0.05) is None  # 0.95^10 = 0.6 > 0.05
    assert quantile_rank(59, 0.95, 0.05) == 59   # 0.95^59 = 0.0485
    assert quantile_rank(58, 0.95, 0.05) is None


# --------------------------------------------------------------- end to end, known answer
def _pair() -> tuple[nn.Module, nn.Module]:
    """f(x) = (x, -x), f'(x) = (1.5 x - 0.2, -x) for scalar x ~ U(-1, 1):
    d = |0.5 x - 0.2| = |u|, u ~ U(-0.7, 0.3); P(d > t) = max(0, 0.7 - t) + max(0, 0.3 - t);
    the 0.9-quantile is 0.6; the classes disagree for x in (0, 0.08): P(agree) = 0.96;
    labels y = 1{x <= 0}: f always right, f' wrong on (0, 0.08): accuracy drop 0.04."""
    f, g = nn.Linear(1, 2), nn.Linear(1, 2)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        f.bias.zero_()
        g.weight.copy_(torch.tensor([[1.5], [-1.0]]))
        g.bias.copy_(torch.tensor([-0.2, 0.0]))
    return f.eval(), g.eval()


def test_end_to_end_coverage():
    f, g = _pair()
    rng = np.random.default_rng(0)
    delta, n, t, trials = 0.1, 60, 0.5, 200
    p_exceed, q_true, agree, drop = 0.2, 0.6, 0.96, 0.04
    ok_all = 0
    for _ in range(trials):
        x = rng.uniform(-1, 1, size=(n, 1))
        y = (x[:, 0] <= 0).astype(np.int64)
        c = certify_statistical(f, g, x, delta=delta, threshold=t, quantile=0.9, labels=y)
        assert c.statements == 4 and c.delta_each == pytest.approx(delta / 4)
        ok = (c.exceed_upper >= p_exceed and c.quantile_bound is not None
              and c.quantile_bound >= q_true and c.agreement_lower <= agree
              and c.accuracy_drop_upper >= drop)
        ok_all += ok
    # the union bound makes the joint statement hold with probability >= 1 - delta
    assert ok_all / trials >= 1 - delta - _slack(delta, trials)


def test_certificate_values_and_text(tmp_path):
    f, g = _pair()
    x = torch.linspace(-1, 1, 101).reshape(-1, 1)
    c = certify_statistical(f, g, x, delta=0.05, threshold=0.5)
    d = (0.5 * x[:, 0].double() - 0.2).abs().numpy()
    assert c.n == 101 and c.statements == 3  # threshold, quantile, agreement
    assert c.exceed_count == int((d > 0.5).sum())
    assert c.deviation_max == pytest.approx(d.max())
    assert c.agreement_count == 101 - int(((x[:, 0] > 0) & (x[:, 0] < 0.08)).sum())
    assert c.accuracy_drop_upper is None
    s = c.summary()
    assert "never a worst case" in c.scope and "iid" in c.scope
    assert "union bound" in c.method and "P(argmax" in s
    data = json.loads(c.to_json())
    assert data["schema"] == c.schema and isinstance(StatisticalCertificate(**data),
                                                     StatisticalCertificate)
    c.save(tmp_path / "s.json")
    # the provenance mapping is frozen like the certificate's; the JSON form a plain object
    assert isinstance(c.versions, FrozenMap) and type(data["versions"]) is dict
    with pytest.raises(TypeError):
        c.versions["torch"] = "edited"  # type: ignore[index]
    assert hash(StatisticalCertificate(**data)) == hash(c)
    few = certify_statistical(f, g, x[:10], quantile=0.95)
    assert few.quantile_bound is None and "unavailable" in few.summary()


@pytest.mark.parametrize("kwargs, match", [
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"delta": -0.5}, "delta"),
    ({"quantile": 1.0}, "quantile"), ({"threshold": -1.0}, "threshold"),
    ({"threshold": float("inf")}, "threshold"),
    ({"samples": np.zeros((0, 1))}, "non-empty"), ({"samples": np.zeros(5)}, "non-empty"),
    ({"labels": np.zeros(3, dtype=np.int64)}, "labels has 3"),
    ({"labels": np.full(8, 5)}, "labels must lie"),
    ({"labels": np.full(8, 0.5)}, "integer"),
    ({"samples": np.full((8, 1), np.nan)}, "NaN"),
])
def test_bad_input(kwargs, match):
    f, g = _pair()
    args = {"samples": np.linspace(-1, 1, 8).reshape(-1, 1), **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        certify_statistical(f, g, args.pop("samples"), **args)


def test_bad_counts():
    with pytest.raises(ConfigurationError):
        clopper_pearson_upper(5, 3, 0.05)
    with pytest.raises(ConfigurationError):
        clopper_pearson_lower(1, 3, 1.5)


# --------------------------------------------------------------------------- CLI helper
def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="certificate.json")
    cli_local.add_arguments(p)
    return p.parse_args(argv)


def test_cli_helper_runs_and_writes(tmp_path):
    f, g = _pair()
    data = tmp_path / "held.npz"
    x = np.linspace(-1, 1, 80).reshape(-1, 1)
    np.savez(data, x=x, y=(x[:, 0] <= 0).astype(np.int64))
    out = tmp_path / "cert.json"
    lines: list[str] = []
    args = _parse(["--out", str(out), "--heldout", str(data), "--local-eps", "0.05",
                   "--local-points", "4", "--threshold", "0.3"])
    res = cli_local.run(args, f, g, lines.append, progress=False,
                        domain=InputDomain.box(-1.0, 1.0, shape=(1, 1)))
    assert res.local is not None and res.local.n_points == 4 and res.local.eps == 0.05
    assert res.statistical is not None and res.statistical.accuracy_drop_upper is not None
    assert {p.name for p in res.written} == {"cert.local.json", "cert.statistical.json"}
    assert all(p.is_file() for p in res.written)
    assert any("statistical certificate" in s for s in lines)
    none = cli_local.run(_parse([]), f, g, lines.append)
    assert none.local is None and none.statistical is None and none.written == ()


@pytest.mark.parametrize("argv, content, match", [
    (["--local-eps", "0.1"], None, "needs points"),
    (["--heldout", "{d}"], {"z": np.zeros((3, 1))}, "no array 'x'"),
    (["--heldout", "{d}"], {"x": np.zeros(3)}, "non-empty batch"),
    (["--heldout", "{d}"], {"x": np.zeros((3, 1)), "y": np.zeros(2, dtype=np.int64)},
     "integer labels"),
    (["--heldout", "missing.npz"], None, "does not exist"),
])
def test_cli_helper_errors(tmp_path, argv, content, match):
    f, g = _pair()
    d = tmp_path / "d.npz"
    if content is not None:
        np.savez(d, **content)
    args = _parse([a.replace("{d}", str(d)) for a in argv])
    with pytest.raises(ConfigurationError, match=match):
        cli_local.run(args, f, g, lambda s: None, progress=False)


def test_cli_helper_refuses_pickles(tmp_path):
    f, g = _pair()
    d = tmp_path / "obj.npz"
    np.savez(d, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigurationError, match="cannot read"):
        cli_local.run(_parse(["--heldout", str(d)]), f, g, lambda s: None)
