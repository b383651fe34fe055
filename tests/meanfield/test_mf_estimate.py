"""estimate() on small runs, and compression_effect with the built-in compressors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError

FAST = mf.EstimateOptions(max_checkpoints=4, knn_repeats=2, bootstrap=4, mc_particles=256, mc_signs=16)


@pytest.fixture(scope="module")
def digits() -> mf.DataSplit:
    return mf.load_digits_task("3-vs-8", n_train=80, n_test=100, seed=0)


@pytest.fixture(scope="module")
def runs(digits: mf.DataSplit) -> dict[str, mf.TrainRun]:
    out = {}
    for scaling in ("mean-field", "sqrt"):
        net = mf.ScaledResNet(16, 3, 24, 24, scaling, input_dim=64, seed=0)
        out[scaling] = mf.train(net, digits.X_train, digits.y_train, steps=60, record_every=20)
    return out


def test_in_scope_estimate_is_complete_and_consistent(digits, runs):
    d = digits
    est = mf.estimate(runs["mean-field"], d.X_train, d.y_train, d.X_test, d.y_test, 0.05, options=FAST)
    assert est.in_scope and est.regime == "mean-field" and est.scope == "in scope"
    row = est.as_row()
    assert set(row) == set(mf.ESTIMATE_COLUMNS)
    for key, value in row.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    n = d.n_train
    assert est.confidence_term == pytest.approx(3 * 2 * math.sqrt(math.log(40) / (2 * n)))
    assert est.gap_estimate == pytest.approx(2 * 2 * est.rademacher_mc + est.confidence_term)
    assert est.loss_bound == 2.0  # targets +-1: the clipped loss lies in [0, 2]
    assert est.gap_estimate_vacuous == (est.gap_estimate >= est.loss_bound)
    assert ("VACUOUS" in est.summary()) == est.gap_estimate_vacuous
    assert est.rademacher_mc <= est.rademacher_closed_form + 3 * est.rademacher_mc_stderr
    assert est.kl_radius >= est.kl_gaussian_head and est.w2_bound_head > 0
    assert est.measured_gap == pytest.approx(est.test_loss - est.train_loss)
    assert 0 <= est.train_error <= 1 and len(est.trajectory) == 4
    assert est.trajectory[0].lambda_min_G2 == pytest.approx(est.lambda_min_G2_init)
    assert est.lambda_min_G12_init >= est.lambda_min_G2_init - 1e-12
    assert est.loss_decay_holds == (est.loss_final <= est.loss_decay_bound_final * (1 + 1e-9) + 1e-15)
    assert "measured" in est.summary().lower()
    # the paper's quantities and the theorem's conditions, checked on this run
    assert 0 < est.Lambda_s <= est.Lambda_G2 and est.kl_bound_paper > 0
    assert est.cond_beta == (est.beta >= math.sqrt(n)) and not est.cond_beta
    assert est.kl_radius_times_n == pytest.approx(est.kl_radius * n)
    assert est.cond_kl == (est.kl_radius * n <= 1.0)
    below = [p.time for p in est.trajectory if p.lambda_min_G12 < est.Lambda_G2 / 2]
    assert est.t0_measured == (below[0] if below else math.inf)
    assert est.cond_time == (est.train_time <= est.t0_measured)
    assert est.conditions_met == (est.cond_beta and est.cond_kl and est.cond_time)
    assert est.gap_bound_paper_vacuous == (est.gap_bound_paper >= est.loss_bound)
    assert "[D] Lambda" in est.summary() and "conditions:" in est.summary()
    # per-phase rates: one per interval between Gram checkpoints, predicted by hand
    assert len(est.phase_rates) == len(est.trajectory) - 1 and "per-phase" in est.summary()
    a, b = est.trajectory[-2], est.trajectory[-1]
    last = est.phase_rates[-1]
    assert last.predicted == pytest.approx(2 * est.beta**2 / n * (a.lambda_min_G12 + b.lambda_min_G12) / 2)
    assert last.measured == pytest.approx(math.log(a.loss / b.loss) / (b.time - a.time))
    assert est.decay_rate_late_measured == last.measured
    assert est.rademacher_sqrt_kl == pytest.approx(est.beta * math.sqrt(2 * est.kl_radius / n))


def test_out_of_scope_estimate_reports_measurements_only(digits, runs):
    d = digits
    est = mf.estimate(runs["sqrt"], d.X_train, d.y_train, d.X_test, d.y_test, options=FAST)
    assert not est.in_scope and est.scope.startswith("out of scope") and "SDE" in est.scope
    assert est.gap_estimate is None and est.rademacher_mc is None and est.rademacher_closed_form is None
    assert est.gap_estimate_vacuous is None
    assert math.isfinite(est.measured_gap) and math.isfinite(est.lambda_min_G2_init)
    assert "out of scope" in est.summary()


def test_estimate_rejects_other_training_data_and_bad_delta(digits, runs):
    d = digits
    with pytest.raises(ConfigurationError, match="differ from the data"):
        mf.estimate(runs["mean-field"], d.X_test[:80], d.y_test[:80], d.X_test, d.y_test, options=FAST)
    with pytest.raises(ConfigurationError, match="delta"):
        mf.estimate(runs["mean-field"], d.X_train, d.y_train, d.X_test, d.y_test, 1.5, options=FAST)
    with pytest.raises(ConfigurationError, match="max_checkpoints"):
        mf.EstimateOptions(max_checkpoints=1)


def test_magnitude_prune_zeroes_the_smallest_weights_globally():
    net = mf.ScaledResNet(4, 2, 8, 8, seed=3)
    pruned = mf.magnitude_prune(0.3)(net)
    names = [n for n, _ in net.named_parameters() if not n.endswith("bias")]
    old = torch.cat([dict(net.named_parameters())[n].detach().flatten() for n in names])
    new = torch.cat([dict(pruned.named_parameters())[n].detach().flatten() for n in names])
    k = round(0.3 * old.numel())
    assert int((new == 0).sum()) == k
    assert float(old[new == 0].abs().max()) <= float(old[new != 0].abs().min())
    assert torch.equal(pruned.res_bias, net.res_bias)  # biases kept, exactly
    assert not torch.equal(net.res_u, pruned.res_u)  # a copy was changed, not the input
    with pytest.raises(ConfigurationError, match="fraction"):
        mf.magnitude_prune(1.0)


def test_round_to_grid_puts_every_value_on_a_symmetric_grid_with_zero():
    net = mf.ScaledResNet(4, 2, 8, 8, seed=3)
    q = mf.round_to_grid(4)(net)
    for (_, p_), (_, r_) in zip(net.named_parameters(), q.named_parameters(), strict=True):
        p, r = p_.detach(), r_.detach()
        step = float(p.abs().max()) / 7
        k = r / step
        assert float((k - torch.round(k)).abs().max()) <= 1e-9  # on the grid
        assert float(k.abs().max()) <= 7 + 1e-9
        assert float((r - p).abs().max()) <= step / 2 + 1e-12
    with pytest.raises(ConfigurationError, match="bits"):
        mf.round_to_grid(1)


def test_compression_effect_table(digits, runs):
    d = digits
    table = mf.compression_effect(
        runs["mean-field"], d.X_train, d.y_train, d.X_test, d.y_test,
        {"prune50": mf.magnitude_prune(0.5), "int4": mf.round_to_grid(4)}, options=FAST)
    assert list(table["compressor"]) == ["original", "prune50", "int4"]
    assert set(mf.ESTIMATE_COLUMNS) <= set(table.columns)
    assert table.loc["original", "relative_change"] == 0.0
    assert table.loc["prune50", "zero_fraction"] >= 0.4
    assert table.loc["prune50", "relative_change"] > table.loc["int4", "relative_change"] > 0
    # compression moves the measured training loss away from the trained optimum
    assert table.loc["prune50", "train_loss_unclipped"] > table.loc["original", "train_loss_unclipped"]
    assert np.isfinite(table["measured_gap"].astype(float)).all()
    with pytest.raises(ConfigurationError, match="must return a ScaledResNet"):
        mf.compression_effect(runs["mean-field"], d.X_train, d.y_train, d.X_test, d.y_test,
                              {"bad": lambda m: torch.nn.Linear(2, 2)}, options=FAST)


def test_tangent_and_stability_estimates_by_hand(digits, runs):
    d = digits
    run = runs["mean-field"]
    est = mf.estimate(run, d.X_train, d.y_train, d.X_test, d.y_test, 0.05, options=FAST)
    n, beta = d.n_train, est.beta
    net = copy.deepcopy(run.model).to(torch.float64)
    X = torch.as_tensor(d.X_train, dtype=torch.float64)
    traces = []
    for ck in run.checkpoints:  # 4 checkpoints, all used by FAST
        keys = net.load_state_dict({k: v.to(torch.float64) for k, v in ck.state.items()}, strict=False)
        assert not keys.unexpected_keys and set(keys.missing_keys) <= {"embed"}  # a fixed buffer
        traces.append(mf.gram_traces(net, X))
    t1 = np.max([t[0] for t in traces], axis=0)
    t2 = max(t[1] for t in traces)
    m_res = net.lr_multipliers()["res_u"]
    assert m_res == est.depth * est.width  # mean-field: L * M
    assert est.jacobian_trace_head == pytest.approx(t2) and est.jacobian_trace_residual == pytest.approx(t1.sum())
    head = beta * est.w2_bound_head * math.sqrt(t2) / math.sqrt(n)
    res = sum(beta * w * math.sqrt(est.width * t / m_res) for w, t in zip(est.w2_bound_per_layer, t1, strict=True)) / math.sqrt(n)
    assert est.rademacher_tangent_head == pytest.approx(head)
    assert est.rademacher_tangent_residual == pytest.approx(res)
    assert est.rademacher_tangent == pytest.approx(head + res)
    assert est.gap_estimate_tangent == pytest.approx(2 * 2 * (head + res) + est.confidence_term)
    rho = head + res + math.sqrt(2 * math.log(1 / 0.05) / n)
    assert est.gap_estimate_optimistic == pytest.approx(math.sqrt(est.train_loss) * rho + rho**2)
    # stability: (4 beta^2 / n) int (tr(G1 + G2)/n) L dt, trace interpolated between checkpoints
    times = [ck.time for ck in run.checkpoints]
    tr = [t[0].sum() + t[1] for t in traces]
    steps = np.arange(len(run.losses))
    integrand = np.interp(run.lr * steps, times, tr) * np.asarray(run.losses)
    integral = float(np.sum(0.5 * (integrand[1:] + integrand[:-1]))) * run.lr
    assert est.gap_estimate_stability == pytest.approx(4 * beta**2 / n * integral)
    # the trajectory KL: untrained particles read about 0 (k-NN calibrated on resampled
    # initialisations, Gaussian fit bias-corrected); trained ones are further out
    first, last = est.trajectory[0], est.trajectory[-1]
    assert abs(first.kl_gaussian) < 1.0 and abs(first.kl_knn) < 3.0
    for p in est.trajectory:  # per part the larger of the two, so at least either sum
        assert p.kl_radius >= max(p.kl_gaussian, p.kl_knn) - 1e-12
    assert last.kl_radius > first.kl_radius
