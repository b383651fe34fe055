"""Tasks as values: stable keys, JSON round trips, field validation, digests checked
where a task runs, and each kind's row equal to what the library call it wraps gives
(run in this process: the executors are tested elsewhere)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from scale_zoo import CNN_SHAPE, MLP_SHAPE

import certcompress as cc
from certcompress.compress.pruning import PruningPlan, pruning_report
from certcompress.compress.quantization import QuantConfig, quantize
from certcompress.errors import ConfigurationError, ModelLoadError
from certcompress.loading import load_model
from certcompress.scale import (
    TASK_KINDS,
    CertifyTask,
    DataRef,
    ModelRef,
    PruneTask,
    QuantizeTask,
    task_from_dict,
    task_from_json,
)

PLAN = {"scope": "global", "criterion": "magnitude", "sparsity": 0.5}


def _prune(zoo, **kw):
    args = dict(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0, pruning=PLAN,
                search_steps=3, search_restarts=1)
    args.update(kw)
    return CertifyTask(**args)


def test_registry_names_every_kind():
    assert set(TASK_KINDS) == {"certify", "prune", "quantize", "meanfield"}
    assert all(cls.kind == name for name, cls in TASK_KINDS.items())


def test_key_survives_json_and_ignores_label_and_paths(zoo, tmp_path):
    t = _prune(zoo)
    back = task_from_json(t.to_json())
    assert back == t and back.key == t.key
    assert json.loads(t.to_json())["pruning"]["sparsity"] == 0.5
    assert _prune(zoo, label="a name").key == t.key
    # the same factory file and weights elsewhere: same key
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(zoo.models, moved / "models.py")
    shutil.copy(zoo.mlp_weights, moved / "mlp.pt")
    ref = ModelRef(f"{moved / 'models.py'}:make", str(moved / "mlp.pt"))
    assert _prune(zoo, model=ref).key == t.key


@pytest.mark.parametrize("change", [
    {"pruning": {**PLAN, "sparsity": 0.6}}, {"radius": 2.0}, {"input_shape": (2, 12)},
    {"search_steps": 4}, {"seed": 1}, {"quantization": {"bits": 8}, "pruning": None},
])
def test_key_changes_with_every_setting(zoo, change):
    assert _prune(zoo, **change).key != _prune(zoo).key


def test_key_changes_with_weights_and_factory_code(zoo):
    base = _prune(zoo).key
    torch.save({k: v + 1 for k, v in torch.load(zoo.mlp_weights).items()}, zoo.dir / "w2.pt")
    assert _prune(zoo, model=zoo.ref(weights=zoo.dir / "w2.pt")).key != base
    zoo.models.write_text(zoo.models.read_text() + "\n# edited\n")
    assert _prune(zoo, model=zoo.ref()).key != base


def test_equal_plans_in_other_forms_give_equal_keys(zoo):
    plan = PruningPlan.magnitude(load_model(zoo.spec("make"), str(zoo.mlp_weights)), 0.5)
    assert _prune(zoo, pruning=plan).key == _prune(zoo).key
    model = load_model(zoo.spec("make"))
    cfg = QuantConfig.from_bits({"fc1": 4, "fc2": 4})
    a = _prune(zoo, pruning=None, quantization=cfg)
    b = _prune(zoo, pruning=None, quantization={"bits": {"fc2": 4, "fc1": 4}})
    assert a.key == b.key
    assert QuantConfig.from_dict(json.loads(a.quantization)).bits == cfg.bits
    del model


@pytest.mark.parametrize("data, message", [
    ({"kind": "certify", "model": {"spec": "x.py:f"}, "input_shape": [1, 2], "bogus": 1},
     "field 'bogus' is unknown"),
    ({"kind": "prune", "input_shape": [1, 2], "criterion": "magnitude", "sparsity": 0.5},
     "field 'model' is missing"),
    ({"kind": "shrink"}, "task kind 'shrink' is unknown; kinds are certify, prune"),
])
def test_bad_task_dicts_name_the_field(data, message):
    with pytest.raises(ConfigurationError, match=message):
        task_from_dict(data)


@pytest.mark.parametrize("kw, message", [
    ({"pruning": None}, "exactly one of compressed"),
    ({"quantization": {"bits": 8}}, "got pruning, quantization"),
    ({"input_shape": (1, 0)}, "input_shape must be a non-empty list of positive integers"),
    ({"radius": -1.0}, "radius must be a finite number >= 0"),
    ({"search_restarts": 0}, "search_restarts must be an integer >= 1"),
    ({"pruning": {**PLAN, "sparsity": 2}}, "pruning: sparsity"),
    ({"pruning": None, "quantization": {"bits": 9}}, "bits must be one of"),
    ({"pruning": None, "quantization": {"bits": 4, "size": 2}}, "quantization.size is unknown"),
])
def test_bad_certify_fields_are_refused(zoo, kw, message):
    with pytest.raises(ConfigurationError, match=message):
        _prune(zoo, **kw)


def test_other_kinds_validate_their_fields(zoo):
    common = dict(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0)
    with pytest.raises(ConfigurationError, match="criterion = 'size' is not a pruning"):
        PruneTask(criterion="size", sparsity=0.5, **common)
    with pytest.raises(ConfigurationError, match="exactly one of config, budget or avg_bits"):
        QuantizeTask(config={"bits": 4}, budget=1.0, **common)
    with pytest.raises(ConfigurationError, match="avg_bits must be a finite number > 0"):
        QuantizeTask(avg_bits=-3, **common)


def test_a_changed_weights_file_is_refused_where_the_task_runs(zoo):
    t = _prune(zoo)
    torch.save({k: v * 2 for k, v in torch.load(zoo.mlp_weights).items()}, zoo.mlp_weights)
    with pytest.raises(ModelLoadError, match="changed since the task was created"):
        t.run()


def test_random_init_models_are_pinned_by_seed_and_checked(zoo):
    ref = ModelRef(zoo.spec("make"), init_seed=3)
    assert ref.digest.startswith("params:")
    assert ModelRef(zoo.spec("make"), init_seed=3).digest == ref.digest
    assert ModelRef(zoo.spec("make"), init_seed=4).digest != ref.digest
    row = _prune(zoo, model=ref).run()  # the worker rebuilds the same weights
    assert row["original_digest"] == ref.digest.removeprefix("params:")
    t = _prune(zoo, model=ModelRef(zoo.spec("unseeded")))
    with pytest.raises(ModelLoadError, match="not deterministic"):
        t.run()


def test_certify_row_equals_certify_on_the_same_models(zoo):
    model = load_model(zoo.spec("make_cnn"), str(zoo.cnn_weights))
    plan = PruningPlan.path_magnitude(model, 0.4, input_shape=CNN_SHAPE)
    t = CertifyTask(model=zoo.ref("make_cnn", "cnn"), input_shape=CNN_SHAPE, radius=0.5,
                    pruning=plan, search_steps=4, search_restarts=2, seed=1)
    row = t.run()
    pruned = cc.compress.pruning.apply_masks(model, plan.masks(model, CNN_SHAPE))
    cert = cc.certify(model, pruned, CNN_SHAPE, 0.5, search_steps=4, search_restarts=2, seed=1)
    assert row["certified_bound"] == cert.bound
    assert row["adversarial_max"] == cert.measurements.adversarial_max
    assert row["compressed_digest"] == cert.compressed_digest
    assert row["compression"] == str(plan)
    assert row["model"] == "models.py:make_cnn" and row["input_shape"] == "1x1x6x6"
    assert row["nonzero_parameters"] < row["parameters"]


def test_certify_task_with_domain_and_methods(zoo):
    """``domain`` and ``methods`` reach certify; keys of tasks without them do not move."""
    torch.save({k: v * 0.9 for k, v in torch.load(zoo.mlp_weights).items()}, zoo.dir / "b.pt")
    dom = cc.InputDomain.box(0.0, 1.0, shape=MLP_SHAPE)
    common = dict(model=zoo.ref(), compressed=zoo.ref(weights=zoo.dir / "b.pt"),
                  input_shape=MLP_SHAPE, search_steps=0)
    t = CertifyTask(domain=dom, methods=["path-metric", "bounds"], **common)
    assert t.methods == ("path-metric", "bounds")
    assert task_from_json(t.to_json()) == t and task_from_json(t.to_json()).key == t.key
    row = t.run()
    a = load_model(zoo.spec("make"), str(zoo.mlp_weights))
    b = load_model(zoo.spec("make"), str(zoo.dir / "b.pt"))
    cert = cc.certify(a, b, domain=dom, methods=("path-metric", "bounds"), search_steps=0)
    assert row["certified_bound"] == cert.bound and row["methods"] == "path-metric,bounds"
    assert row["domain"] == cert.domain and row["radius"] == 1.0
    plain = CertifyTask(radius=1.0, **common)
    assert "domain" not in plain._identity() and "methods" not in plain._identity()
    assert plain.key != t.key
    with pytest.raises(ConfigurationError, match="unknown certification method"):
        CertifyTask(radius=1.0, methods=["nope"], **common)
    with pytest.raises(ConfigurationError, match="either domain or radius"):
        CertifyTask(radius=1.0, domain=dom, **common)
    with pytest.raises(ConfigurationError, match="differs from the task.s input_shape"):
        CertifyTask(domain=cc.InputDomain.box(0.0, 1.0, shape=(1, 3)), **common)


def test_compressed_model_task_certifies_two_weight_files(zoo):
    torch.save({k: v * 0.9 for k, v in torch.load(zoo.mlp_weights).items()}, zoo.dir / "b.pt")
    t = CertifyTask(model=zoo.ref(), compressed=zoo.ref(weights=zoo.dir / "b.pt"),
                    input_shape=MLP_SHAPE, radius=1.0, search_steps=0)
    row = t.run()
    a = load_model(zoo.spec("make"), str(zoo.mlp_weights))
    b = load_model(zoo.spec("make"), str(zoo.dir / "b.pt"))
    assert row["certified_bound"] == cc.certify(a, b, MLP_SHAPE, 1.0, search_steps=0).bound
    assert row["compression"] == "model models.py:make"


def test_prune_task_row_is_the_pruning_report_row(zoo, tmp_path):
    model = load_model(zoo.spec("make_cnn"), str(zoo.cnn_weights))
    x = torch.rand(20, *CNN_SHAPE[1:]) * 2 - 1
    y = torch.randint(0, 3, (20,))
    import numpy as np

    np.savez(tmp_path / "ref.npz", x=x.numpy(), y=y.numpy())
    t = PruneTask(model=zoo.ref("make_cnn", "cnn"), input_shape=CNN_SHAPE, radius=1.0,
                  reference=DataRef(str(tmp_path / "ref.npz")), criterion="path-magnitude",
                  sparsity=0.3, search_steps=3, search_restarts=1)
    row = t.run()
    df = pruning_report(model, ("path-magnitude",), (0.3,), data=x.double(), labels=y,
                        input_shape=CNN_SHAPE, input_radius=1.0, search_steps=3,
                        search_restarts=1, progress=False)
    for col, want in df.iloc[0].items():
        got = row[col]
        assert got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got)), col
    assert row["dense_accuracy"] == df.attrs["dense_accuracy"]
    assert not math.isnan(row["accuracy"])


def test_quantize_task_rows(zoo):
    model = load_model(zoo.spec("make"), str(zoo.mlp_weights))
    common = dict(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0, search_steps=0)
    row = QuantizeTask(config={"bits": 4}, **common).run()
    _, cert = quantize(model, QuantConfig.uniform(model, 4), MLP_SHAPE, 1.0, search_steps=0)
    assert row["certified_bound"] == cert.bound
    assert row["bits"] == 4 and row["average_bits"] == 4.0 and row["mode"] == "config"
    assert row["size_bytes"] < row["float_size_bytes"]
    alloc = QuantizeTask(budget=row["certified_bound"] * 3, **common).run()
    assert alloc["mode"] == "budget" and alloc["certified_bound"] <= row["certified_bound"] * 3
    assert json.loads(alloc["bits_by_layer"]).keys() == {"fc1", "fc2"}


def test_files_and_relocation_keep_the_key(zoo, tmp_path):
    t = _prune(zoo)
    assert set(t.files()) == {str(zoo.models), str(zoo.mlp_weights)}
    new = tmp_path / "elsewhere"
    new.mkdir()
    shutil.copy(zoo.models, new / "models.py")
    shutil.copy(zoo.mlp_weights, new / "w.pt")
    r = t.relocated({str(zoo.models): str(new / "models.py"),
                     str(zoo.mlp_weights): str(new / "w.pt")})
    assert r.key == t.key and r.model.weights == str(new / "w.pt")
    assert r.run()["certified_bound"] == t.run()["certified_bound"]
