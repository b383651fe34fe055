"""The designed sweep on a tiny design: table, agreement, recommendation, plots, reproducibility."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest

from certcompress import meanfield as mf
from certcompress.cli.meanfield import register
from certcompress.errors import ConfigurationError

TINY = (mf.DesignPoint("n=30 q=0", 30, 0.0, 2, width=8), mf.DesignPoint("n=30 q=0.4", 30, 0.4, 2, width=8),
        mf.DesignPoint("n=60 q=0", 60, 0.0, 2, width=8), mf.DesignPoint("n=60 q=0.4", 60, 0.4, 2, width=8),
        mf.DesignPoint("sqrt", 30, 0.2, 2, scaling="sqrt", width=8))
OPTS = dataclasses.replace(mf.DESIGN_OPTIONS, steps=15, record_every=5, n_test=80)
TIMING = ["train_seconds", "estimate_seconds"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return mf.designed_sweep(TINY, seeds=(0, 1), options=OPTS, progress=False)


def test_designed_sweep_rows_attrs_and_vacuous_flags(table):
    assert len(table) == 2 * len(TINY) and list(table.columns[:2]) == ["design", "noise"]
    assert table.attrs["n_rows"] == 10
    assert table.attrs["in_scope"] == int(table["in_scope"].sum())
    assert set(table.loc[~table["in_scope"].astype(bool), "scaling"]) >= {"sqrt"}
    for col, sp in table.attrs["spearman"].items():
        assert sp["n_points"] >= 3 and set(sp) >= {"rho", "pvalue", "n_points"}, col
    ok = table["in_scope"].astype(bool)
    assert (table.loc[ok, "gap_estimate_vacuous"] == (table.loc[ok, "gap_estimate"] >= table.loc[ok, "loss_bound"])).all()
    assert (table["gap_bound_paper_vacuous"] == (table["gap_bound_paper"] >= table["loss_bound"])).all()
    by = table.attrs["by_config"]
    assert set(by) == {p.name for p in TINY} and by["n=30 q=0"]["n_seeds"] == 2
    assert by["n=30 q=0"]["measured_gap"]["ci95"] >= 0
    rec = table.attrs["recommendation"]
    assert rec["scaling"] == "mean-field" and rec["out_of_scope_scalings"] == ["sqrt"]


def test_same_seeds_give_the_same_table(table):
    again = mf.designed_sweep(TINY[:2], seeds=(0,), options=OPTS, progress=False)
    first = table[(table["seed"] == 0) & table["design"].isin([p.name for p in TINY[:2]])]
    pd.testing.assert_frame_equal(first.drop(columns=TIMING).reset_index(drop=True),
                                  again.drop(columns=TIMING).reset_index(drop=True), check_dtype=False)


def test_label_noise_flips_exactly_that_fraction_and_is_seeded():
    y = np.where(np.arange(50) % 2 == 0, 1.0, -1.0)
    flipped = mf.flip_labels(y, 0.2, seed=3)
    assert int((flipped != y).sum()) == 10
    np.testing.assert_array_equal(flipped, mf.flip_labels(y, 0.2, seed=3))
    with pytest.raises(ConfigurationError, match="label noise"):
        mf.flip_labels(y, 1.0, seed=0)


def test_default_design_varies_n_noise_and_the_network():
    pts = mf.default_design()
    assert {(p.n, p.noise) for p in pts} >= {(n, q) for n in (50, 100, 400) for q in (0.0, 0.2, 0.4)}
    assert {p.depth for p in pts} >= {4, 16} and {p.init for p in pts} >= {"standard", "paired"}
    assert {str(p.scaling) for p in pts} == {"mean-field", "sqrt", "none"}


def test_design_plots_are_written(table, tmp_path):
    paths = mf.plot_design(table, tmp_path)
    assert {p.name for p in paths} == {"design_estimate_vs_gap.png", "design_lambda.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_design_rejects_bad_steps(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="certcompress")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["meanfield", "design", "--steps", "0", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
