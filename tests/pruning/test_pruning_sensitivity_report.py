"""The per-layer sensitivity table and the pruning report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pruning_nets import mlp, res_bn_net

import certcompress as cc
from certcompress.compress.pruning import (
    PruningPlan,
    apply_masks,
    layer_sensitivity,
    pruning_report,
    save_report,
)
from certcompress.compress.pruning.report import REPORT_COLUMNS

SHAPE = (1, 1, 4, 4)


def test_each_row_is_the_certificate_of_pruning_that_layer_alone() -> None:
    model = res_bn_net(seed=6)
    plan = PruningPlan.path_magnitude(model, 0.5, input_shape=SHAPE)
    df = layer_sensitivity(model, plan, SHAPE, 2.0)
    masks = plan.masks(model)
    assert list(df["layer"]) == ["conv1", "conv2", "fc"]
    for row in df.itertuples():
        alone = {row.layer: masks[row.layer]}
        cert = cc.certify(model, apply_masks(model, alone), SHAPE, 2.0, search_steps=0)
        assert row.bound == cert.bound
        assert row.pruned == int((~masks[row.layer]).sum())
    whole = cc.certify(model, apply_masks(model, masks), SHAPE, 2.0, search_steps=0)
    assert df.attrs["plan_bound"] == whole.bound
    assert whole.bound <= df["bound"].sum() * (1 + 1e-12)  # subadditive
    assert df["share"].sum() == pytest.approx(1.0)


def test_report_columns_values_and_files(tmp_path: Path) -> None:
    model = mlp([16, 12, 10, 4], seed=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(40, 16, generator=gen)
    y = model(x).argmax(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    df = pruning_report(model, ["magnitude", "path-magnitude", "random"], [0.0, 0.3, 0.9],
                        data=loader, input_shape=(1, 16), input_radius=1.0, search_steps=5,
                        progress=False)
    assert list(df.columns) == REPORT_COLUMNS and len(df) == 9
    assert df.attrs["dense_accuracy"] == 1.0
    dense = df[df["sparsity"] == 0.0]
    assert (dense["certified_bound"] == 0).all() and (dense["accuracy"] == 1.0).all()
    assert (df["deviation_max"] <= df["certified_bound"] * (1 + 1e-9)).all()
    assert (df["adversarial_max"] <= df["certified_bound"] * (1 + 1e-9)).all()
    assert (df["deviation_mean"] <= df["deviation_max"]).all()
    assert (df["baseline_bound_linf"] > 0).sum() == 6  # a layered net: the baseline applies
    n = 16 * 12 + 12 * 10 + 10 * 4
    assert (df["pruned_weights"] == (df["sparsity"] * n + 0.5).astype(int)).all()
    for crit, part in df.groupby("criterion"):
        assert part["certified_bound"].is_monotonic_increasing, crit
    csv, png = save_report(df, tmp_path / "r.csv", tmp_path / "r.png")
    assert csv.read_text().startswith(",".join(REPORT_COLUMNS))
    assert png is not None and png.stat().st_size > 1000


def test_report_without_data_has_no_measurements() -> None:
    model = mlp([4, 3, 2])
    df = pruning_report(model, ["magnitude"], [0.5], input_shape=(1, 4), input_radius=1.0,
                        search_steps=0, progress=False)
    assert df["deviation_max"].isna().all() and df["accuracy"].isna().all()
    assert df["certified_bound"].iloc[0] > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"criteria": ["biggest"]}, r"criteria\[0\] = 'biggest'"),
    ({"sparsities": [1.2]}, r"sparsities\[0\] must be a number in \[0, 1\]"),
    ({"criteria": []}, "criteria is empty"),
])
def test_report_argument_errors(kwargs, message) -> None:
    with pytest.raises(cc.ConfigurationError, match=message):
        pruning_report(mlp([4, 2]), input_shape=(1, 4), input_radius=1.0, progress=False,
                       **kwargs)
