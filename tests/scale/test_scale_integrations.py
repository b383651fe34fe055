"""The reports as sweeps: ``run_pruning_report`` on the local pool gives exactly
``pruning_report``'s frame; ``run_meanfield_sweep`` exactly ``meanfield.sweep``'s rows
(timings aside); the quantization sweep expands into its tasks in order."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from scale_zoo import CNN_SHAPE, MLP_SHAPE

from certcompress import meanfield as mf
from certcompress.compress.pruning import pruning_report
from certcompress.errors import ConfigurationError
from certcompress.loading import load_model
from certcompress.scale import (
    SerialExecutor,
    meanfield_sweep_tasks,
    pruning_report_tasks,
    quantization_sweep_tasks,
)
from certcompress.scale.integrations import (
    run_bound_vs_bits,
    run_meanfield_sweep,
    run_pruning_report,
    run_quantization_sweep,
)


def test_pruning_report_on_the_pool_equals_the_report(zoo, local_pool, tmp_path):
    model = load_model(zoo.spec("make_cnn"), str(zoo.cnn_weights))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, *CNN_SHAPE[1:], generator=gen) * 2 - 1
    y = torch.randint(0, 3, (16,), generator=gen)
    kw = dict(criteria=("magnitude", "path-magnitude"), sparsities=(0.2, 0.6), data=x,
              labels=y, input_shape=CNN_SHAPE, input_radius=1.0, search_steps=3,
              search_restarts=1)
    want = pruning_report(model, progress=False, **kw)
    store = tmp_path / "runs.sqlite"
    got = run_pruning_report(zoo.spec("make_cnn"), weights=str(zoo.cnn_weights),
                             executor=local_pool, store=store, progress=False, **kw)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    summary = got.attrs.pop("summary")
    assert (summary.succeeded, summary.failed, summary.skipped) == (4, 0, 0)
    assert want.attrs["model"] == "SmallCNN"
    assert got.attrs == {**want.attrs, "model": "models.py:make_cnn"}
    # the data travelled as a content-addressed file next to the store
    assert len(list((tmp_path / ".runs.sqlite.data").glob("*.npz"))) == 1
    again = run_pruning_report(zoo.spec("make_cnn"), weights=str(zoo.cnn_weights),
                               executor=local_pool, store=store, progress=False, **kw)
    pd.testing.assert_frame_equal(again, want, check_exact=True)
    assert again.attrs["summary"].skipped == 4  # the rerun computed nothing


def test_an_executor_needs_a_model_spec_not_an_object(zoo):
    with pytest.raises(ConfigurationError, match="not a SmallCNN object: models never travel"):
        run_pruning_report(load_model(zoo.spec("make_cnn")), input_shape=CNN_SHAPE)


def test_meanfield_sweep_as_tasks_equals_the_sweep(tmp_path):
    opts = mf.SweepOptions(steps=6, record_every=3, task="3-vs-8", n_test=40,
                           estimate=mf.EstimateOptions(max_checkpoints=2, knn_repeats=1,
                                                       bootstrap=2, mc_particles=32,
                                                       mc_signs=4))
    grid = dict(depths=(2, 3), scalings=("mean-field", 0.5), widths=(6,), ns=(30, 40),
                options=opts, seed=2)
    want = mf.sweep(progress=False, **grid)
    tasks = meanfield_sweep_tasks(**grid)
    assert [t.n_max for t in tasks] == [40] * 8 and len({t.key for t in tasks}) == 8
    got = run_meanfield_sweep(executor=SerialExecutor(), store=tmp_path / "mf.sqlite",
                              progress=False, **grid)
    timing = ["train_seconds", "estimate_seconds"]
    pd.testing.assert_frame_equal(got.drop(columns=timing), want.drop(columns=timing),
                                  check_exact=True)
    assert got.attrs["spearman"].keys() == want.attrs["spearman"].keys()


def test_quantization_sweep_expands_in_order(zoo, tmp_path):
    tasks = quantization_sweep_tasks(zoo.spec("make"), (3, 8), weights=str(zoo.mlp_weights),
                                     budgets=(0.5,), avg_bits=(4.0,), input_shape=MLP_SHAPE,
                                     input_radius=1.0, search_steps=0)
    assert [(t.config is not None, t.budget, t.avg_bits) for t in tasks] == [
        (True, None, None), (True, None, None), (False, 0.5, None), (False, None, 4.0)]
    df = run_quantization_sweep(zoo.spec("make"), (3, 8), weights=str(zoo.mlp_weights),
                                input_shape=MLP_SHAPE, input_radius=1.0, search_steps=0,
                                executor=SerialExecutor(), progress=False)
    assert list(df["bits"]) == [3, 8]
    assert df["certified_bound"].iloc[0] > df["certified_bound"].iloc[1]
    with pytest.raises(ConfigurationError, match="the quantization sweep is empty"):
        quantization_sweep_tasks(zoo.ref(), (), input_shape=MLP_SHAPE)


def test_pruning_tasks_follow_the_report_order(zoo):
    tasks = pruning_report_tasks(zoo.ref(), ("random", "magnitude"), (0.1, 0.9),
                                 input_shape=MLP_SHAPE, input_radius=1.0)
    assert [(t.criterion, t.sparsity) for t in tasks] == [
        ("random", 0.1), ("random", 0.9), ("magnitude", 0.1), ("magnitude", 0.9)]


def test_meanfield_tasks_read_arrays_from_an_npz_file(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 5)), np.sign(rng.normal(size=50))
    np.savez(tmp_path / "d.npz", X=X, y=y)
    opts = mf.SweepOptions(steps=4, record_every=2, test_fraction=0.3,
                           estimate=mf.EstimateOptions(max_checkpoints=2, knn_repeats=1,
                                                       bootstrap=2, mc_particles=16,
                                                       mc_signs=2))
    grid = dict(depths=(2,), scalings=("sqrt",), widths=(5,), options=opts, seed=1)
    want = mf.sweep(data=(X, y), progress=False, **grid)
    got = run_meanfield_sweep(data=str(tmp_path / "d.npz"), executor=SerialExecutor(),
                              progress=False, **grid)
    cols = ["config", "measured_gap", "gap_estimate", "train_loss", "n_train"]
    pd.testing.assert_frame_equal(got[cols], want[cols], check_exact=True)
    with pytest.raises(ConfigurationError, match="save the arrays with numpy.savez"):
        meanfield_sweep_tasks(data=(X, y))


def test_bound_vs_bits_on_an_executor_equals_the_report(zoo):
    from certcompress.compress.quantization import bound_vs_bits

    model = load_model(zoo.spec("make"), str(zoo.mlp_weights))
    kw = dict(candidates=(3, 6, 3), input_shape=MLP_SHAPE, input_radius=1.0)
    want = bound_vs_bits(model, (4.0, 5, 4.0), **kw)
    got = run_bound_vs_bits(zoo.spec("make"), (4.0, 5, 4.0), weights=str(zoo.mlp_weights),
                            executor=SerialExecutor(), progress=False, **kw)
    assert got.attrs.pop("summary").succeeded == 4  # 2 widths + 2 distinct budgets
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got["kind"]) == ["allocated"] * 3 + ["uniform"] * 2
