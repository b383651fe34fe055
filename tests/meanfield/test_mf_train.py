"""ScaledResNet construction and mean-field gradient descent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError


def _data(n: int = 40, p: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    return X, np.sign(X[:, 0] + 0.3 * X[:, 1])


def test_forward_matches_the_model_equations():
    net = mf.ScaledResNet(3, 2, 4, 5, "sqrt", alpha=0.7, beta=1.3, input_dim=3, seed=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    z = x.clone()
    c = 0.7 / math.sqrt(2)
    for layer in range(2):
        h = torch.tanh(z @ net.res_w[layer].T + net.res_bias[layer])
        z = z + (c / 4) * torch.einsum("nm,md->nd", h, net.res_u[layer])
    f = (1.3 / 5) * torch.tanh(z @ net.head_w.T) @ net.head_a
    torch.testing.assert_close(net(x), f)
    assert net(x).shape == (6,)


def test_lr_multipliers_are_mean_field_for_the_mean_field_scaling():
    net = mf.ScaledResNet(4, 8, 16, 32, "mean-field", alpha=2.0)
    m = net.lr_multipliers()
    assert m["res_u"] == pytest.approx(8 * 16) and m["head_a"] == 32
    # other scalings: function-space matched, M alpha^2 / (L c^2)
    assert mf.ScaledResNet(4, 8, 16, 32, "none", alpha=2.0).lr_multipliers()["res_w"] == pytest.approx(16 * 4 / 8)


def test_train_decreases_loss_records_checkpoints_and_leaves_net_untouched():
    X, y = _data()
    net = mf.ScaledResNet(5, 3, 16, 16, seed=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = mf.train(net, X, y, steps=40, record_every=15, lr=0.5)
    assert [c.step for c in run.checkpoints] == [0, 15, 30, 40]
    assert [c.time for c in run.checkpoints] == pytest.approx([0, 7.5, 15, 20])
    assert len(run.losses) == 41 and run.losses[-1] < 0.5 * run.losses[0]
    assert run.checkpoints[-1].loss == pytest.approx(run.losses[-1])
    assert not run.diverged and run.seconds_per_step > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(run.model.res_u, run.checkpoints[-1].state["res_u"])
    # the stored loss is the loss of the stored parameters
    with torch.no_grad():
        f = run.model(torch.as_tensor(X))
    assert 0.5 * float(((f - torch.as_tensor(y)) ** 2).mean()) == pytest.approx(run.losses[-1])


def test_divergence_is_detected_and_the_model_is_the_last_finite_checkpoint():
    X, y = _data()
    net = mf.ScaledResNet(5, 2, 8, 8, "none", beta=5.0, seed=0)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        run = mf.train(net, X, y, steps=50, record_every=1, lr=1e3)
    assert run.diverged
    assert all(math.isfinite(c.loss) for c in run.checkpoints)
    assert run.steps_done < 50


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"depth": 0}, "depth"), ({"scaling": "cubic"}, "unknown scaling"), ({"alpha": -1.0}, "alpha"),
     ({"activation": "swish"}, "unknown activation"), ({"init": "xavier"}, "unknown init")],
)
def test_bad_configuration_is_rejected(kwargs, match):
    args = {"d": 3, "depth": 2, "width": 4, "head_width": 4, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        mf.ScaledResNet(**args)


def test_bad_training_input_is_rejected():
    X, y = _data()
    net = mf.ScaledResNet(5, 2, 4, 4)
    with pytest.raises(ConfigurationError, match=r"shape \(40,\)"):
        mf.train(net, X, y[:-1])
    with pytest.raises(ConfigurationError, match=r"shape \(n, 5\)"):
        mf.train(net, X[:, :3], y)
    with pytest.raises(ConfigurationError, match="steps"):
        mf.train(net, X, y, steps=0)
    with pytest.raises(ConfigurationError, match="ScaledResNet"):
        mf.train(torch.nn.Linear(5, 1), X, y)  # type: ignore[arg-type]


def test_lr_is_scaled_by_one_over_beta_squared_unless_told_otherwise():
    X, y = _data()
    net = mf.ScaledResNet(5, 2, 8, 8, beta=4.0, init="paired", seed=0)
    run = mf.train(net, X, y, steps=30, record_every=10)
    assert run.lr == pytest.approx(0.5 / 16) and run.lr_scale == "beta" and not run.diverged
    assert run.checkpoints[-1].time == pytest.approx(30 * 0.5 / 16)
    raw = mf.train(net, X, y, steps=3, record_every=1, lr=0.01, lr_scale="none")
    assert raw.lr == 0.01
    with pytest.raises(ConfigurationError, match="lr_scale"):
        mf.train(net, X, y, steps=3, lr_scale="sqrt")


def test_paired_init_has_zero_initial_output_and_needs_even_widths():
    net = mf.ScaledResNet(5, 3, 8, 6, beta=100.0, init="paired", seed=1)
    x = torch.randn(7, 5, dtype=torch.float64)
    _, states = net.forward_states(x)
    torch.testing.assert_close(net(x), torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(states[-1], states[0], atol=1e-12, rtol=0)
    with pytest.raises(ConfigurationError, match="even"):
        mf.ScaledResNet(5, 2, 7, 6, init="paired")


def test_train_many_matches_train_and_head_only_freezes_the_features():
    X, y = _data(n=30)
    X2, y2 = _data(n=20, seed=1)
    jobs = [mf.TrainJob(mf.ScaledResNet(5, 2, 8, 8, seed=0), X, y),
            mf.TrainJob(mf.ScaledResNet(5, 2, 8, 8, "sqrt", beta=3.0, init="paired", seed=1), X, y),
            mf.TrainJob(mf.ScaledResNet(5, 2, 8, 8, seed=2), X2, y2, trainable="head"),
            mf.TrainJob(mf.ScaledResNet(5, 3, 8, 8, seed=3), X2, y2)]
    runs = mf.train_many(jobs, steps=12, record_every=5)
    for job, run in zip(jobs, runs, strict=True):
        ref = mf.train(job.net, job.X, job.y, steps=12, record_every=5, trainable=job.trainable)
        np.testing.assert_allclose(run.losses, ref.losses, rtol=1e-9, atol=1e-12)
        assert [c.step for c in run.checkpoints] == [c.step for c in ref.checkpoints]
        assert run.lr == ref.lr and run.trainable == job.trainable
        for name in ("res_u", "head_a"):
            torch.testing.assert_close(getattr(run.model, name), getattr(ref.model, name),
                                       rtol=1e-9, atol=1e-12)
    frozen = runs[2]
    assert torch.equal(frozen.model.res_u, jobs[2].net.res_u)
    assert not torch.equal(frozen.model.head_a, jobs[2].net.head_a)
    with pytest.raises(ConfigurationError, match="trainable"):
        mf.train(jobs[0].net, X, y, steps=2, trainable="residual")


def test_train_many_stops_a_diverging_run_and_warns():
    X, y = _data(n=30)
    jobs = [mf.TrainJob(mf.ScaledResNet(5, 2, 8, 8, seed=0), X, y),
            mf.TrainJob(mf.ScaledResNet(5, 2, 8, 8, seed=0), X * 1e3, y)]
    with pytest.warns(RuntimeWarning, match="diverged"):
        runs = mf.train_many(jobs, steps=30, record_every=10, lr=500.0, lr_scale="none")
    assert any(r.diverged for r in runs)
    for r in runs:
        if r.diverged:
            assert np.isfinite(r.losses).all()
            torch.testing.assert_close(r.model.head_a, r.checkpoints[-1].state["head_a"])
