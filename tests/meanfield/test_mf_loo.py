"""The leave-one-out gap estimates against refits and hand computations, and the
tie-aware evaluation of a sweep (seed-bootstrap Spearman interval, gap groups)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import f as f_dist

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError
from certcompress.meanfield._paper import limit_gram_lower_bound, limit_head_grams

FAST = mf.EstimateOptions(max_checkpoints=3, knn_repeats=2, bootstrap=2, mc_particles=128,
                          mc_signs=8, hermite_order=6)


def _refit_loo(G, y, ridge, f0, clip):
    """Leave sample i out, solve kernel ridge on the rest, predict x_i: by brute force."""
    n = len(y)
    losses = []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        coef = np.linalg.solve(G[np.ix_(rest, rest)] + ridge * np.eye(n - 1), (y - f0)[rest])
        pred = f0[i] + G[i, rest] @ coef
        if clip is not None:
            pred = min(max(pred, -clip), clip)
        losses.append(0.5 * (pred - y[i]) ** 2)
    return float(np.mean(losses))


@pytest.mark.parametrize("clip", [None, 1.0])
def test_kernel_ridge_loo_equals_refitting_without_each_sample(clip):
    rng = np.random.default_rng(3)
    F = rng.standard_normal((9, 4))
    G = F @ F.T + 0.1 * np.eye(9)  # PSD
    y = np.sign(rng.standard_normal(9))
    f0 = 0.3 * rng.standard_normal(9)
    for ridge in (0.05, 1.0, 20.0):
        got = mf.kernel_ridge_loo(G, y, ridge, offset=f0, clip=clip)
        assert got == pytest.approx(_refit_loo(G, y, ridge, f0, clip), rel=1e-9)
    # a rank-deficient kernel (fewer features than samples) is fine with a ridge
    assert mf.kernel_ridge_loo(F[:, :1] @ F[:, :1].T, y, 0.5) == pytest.approx(
        _refit_loo(F[:, :1] @ F[:, :1].T, y, 0.5, np.zeros(9), None), rel=1e-9)


def test_kernel_ridge_loo_and_flow_ridge_reject_bad_input():
    G = np.eye(3)
    with pytest.raises(ConfigurationError, match="ridge"):
        mf.kernel_ridge_loo(G, np.ones(3), 0.0)
    with pytest.raises(ConfigurationError, match=r"\(3, 3\)"):
        mf.kernel_ridge_loo(np.eye(2), np.ones(3), 1.0)
    with pytest.raises(ConfigurationError, match="finite"):
        mf.kernel_ridge_loo(np.full((3, 3), np.nan), np.ones(3), 1.0)
    with pytest.raises(ConfigurationError, match="offset"):
        mf.kernel_ridge_loo(G, np.ones(3), 1.0, offset=np.ones(2))
    assert mf.flow_ridge(100, 2.0, 5.0) == pytest.approx(100 / (4.0 * 5.0))
    with pytest.raises(ConfigurationError, match="t > 0"):
        mf.flow_ridge(100, 1.0, 0.0)


def test_limit_head_grams_are_psd_and_match_the_lower_bound():
    Z = np.random.default_rng(0).standard_normal((12, 5)) / math.sqrt(5)
    Ks, G2 = limit_head_grams(Z, sigma_w=1 / math.sqrt(5), sigma_a=1.0, order=8)
    assert np.allclose(Ks, Ks.T) and np.allclose(G2, G2.T)
    lam_s, lam_g2 = limit_gram_lower_bound(Z, sigma_w=1 / math.sqrt(5), sigma_a=1.0, order=8)
    assert np.linalg.eigvalsh(Ks)[0] == pytest.approx(lam_s) and np.linalg.eigvalsh(G2)[0] == pytest.approx(lam_g2)
    assert np.linalg.eigvalsh(G2 - Ks)[0] >= -1e-12  # G2inf = K_s + a PSD term


@pytest.fixture(scope="module")
def digits() -> mf.DataSplit:
    return mf.load_digits_task("3-vs-8", n_train=40, n_test=60, seed=0)


@pytest.mark.parametrize("trainable", ["all", "head"])
def test_loo_estimates_by_hand_on_a_tiny_run(digits, trainable):
    d = digits
    net = mf.ScaledResNet(16, 2, 8, 8, "mean-field", input_dim=64, seed=1)
    run = mf.train_many([mf.TrainJob(net, d.X_train, d.y_train, trainable)], steps=20, record_every=10)[0]
    est = mf.estimate(run, d.X_train, d.y_train, d.X_test, d.y_test, 0.05, options=FAST)
    n, t = d.n_train, run.checkpoints[-1].time
    ridge = n / (est.beta**2 * t)
    assert est.loo_ridge == pytest.approx(ridge)
    # the kernel: the network's tangent kernel at initialisation (G2 alone for head-only)
    init = copy.deepcopy(run.model).to(torch.float64)
    init.load_state_dict({k: v.to(torch.float64) for k, v in run.checkpoints[0].state.items()}, strict=False)
    X = torch.as_tensor(d.X_train, dtype=torch.float64)
    gp = mf.gram_matrices(init, X)
    G = gp.G2 if trainable == "head" else gp.G1 + gp.G2
    with torch.no_grad():
        f0 = init(X).numpy()
    Y = float(max(np.abs(d.y_train).max(), np.abs(d.y_test).max()))
    loo = _refit_loo(G, d.y_train, ridge, f0, Y)
    assert est.loo_loss == pytest.approx(loo, rel=1e-7)
    assert est.gap_estimate_loo == pytest.approx(loo - est.train_loss, rel=1e-7)
    # the limit's head kernel at mean-field initialisation on z_0 = E x, offset 0
    Z0 = init.embed_input(X).detach().numpy()
    G2inf = limit_head_grams(Z0, activation="tanh", sigma_w=init.prior.sigma_head_w,
                             sigma_a=init.prior.sigma_a, order=FAST.hermite_order)[1]
    lim = _refit_loo(G2inf, d.y_train, ridge, np.zeros(n), Y)
    assert est.loo_loss_limit == pytest.approx(lim, rel=1e-7)
    assert est.gap_estimate_loo_limit == pytest.approx(lim - est.train_loss, rel=1e-7)
    assert "leave-one-out" in est.summary()


def _table(gaps: dict[str, list[float]], est: dict[str, list[float]], in_scope=None) -> pd.DataFrame:
    rows = []
    for name, g in gaps.items():
        for seed, v in enumerate(g):
            rows.append({"config": name, "seed": seed, "measured_gap": v, mf.RECOMMENDED_ESTIMATE: est[name][seed],
                         "in_scope": True if in_scope is None else in_scope[name], "n_train": 100, "noise": 0.2})
    return pd.DataFrame(rows)


def test_gap_groups_is_a_two_way_anova_by_hand():
    gaps = {"a": [0.40, 0.50, 0.45], "b": [0.42, 0.49, 0.50], "c": [0.60, 0.70, 0.66]}
    t = _table(gaps, gaps)
    g = mf.gap_groups(t)
    assert list(g) == ["n_train=100 noise=0.2"]
    x = np.array(list(gaps.values()))  # configs x seeds
    grand = x.mean()
    ss_c = 3 * ((x.mean(1) - grand) ** 2).sum()
    ss_r = ((x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + grand) ** 2).sum()
    F = (ss_c / 2) / (ss_r / 4)
    e = g["n_train=100 noise=0.2"]
    assert e["F"] == pytest.approx(F) and e["pvalue"] == pytest.approx(f_dist.sf(F, 2, 4))
    assert e["configs"] == ["a", "b", "c"] and e["seeds"] == [0, 1, 2]
    assert e["gap_means"] == pytest.approx(list(x.mean(1)))
    # equal gaps up to a shared seed effect: not distinguishable at all
    same = mf.gap_groups(_table({"a": [0.4, 0.5, 0.6], "b": [0.4, 0.5, 0.6]}, {"a": [0] * 3, "b": [0] * 3}))
    assert same["n_train=100 noise=0.2"]["pvalue"] == pytest.approx(1.0)
    # out-of-scope configurations are left out unless asked for
    t2 = _table(gaps, gaps, in_scope={"a": True, "b": True, "c": False})
    assert mf.gap_groups(t2)["n_train=100 noise=0.2"]["configs"] == ["a", "b"]
    assert mf.gap_groups(t2, in_scope_only=False)["n_train=100 noise=0.2"]["configs"] == ["a", "b", "c"]


def test_seed_bootstrap_spearman_is_reproducible_and_exact_for_a_monotone_estimate():
    rng = np.random.default_rng(0)
    gaps = {f"c{i}": list(0.1 * i + 0.01 * rng.standard_normal(3)) for i in range(6)}
    mono = {k: [10 * v for v in g] for k, g in gaps.items()}  # the same order on every resample
    t = _table(gaps, mono)
    b = mf.seed_bootstrap_spearman(t, [mf.RECOMMENDED_ESTIMATE], reps=300)
    assert b[mf.RECOMMENDED_ESTIMATE]["lo"] == pytest.approx(1.0) and b[mf.RECOMMENDED_ESTIMATE]["hi"] == pytest.approx(1.0)
    noisy = {k: list(rng.standard_normal(3)) for k in gaps}
    t2 = _table(gaps, noisy)
    b1 = mf.seed_bootstrap_spearman(t2, [mf.RECOMMENDED_ESTIMATE], reps=300)
    assert b1 == mf.seed_bootstrap_spearman(t2, [mf.RECOMMENDED_ESTIMATE], reps=300)
    e = b1[mf.RECOMMENDED_ESTIMATE]
    assert -1 <= e["lo"] <= e["median"] <= e["hi"] <= 1 and e["lo"] < e["hi"] and e["reps"] == 300
    assert mf.seed_bootstrap_spearman(t2[t2["seed"] == 0], [mf.RECOMMENDED_ESTIMATE]) == {}
