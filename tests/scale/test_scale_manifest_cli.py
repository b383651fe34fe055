"""The zoo manifest (expansion, relative paths, messages naming the bad field) and the
``zoo certify`` / ``results`` commands through their ``register(subparsers)``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import pandas as pd
import pytest
from scale_zoo import CNN_SHAPE

from certcompress import cli as main_cli
from certcompress.capture import plugins as plugins_mod
from certcompress.capture.plugins import PluginManager
from certcompress.cli.zoo import _with_domain, register
from certcompress.compress.pruning import PruningPlan
from certcompress.errors import ConfigurationError
from certcompress.loading import load_model
from certcompress.scale import StoreError, load_manifest, results
from certcompress.scale.manifest import parse_manifest

MANIFEST = textwrap.dedent("""
    sweep: tiny-zoo
    defaults:
      input_shape: [1, 1, 6, 6]
      radius: 0.5
      search_steps: 2
      search_restarts: 1
    models:
      - model: models.py:make_cnn
        name: cnn
        weights: cnn.pt
      - model: models.py:make
        weights: mlp.pt
        input_shape: [1, 12]
        plans:
          - pruning: {scope: global, criterion: magnitude, sparsity: 0.5}
          - compressed: {model: models.py:make, init_seed: 2}
    plans:
      - pruning: {scope: global, criterion: magnitude, sparsity: [0.25, 0.75]}
      - pruning: layer.json
      - quantization: {bits: [4, 8]}
