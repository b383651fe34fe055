"""A small sweep on digits: every column for every configuration; plots; the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from certcompress import cli
from certcompress import errors as mf_errors
from certcompress import meanfield as mf
from certcompress.cli.meanfield import register
from certcompress.meanfield import _sweep as mf_sweep

OPTS = mf.SweepOptions(steps=25, record_every=5, task="3-vs-8", n_test=120,
                       estimate=mf.EstimateOptions(max_checkpoints=3, knn_repeats=2, bootstrap=4,
                                                   mc_particles=256, mc_signs=16))
MEASURED = ("regime", "scope", "lambda_min_G2_init", "lambda_min_G12_final", "w2_bound_residual",
            "kl_gaussian_head", "kl_knn_head", "kl_radius", "kernel_measure", "measured_gap",
            "train_loss", "test_loss", "test_error", "alpha_eff", "train_seconds")
ESTIMATED = ("rademacher_closed_form", "rademacher_mc", "gap_estimate", "gap_estimate_closed_form")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return mf.sweep(depths=[2, 4], scalings=["mean-field", "sqrt", "none"], alphas=[0.5, 2.0],
                    widths=[12], ns=[60], data="digits", options=OPTS, seed=0, progress=False)


def test_small_digits_sweep_has_every_column_for_every_configuration(table):
    assert list(table.columns) == list(mf.SWEEP_COLUMNS)
    grid = set(itertools.product([2, 4], ["mean-field", "sqrt", "none"], [0.5, 2.0]))
    assert set(zip(table["depth"], table["scaling"], table["alpha"], strict=True)) == grid
    assert len(table) == len(grid)
    for col in MEASURED:
        assert table[col].notna().all(), col
    in_scope = table["in_scope"].astype(bool)
    assert set(table.loc[in_scope, "scaling"]) == {"mean-field"}
    for col in ESTIMATED:  # numbers where the theory applies, NaN + a reason elsewhere
        assert np.isfinite(table.loc[in_scope, col].astype(float)).all(), col
        assert table.loc[~in_scope, col].isna().all(), col
    assert table.loc[~in_scope, "scope"].str.startswith("out of scope").all()
    assert table.loc[in_scope, "gap_estimate_vacuous"].notna().all()
    assert table.loc[~in_scope, "gap_estimate_vacuous"].isna().all()
    assert (table["n_train"] == 60).all() and (table["n_test"] == 120).all()
    assert (table["data"] == "digits:3-vs-8").all()


def test_spearman_agreement_is_reported(table):
    sp = table.attrs["spearman"]["gap_estimate"]
    assert sp["n_configs"] == 4 and -1 <= sp["rho"] <= 1
    res = mf.spearman_agreement(table, "kernel_measure")
    assert res.n_configs == len(table) and (math.isnan(res.rho) or -1 <= res.rho <= 1)
    few = mf.spearman_agreement(table.head(2), "kernel_measure")
    assert math.isnan(few.rho) and "fewer than 3" in few.note


def test_plots_are_written(table, tmp_path):
    paths = mf.plot_sweep(table, tmp_path)
    assert {p.name for p in paths} == {"lambda_min.png", "distance.png", "gap.png",
                                       "estimate_vs_measured.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_sweep_on_user_arrays():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 6))
    y = (X[:, 0] > 0).astype(float)  # {0, 1} labels become +-1
    t = mf.sweep(depths=[2], scalings=["mean-field"], widths=[8], data=(X, y),
                 options=OPTS, progress=False)
    assert len(t) == 1 and t["n_train"].iloc[0] == 63 and t["d"].iloc[0] == 6
    assert t["data"].iloc[0] == "arrays"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="certcompress")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_sweep_writes_csv_json_and_plots(tmp_path, capsys):
    out = tmp_path / "results"
    rc = _cli(["meanfield", "sweep", "--depths", "2", "--scalings", "mean-field", "none",
               "--widths", "8", "--ns", "40", "--steps", "10", "--record-every", "5",
               "--data", "digits:0-vs-rest", "--out", str(out), "--no-progress"])
    assert rc == 0
    table = pd.read_csv(out / "meanfield_sweep.csv")
    assert len(table) == 2 and list(table.columns) == list(mf.SWEEP_COLUMNS)
    assert (out / "spearman.json").is_file() and (out / "gap.png").is_file()
    printed = capsys.readouterr().out
    assert "2 runs = 2 configurations x 1 seeds; in scope: 1 runs, 1 configurations" in printed
    assert "recommended depth scaling: mean-field (estimated risk" in printed
    assert "out of scope, not ranked: none" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommendation"]["scaling"] == "mean-field"
    assert set(summary["spearman_means"]["kernel_measure"]) >= {"rho", "pvalue", "n_points"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--scalings", "cubic"], "neither one of"), (["--depths", "0"], "depths"),
     (["--data", "missing.npz"], "no such file"), (["--ns", "100000"], "n_train must be"),
     (["--delta", "2"], "--delta")],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys, argv, message):
    rc = _cli(["meanfield", "sweep", "--out", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_reads_npz(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 4))
    np.savez(tmp_path / "data.npz", X=X, y=np.sign(X[:, 1]))
    rc = _cli(["meanfield", "sweep", "--depths", "2", "--scalings", "mean-field", "--widths", "6",
               "--steps", "5", "--record-every", "5", "--data", str(tmp_path / "data.npz"),
               "--out", str(tmp_path / "o"), "--no-plots", "--no-progress"])
    assert rc == 0 and (tmp_path / "o" / "meanfield_sweep.csv").is_file()
    assert not (tmp_path / "o" / "gap.png").exists()


_TIMING = {"train_seconds", "estimate_seconds"}


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_sweep_on_an_executor_gives_the_same_rows(tmp_path):
    kwargs = dict(depths=[2], scalings=["mean-field", "none"], widths=[6], ns=[30],
                  data="digits", options=OPTS, seed=0, progress=False)
    here = mf.sweep(**kwargs)
    store = tmp_path / "runs.sqlite"
    there = mf.sweep(**kwargs, executor="serial", store=store)
    assert list(there.columns) == list(here.columns) and len(there) == len(here) == 2
    for col in here.columns:
        if col in _TIMING:
            continue
        for a, b in zip(here[col], there[col], strict=True):
            assert _same(a, b), (col, a, b)
    assert store.is_file()
    again = mf.sweep(**kwargs, executor="serial", store=store)  # resumed from the store
    assert list(again["train_seconds"]) == list(there["train_seconds"])


def test_executor_needs_named_data_and_store_needs_an_executor(tmp_path):
    X = np.random.default_rng(0).standard_normal((40, 3))
    with pytest.raises(mf_errors.ConfigurationError, match="npz"):
        mf.sweep(depths=[2], scalings=["mean-field"], widths=[4], data=(X, X[:, 0] > 0),
                 options=OPTS, progress=False, executor="serial")
    with pytest.raises(mf_errors.ConfigurationError, match="executor"):
        mf.sweep(depths=[2], scalings=["mean-field"], widths=[4], options=OPTS,
                 progress=False, store=tmp_path / "runs.sqlite")


def test_sweep_reads_an_npz_path(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 3))
    path = tmp_path / "d.npz"
    np.savez(path, X_train=X[:30], y_train=np.sign(X[:30, 0]), X_test=X[30:],
             y_test=np.sign(X[30:, 0]))
    t = mf.sweep(depths=[2], scalings=["mean-field"], widths=[4], data=str(path),
                 options=OPTS, progress=False)
    assert len(t) == 1 and t["n_train"].iloc[0] == 30 and t["n_test"].iloc[0] == 10


def test_sweep_with_seeds_reports_intervals_and_p_values():
    kwargs = dict(depths=[2], scalings=["mean-field", "none"], alphas=[0.5, 2.0], widths=[6],
                  ns=[30], data="digits", options=OPTS, progress=False)
    t = mf.sweep(**kwargs, seeds=[0, 1])
    assert len(t) == 8 and sorted(set(t["seed"])) == [0, 1] and t.attrs["seeds"] == [0, 1]
    one = mf.sweep(**kwargs, seed=1)  # the seed-1 rows are the single-seed sweep's rows
    pd.testing.assert_frame_equal(t[t["seed"] == 1].drop(columns=list(_TIMING)).reset_index(drop=True),
                                  one.drop(columns=list(_TIMING)).reset_index(drop=True))
    by = t.attrs["by_config"]
    assert set(by) == set(t["config"]) and all(e["n_seeds"] == 2 for e in by.values())
    for name, e in by.items():
        gaps = t.loc[t["config"] == name, "measured_gap"].to_numpy(dtype=float)
        assert e["measured_gap"]["mean"] == pytest.approx(gaps.mean())
        # 95% Student-t half-width with 1 degree of freedom: 12.706 * s / sqrt(2)
        assert e["measured_gap"]["ci95"] == pytest.approx(12.7062047 * gaps.std(ddof=1) / math.sqrt(2))
    means = t.attrs["spearman_means"]
    assert means["gap_estimate_tangent"]["n_points"] == 2  # in-scope configurations only
    assert means["kernel_measure"]["n_points"] == 4
    assert set(t.attrs["spearman"]["gap_estimate"]) >= {"rho", "pvalue", "n_configs"}
    with pytest.raises(mf_errors.ConfigurationError, match="seeds"):
        mf.sweep(**kwargs, seeds=[])
    with pytest.raises(mf_errors.ConfigurationError, match="not both"):
        mf.sweep(**kwargs, seed=3, seeds=[0])


def test_cli_through_the_command_table_uses_the_shared_option_groups(tmp_path, capsys):
    # --out and --executor/--workers/--address/--num-cpus come from cli/options.py
    args = cli.build_parser("meanfield").parse_args(
        ["meanfield", "sweep", "--out", "d", "--executor", "ray", "--address", "auto", "--num-cpus", "3"])
    assert (args.out, args.executor, args.address, args.num_cpus, args.workers) == ("d", "ray", "auto", 3, None)
    assert cli.build_parser("meanfield").parse_args(["meanfield", "design", "--out", "d"]).out == "d"
    out = tmp_path / "o"
    rc = cli.main(["meanfield", "sweep", "--depths", "2", "--scalings", "mean-field", "--widths", "6",
                   "--ns", "30", "--steps", "5", "--record-every", "5", "--out", str(out),
                   "--executor", "local", "--workers", "1", "--no-plots", "--no-progress"])
    assert rc == 0 and (out / "meanfield_sweep.csv").is_file()
    assert len(pd.read_csv(out / "meanfield_sweep.csv")) == 1
    capsys.readouterr()
    for argv, message in ((["--workers", "2"], "--workers is for --executor local"),
                          (["--executor", "serial", "--address", "auto"], "--address and --num-cpus"),
                          (["--executor", "threads"], "invalid choice")):
        bad = tmp_path / "bad"
        rc = cli.main(["meanfield", "sweep", "--out", str(bad), "--no-progress", *argv])
        assert rc == 2 and message in capsys.readouterr().err
        assert not bad.exists()  # nothing written


def test_default_sweep_is_the_designed_sweep_with_three_seeds(monkeypatch):
    # the defaults, shrunk only in what each run costs: the same code path and design
    # (run through sweep() with no grid argument), two design points to keep it short
    seen: dict[str, object] = {}
    real = mf_sweep._run_design

    def spy(points, seeds, data, opts, progress):
        seen.update(points=points, seeds=seeds, data=data, opts=opts)
        return real(points[:2], seeds, data,
                    dataclasses.replace(opts, steps=10, record_every=5, n_test=60), progress)

    monkeypatch.setattr(mf_sweep, "_run_design", spy)
    t = mf.sweep(progress=False)
    assert seen["points"] == mf.default_design() and seen["seeds"] == (0, 1, 2)
    assert seen["opts"] == mf.DESIGN_OPTIONS and seen["data"] == "digits"
    assert list(t.columns[:2]) == ["design", "noise"] and len(t) == 6
    assert t.attrs["seeds"] == [0, 1, 2]
    assert set(t.attrs["by_config"]["n=50 noise=0"]["measured_gap"]) == {"mean", "ci95"}
    assert {"rho", "pvalue", "n_points"} <= set(t.attrs["spearman_means"]["kernel_measure"])
    ev = t.attrs["recommendation"]["evidence"]["mean-field"]
    assert {"estimated_risk", "estimated_risk_ci95", "measured_gap", "measured_gap_ci95",
            "regimes", "conditions_met", "rows"} <= set(ev)
    assert ev["rows"] == int(t["in_scope"].astype(bool).sum())
    # what the default design must be: gaps that differ (n x label noise) plus variants
    pts = seen["points"]
    assert {(p.n, p.noise) for p in pts} >= {(n, q) for n in (50, 100, 200, 400) for q in (0.0, 0.2, 0.4)}


def test_grid_arguments_select_the_grid_and_fill_in_the_rest():
    t = mf.sweep(depths=[2], widths=[6], ns=[30], options=OPTS, progress=False)
    assert list(t.columns) == list(mf.SWEEP_COLUMNS)
    assert list(t["scaling"]) == list(mf.GRID_DEFAULTS["scalings"])
    assert (t["alpha"] == 1.0).all() and (t["seed"] == 0).all() and t.attrs["seeds"] == [0]
    assert t.attrs["recommendation"]["scaling"] == "mean-field"
    with pytest.raises(mf_errors.ConfigurationError, match="not both"):
        mf.sweep(depths=[2], design=mf.default_design()[:1], progress=False)
    with pytest.raises(mf_errors.ConfigurationError, match="executor"):
        mf.sweep(executor="serial", progress=False)


def test_the_design_runs_alone_for_one_seed():
    pts = (mf.DesignPoint("a", 30, 0.0, 2, width=6), mf.DesignPoint("b", 30, 0.4, 2, width=6))
    opts = dataclasses.replace(mf.DESIGN_OPTIONS, steps=10, record_every=5, n_test=60)
    t = mf.sweep(design=pts, seed=2, options=opts, progress=False)
    assert list(t["design"]) == ["a", "b"] and (t["seed"] == 2).all()
    with pytest.raises(mf_errors.ConfigurationError, match="unique"):
        mf.sweep(design=pts[:1] * 2, options=opts, progress=False)


def _small_design(monkeypatch) -> None:
    """The default design path with two points and short runs (the CLI's own code path)."""
    real = mf_sweep._run_design

    def small(points, seeds, data, opts, progress):
        return real(points[:2], seeds, data,
                    dataclasses.replace(opts, steps=10, record_every=5, n_test=60), progress)

    monkeypatch.setattr(mf_sweep, "_run_design", small)


def test_cli_default_sweep_and_design_alias_run_the_design(tmp_path, capsys, monkeypatch):
    _small_design(monkeypatch)
    out = tmp_path / "default"
    assert cli.main(["meanfield", "sweep", "--out", str(out), "--no-progress", "--seeds", "0", "1"]) == 0
    table = pd.read_csv(out / "meanfield_sweep.csv")
    assert list(table.columns[:2]) == ["design", "noise"] and sorted(set(table["seed"])) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and "recommendation" in summary and "by_config" in summary
    assert (out / "spearman.json").is_file() and (out / "design_estimate_vs_gap.png").is_file()
    printed = capsys.readouterr().out
    assert "4 runs = 2 configurations x 2 seeds" in printed
    assert "over 2 configuration means: rho = " in printed and ", p = " in printed
    alias = tmp_path / "alias"
    assert cli.main(["meanfield", "design", "--out", str(alias), "--no-progress", "--no-plots",
                     "--seeds", "0"]) == 0
    assert (alias / "design.csv").is_file() and (alias / "design.json").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad"
    for argv, message in ((["--executor", "serial"], "--executor and --store run a grid"),
                          (["--beta", "4"], "--beta is for a grid"),
                          (["--seed", "1", "--seeds", "2"], "not both")):
        assert cli.main(["meanfield", "sweep", "--out", str(bad), "--no-progress", *argv]) == 2
        assert message in capsys.readouterr().err
        assert not bad.exists()
