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
        mf.DesignPoint("sqrt", 30, 0.2, 2, scaling="sqrt", width=8),
        mf.DesignPoint("head-only", 30, 0.2, 2, width=8, trainable="head"),
        mf.DesignPoint("lazy", 30, 0.2, 2, width=8, init="standard", beta=10.0))
OPTS = dataclasses.replace(mf.DESIGN_OPTIONS, steps=15, record_every=5, n_test=80)
TIMING = ["train_seconds", "estimate_seconds"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return mf.sweep(design=TINY, seeds=(0, 1), options=OPTS, progress=False)


def test_designed_sweep_rows_attrs_and_vacuous_flags(table):
    assert len(table) == 2 * len(TINY) and list(table.columns[:2]) == ["design", "noise"]
    assert table.attrs["n_rows"] == 14
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
    # rank agreement over per-design means (in-scope designs for the theory estimates)
    means = table.attrs["spearman_means"]
    assert means["gap_estimate"]["n_points"] == table.attrs["in_scope_designs"]
    assert means["kernel_measure"]["n_points"] == len(TINY)
    assert set(table.attrs["spearman_per_seed"]["gap_estimate"]) == {"0", "1"}
    r = table.attrs["ratio"]["gap_estimate"]
    assert 0 < r["min"] <= r["median"] <= r["max"]
    assert table.attrs["best_estimate"]["column"] in means
    # tie-aware evaluation: seed-bootstrap interval of the Spearman over means, and
    # whether configurations on the same data (n=30, noise 0.2) differ in gap
    boot = table.attrs["spearman_means_bootstrap"][mf.RECOMMENDED_ESTIMATE]
    assert -1 <= boot["lo"] <= boot["median"] <= boot["hi"] <= 1
    assert boot == mf.seed_bootstrap_spearman(table, [mf.RECOMMENDED_ESTIMATE])[mf.RECOMMENDED_ESTIMATE]
    assert table.attrs["gap_groups"] == mf.gap_groups(table)
    for grp in table.attrs["gap_groups"].values():
        assert 0 <= grp["pvalue"] <= 1 and len(grp["configs"]) >= 2
    assert means[mf.RECOMMENDED_ESTIMATE]["n_points"] == table.attrs["in_scope_designs"]


def test_ablation_and_lazy_rows_sit_in_the_same_table(table):
    head = table[table["design"] == "head-only"]
    assert (head["trainable"] == "head").all() and (head["move_residual"] == 0).all()
    assert (head["move_head"] > 0).all()
    lazy = table[table["design"] == "lazy"]
    assert (lazy["beta"] == 10.0).all() and (lazy["init"] == "standard").all()
    assert not lazy["in_scope"].astype(bool).any()
    assert set(lazy["regime"]) <= {"lazy", "large-scale"}


def test_trajectories_and_phase_rates(table):
    traj = table.attrs["trajectories"]
    assert set(traj) == {f"{p.name}|{s}" for p in TINY for s in (0, 1)}
    tr = traj["n=60 q=0|0"]
    assert [c["step"] for c in tr["checkpoints"]] == [0, 5, 10, 15]
    assert len(tr["losses"]) == 16 and len(tr["phases"]) == 3
    for ph in tr["phases"]:
        # the phase's measured rate is the log-loss slope between its checkpoints
        assert ph["measured"] * (ph["t_end"] - ph["t_start"]) == pytest.approx(
            np.log(ph["loss_start"] / ph["loss_end"]))
        assert ph["predicted"] >= ph["predicted_G2"] > 0  # G1 + G2 >= G2
    # untrained particles: the bias-corrected Gaussian KL reads about 0
    assert abs(tr["checkpoints"][0]["kl_gaussian"]) < 1.0
    head = traj["head-only|0"]
    assert all(ph["predicted"] == ph["predicted_G2"] for ph in head["phases"])


def test_same_seeds_give_the_same_table(table):
    again = mf.designed_sweep(TINY[:2], seeds=(0,), options=OPTS, progress=False)  # the alias
    assert again.attrs["trajectories"]["n=30 q=0|0"] == table.attrs["trajectories"]["n=30 q=0|0"]
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
    cells = {(n, q) for n in (50, 100, 200, 400) for q in (0.0, 0.2, 0.4)}
    assert {(p.n, p.noise) for p in pts} >= cells and len(cells) == len(mf.DESIGN_NS) * len(mf.DESIGN_NOISES)
    assert {p.name for p in pts} >= {f"n={n} noise={q:g}" for n, q in cells}
    assert {p.depth for p in pts} >= {4, 16} and {p.init for p in pts} >= {"standard", "paired"}
    assert {str(p.scaling) for p in pts} == {"mean-field", "sqrt", "none"}
    assert {p.trainable for p in pts} == {"all", "head"}
    assert any(p.init == "standard" and p.beta >= 10 for p in pts)


def test_design_plots_are_written(table, tmp_path):
    paths = mf.plot_design(table, tmp_path) + mf.plot_training(table, tmp_path)
    assert {p.name for p in paths} == {"design_estimate_vs_gap.png", "design_lambda.png",
                                       "training_lambda.png", "training_loss_envelope.png",
                                       "training_kl.png", "training_phase_rates.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_design_rejects_bad_steps(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="certcompress")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["meanfield", "design", "--steps", "0", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_recommendation_compares_scalings_on_matched_configurations():
    rows = []
    for seed in (0, 1, 2):
        for sc, gap, ok in (("mean-field", 0.30 + 0.01 * seed, True), ("sqrt", 0.40 + 0.01 * seed, False)):
            rows.append({"scaling": sc, "in_scope": ok, "regime": "mean-field" if ok else "SDE",
                         "conditions_met": False, "train_loss": 0.01, "test_loss": gap + 0.01,
                         "measured_gap": gap, mf.RECOMMENDED_ESTIMATE: 5.0 if ok else np.nan, "seed": seed,
                         "n_train": 100, "noise": 0.2, "depth": 16, "alpha": 1.0,
                         "init": "mean-field", "beta": 1.0, "trainable": "all", "width": 32})
    rows.append({**rows[0], "depth": 4, "scaling": "mean-field"})  # unmatched: left out
    rec = mf.recommend_scaling(pd.DataFrame(rows))
    assert rec["scaling"] == "mean-field" and rec["out_of_scope_scalings"] == ["sqrt"]
    m = rec["matched"]
    assert m["mean-field"]["rows"] == 3 and m["sqrt"]["regimes"] == ["SDE"]
    assert m["sqrt"]["gap_minus_best"]["mean"] == pytest.approx(0.10)
    assert m["sqrt"]["gap_minus_best"]["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert m["sqrt"]["gap_minus_best"]["pairs"] == 3