""")


def _zoo_files(zoo):
    cnn = load_model(f"{zoo.models}:make_cnn", str(zoo.cnn_weights))
    PruningPlan.per_layer(cnn, {"conv": 0.5}).save(zoo.dir / "layer.json")
    path = zoo.dir / "zoo.yaml"
    path.write_text(MANIFEST)
    return path


def test_manifest_expands_models_and_plans(zoo):
    m = load_manifest(_zoo_files(zoo))
    assert m.sweep == "tiny-zoo" and len(m.tasks) == 5 + 2
    labels = [t.display for t in m.tasks]
    assert labels[0] == "cnn: global magnitude pruning at sparsity 0.25"
    assert labels[2].startswith("cnn: per-layer plan on 1 layer(s)")
    assert labels[3] == "cnn: 4-bit per-channel quantization of every layer"
    assert m.tasks[0].input_shape == CNN_SHAPE and m.tasks[5].input_shape == (1, 12)
    assert m.tasks[0].model.weights == str(zoo.cnn_weights)  # relative to the manifest
    assert m.tasks[6].compressed is not None and m.tasks[6].compressed.init_seed == 2
    assert len({t.key for t in m.tasks}) == 7


@pytest.mark.parametrize("edit, message", [
    (("radius: 0.5", "radius: -1"), r"zoo.yaml: defaults.radius must be a finite number >= 0"),
    (("input_shape: [1, 12]", "input_shape: [1, x]"),
     r"zoo.yaml: models\[1\].input_shape must be a non-empty list of positive integers"),
    (("weights: cnn.pt", "weights: nope.pt"), r"models\[0\].weights: file '.*nope.pt' does "
                                              "not exist"),
    (("    name: cnn\n", "    name: cnn\n    colour: red\n"),
     r"zoo.yaml: models\[0\].colour is unknown; fields are model, name"),
    (("sparsity: [0.25, 0.75]", "sparsity: [0.25, 7]"), r"plan 1 \(pruning\): .*sparsity"),
    (("quantization: {bits: [4, 8]}", "quantization: {bits: 4, width: 3}"),
     r"quantization.width is unknown"),
    (("  - pruning: layer.json\n", "  - pruning: layer.json\n    quantization: {bits: 4}\n"),
     r"zoo.yaml: plans\[1\] must have exactly one of pruning, quantization, compressed"),
    (("sweep: tiny-zoo", "sweep: tiny-zoo\nbudget: 3"), r"zoo.yaml.budget is unknown"),
])
def test_manifest_errors_name_the_field(zoo, edit, message):
    path = _zoo_files(zoo)
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(ConfigurationError, match=message):
        load_manifest(path)


def test_manifest_needs_models_and_plans(tmp_path):
    with pytest.raises(ConfigurationError, match="m.yaml: models is missing"):
        parse_manifest({"plans": []}, base=tmp_path, name="m.yaml")
    with pytest.raises(ConfigurationError, match=r"models\[0\] has no plans"):
        parse_manifest({"models": [{"model": "torchvision:resnet18",
                                    "input_shape": [1, 3, 8, 8]}]}, base=tmp_path,
                       name="m.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigurationError, match="is not valid YAML"):
        load_manifest(bad)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="certcompress")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    register(sub)  # a second call (one per command name) adds nothing
    args = parser.parse_args(argv)
    return args.func(args)


def test_zoo_certify_and_results_commands(zoo, tmp_path, capsys):
    path = _zoo_files(zoo)
    store = tmp_path / "runs.sqlite"
    out = tmp_path / "zoo.csv"
    rc = _cli(["zoo", "certify", str(path), "--executor", "serial", "--store", str(store),
               "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "7 succeeded, 0 failed, 0 skipped" in text
    assert "cnn: 4-bit per-channel quantization of every layer" in text
    assert len(pd.read_csv(out)) == 7
    rc = _cli(["zoo", "certify", str(path), "--executor", "serial", "--store", str(store),
               "--no-progress"])
    assert rc == 0 and "0 succeeded, 0 failed, 7 skipped" in capsys.readouterr().out

    assert _cli(["results", "list", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "tiny-zoo" in listing and "certify" in listing
    assert _cli(["results", "show", "tiny-zoo", "--store", str(store), "--columns", "label",
                 "certified_bound"]) == 0
    assert "7 finished task(s), 7 ok, 0 failed" in capsys.readouterr().out
    assert _cli(["results", "export", str(tmp_path / "e.json"), "--store", str(store)]) == 0
    exported = json.loads((tmp_path / "e.json").read_text())
    assert len(exported) == 7 and exported[0]["sweep"] == "tiny-zoo"
    frame = results.load(store, "tiny-zoo")
    assert (frame["certified_bound"] >= 0).all()


def test_zoo_certify_reports_failed_tasks_with_exit_2(zoo, tmp_path, capsys):
    path = _zoo_files(zoo)
    path.write_text(path.read_text().replace("models.py:make_cnn", "models.py:broken"))
    rc = _cli(["zoo", "certify", str(path), "--executor", "serial", "--store",
               str(tmp_path / "r.sqlite"), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 2
    assert "5 task(s) failed; details: certcompress results show tiny-zoo" in text
    assert "FAILED cnn: global magnitude pruning at sparsity 0.25: ModelLoadError" in text


def test_command_line_errors(zoo, tmp_path):
    path = _zoo_files(zoo)
    with pytest.raises(ConfigurationError, match="--address and --num-cpus are for --executor"):
        _cli(["zoo", "certify", str(path), "--address", "auto"])
    with pytest.raises(ConfigurationError, match="must end in .csv or .json"):
        _cli(["zoo", "certify", str(path), "--out", "x.txt"])
    with pytest.raises(StoreError, match="does not exist"):
        _cli(["results", "list", "--store", str(tmp_path / "none.sqlite")])


def test_main_cli_runs_the_commands_when_registered(zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(main_cli._OPTIONAL_COMMANDS, "results", "certcompress.cli.zoo")
    monkeypatch.setitem(main_cli._OPTIONAL_COMMANDS, "zoo", "certcompress.cli.zoo")
    assert main_cli.main(["results", "list", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main_cli.main(["--help"]) == 0
    assert "zoo" in capsys.readouterr().out


ONE_TASK = textwrap.dedent("""
    sweep: boxed
    defaults: {input_shape: [1, 1, 6, 6], radius: 0.5, search_steps: 0}
    models:
      - {model: models.py:make_cnn, name: cnn, weights: cnn.pt}
    plans:
      - pruning: {scope: global, criterion: magnitude, sparsity: 0.5}
""")


def test_zoo_certify_takes_the_domain_and_methods(zoo, tmp_path, capsys):
    path = zoo.dir / "one.yaml"
    path.write_text(ONE_TASK)
    store = tmp_path / "runs.sqlite"
    common = [str(path), "--executor", "serial", "--store", str(store), "--no-progress"]
    assert main_cli.main(["zoo", "certify", *common, "--domain", "0:1", "--method",
                          "bounds"]) == 0, capsys.readouterr()
    row = results.load(store, "boxed").iloc[0]
    assert row["methods"] == "bounds" and "box [0, 1]" in row["domain"]
    # the same task over the manifest's ball is another key: it runs, with the old columns
    assert main_cli.main(["zoo", "certify", *common]) == 0
    assert "1 succeeded, 0 failed, 0 skipped" in capsys.readouterr().out
    frame = results.load(store, "boxed")
    assert len(frame) == 2
    ball = frame[frame["methods"].isna()].iloc[0]
    assert ball["radius"] == 0.5 and ball["certified_bound"] >= 0
    # the boxed one is stored: a rerun skips it
    assert main_cli.main(["zoo", "certify", *common, "--domain", "0:1", "--method",
                          "bounds"]) == 0
    assert "0 succeeded, 0 failed, 1 skipped" in capsys.readouterr().out
    with pytest.raises(ConfigurationError, match="either --domain or --radius"):
        _cli(["zoo", "certify", *common, "--domain", "0:1", "--radius", "1"])


def test_certify_task_domain_validation_and_key(zoo):
    task = load_manifest(_zoo_files(zoo)).tasks[0]
    from dataclasses import replace

    from certcompress.domain import InputDomain

    box = InputDomain.box(0.0, 1.0, shape=task.input_shape)
    boxed = replace(task, radius=None, domain=box)
    assert boxed.key != task.key and replace(boxed, domain=box.to_dict()).key == boxed.key
    assert replace(task, methods=None, arithmetic="exact").key == task.key
    with pytest.raises(ConfigurationError, match="either domain or radius"):
        replace(task, domain=box)
    with pytest.raises(ConfigurationError, match="differs from the task's input_shape"):
        replace(task, radius=None, domain=InputDomain.box(0.0, 1.0, shape=(1, 36)))
    with pytest.raises(ConfigurationError, match="unknown certification method"):
        replace(task, methods=("exact",))


# ------------------------------------------------------------------ domain / methods
def _one_task(zoo, text=ONE_TASK, name="one.yaml"):
    path = zoo.dir / name
    path.write_text(text)
    return path


def test_manifest_defaults_keep_the_radius_and_the_default_tiers(zoo):
    for task in load_manifest(_zoo_files(zoo)).tasks:
        assert task.domain is None and task.methods is None and task.radius is not None


def test_manifest_domain_and_methods_are_those_of_the_command_line(zoo, tmp_path, capsys):
    searched = ONE_TASK.replace("search_steps: 0", "search_steps: 5")
    boxed = searched.replace("radius: 0.5,", "domain: [0, 1], methods: [bounds],")
    task, = load_manifest(_one_task(zoo, boxed)).tasks
    assert task.radius is None and task.methods == ("bounds",)
    box = json.loads(task.domain)
    assert box["lower"] == [0.0] and box["upper"] == [1.0] and box["shape"] == [1, 1, 6, 6]
    # the same task as the radius manifest given --domain 0:1 --method bounds
    ball, = load_manifest(_one_task(zoo, searched, "ball.yaml")).tasks
    args = argparse.Namespace(domain="0:1", radius=None, method=["bounds"], arithmetic="exact")
    assert _with_domain([ball], args)[0].key == task.key
    # the quoted 'LO:HI' form is the same box
    quoted = boxed.replace("domain: [0, 1]", "domain: '0:1'")
    assert load_manifest(_one_task(zoo, quoted, "q.yaml")).tasks[0].key == task.key
    # end to end: the row has the box and the tier; --domain/--method then skip it
    store = tmp_path / "runs.sqlite"
    common = ["--executor", "serial", "--store", str(store), "--no-progress"]
    assert main_cli.main(["zoo", "certify", str(zoo.dir / "one.yaml"), *common]) == 0, \
        capsys.readouterr()
    row = results.load(store, "boxed").iloc[0]
    assert row["status"] == "ok" and row["methods"] == "bounds"
    assert "box [0, 1]" in row["domain"]
    assert row["certified_bound"] >= row["adversarial_max"] > 0  # one-sided
    assert main_cli.main(["zoo", "certify", str(zoo.dir / "ball.yaml"), *common,
                          "--domain", "0:1", "--method", "bounds"]) == 0
    assert "0 succeeded, 0 failed, 1 skipped" in capsys.readouterr().out


def test_a_model_entry_replaces_the_defaults_domain_choice(zoo):
    text = textwrap.dedent("""
        defaults: {input_shape: [1, 1, 6, 6], domain: "-1:1", methods: path-metric}
        models:
          - {model: models.py:make_cnn, weights: cnn.pt}
          - {model: models.py:make_cnn, weights: cnn.pt, radius: 0.25}
          - {model: models.py:make_cnn, weights: cnn.pt, domain: [0, 0.5],
             methods: [path-metric, bounds]}
        plans:
          - pruning: {scope: global, criterion: magnitude, sparsity: 0.5}
    """)
    a, b, c = load_manifest(_one_task(zoo, text, "mix.yaml")).tasks
    assert json.loads(a.domain)["lower"] == [-1.0] and a.radius is None
    assert b.domain is None and b.radius == 0.25  # the model's radius replaces the box
    assert json.loads(c.domain)["upper"] == [0.5] and c.radius is None
    assert a.methods == b.methods == ("path-metric",)
    assert c.methods == ("path-metric", "bounds")


@pytest.mark.parametrize("edit, message", [
    ("radius: 0.5, domain: [0, 1],",
     r"one.yaml: defaults.radius and one.yaml: defaults.domain are both given"),
    ("domain: 1:2,", r"one.yaml: defaults.domain must be the box \[LO, HI\].*got the "
                     r"number 62 \(YAML reads an unquoted LO:HI"),
    ("domain: [1, 0],", r"defaults.domain must be the box \[LO, HI\] .* LO <= HI.*got \[1, 0\]"),
    ("domain: [0, .inf],", r"field 'defaults.domain\[1\]' is inf"),
    ("domain: '-inf:1',", r"defaults.domain must be the box .*finite.*got '-inf:1'"),
    ("domain: '0:x',", r"defaults.domain must be the box .*got '0:x'"),
    ("domain: [0, 1, 2],", r"defaults.domain must be the box"),
    ("domain: {lower: 0},", r"defaults.domain must be the box .*got dict"),
    ("domain: data,", r"defaults.domain: 'data' .* is for 'certcompress certify --domain "
                      r"data'"),
    ("methods: [exact],", r"one.yaml: defaults.methods: unknown certification method\(s\) "
                          r"\['exact'\]; choose from path-metric, bounds"),
    ("methods: 3,", r"defaults.methods must be a list of non-empty strings"),
    ("methods: [],", r"defaults.methods is empty"),
])
def test_manifest_domain_and_methods_errors_name_the_field(zoo, edit, message):
    text = ONE_TASK.replace("radius: 0.5,", edit)
    with pytest.raises(ConfigurationError, match=message):
        load_manifest(_one_task(zoo, text))


def test_manifest_model_level_errors_name_the_model(zoo):
    text = ONE_TASK.replace("weights: cnn.pt}", "weights: cnn.pt, radius: 1, domain: [0, 1]}")
    with pytest.raises(ConfigurationError, match=r"one.yaml: models\[0\].radius and "
                                                 r"one.yaml: models\[0\].domain are both"):
        load_manifest(_one_task(zoo, text))
    text = ONE_TASK.replace("weights: cnn.pt}", "weights: cnn.pt, methods: [nope]}")
    with pytest.raises(ConfigurationError, match=r"models\[0\].methods: unknown certification"):
        load_manifest(_one_task(zoo, text))


PLUGIN_TIER = textwrap.dedent('''
    from certcompress import Plugin
    from certcompress.bounds.tiers import PathMetricTier


    class ZooTier(PathMetricTier):
        name = "zoo-path-metric"


    class ZooTierPlugin(Plugin):
        name = "zoo-tier"

        def register_tiers(self, registry):
            registry.register(ZooTier())
''')


def test_manifest_methods_may_name_a_tier_of_its_plugins(zoo, monkeypatch):
    (zoo.dir / "cczootier.py").write_text(PLUGIN_TIER)
    monkeypatch.syspath_prepend(str(zoo.dir))
    monkeypatch.delitem(sys.modules, "cczootier", raising=False)
    monkeypatch.setattr(plugins_mod, "_manager", PluginManager(load_entry_points=False))
    text = ONE_TASK.replace("radius: 0.5,", "radius: 0.5, methods: [zoo-path-metric],")
    with pytest.raises(ConfigurationError, match="unknown certification method"):
        load_manifest(_one_task(zoo, text))  # the tier's plugin not named
    task, = load_manifest(_one_task(zoo, "plugins: [cczootier:ZooTierPlugin]\n" + text)).tasks
    assert task.methods == ("zoo-path-metric",)
    assert task.model.plugins == ("cczootier:ZooTierPlugin",)
