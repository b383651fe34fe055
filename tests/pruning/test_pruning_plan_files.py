"""Plan files: JSON and YAML round trips, masks and indices, and a clear error naming the
field for missing fields, unknown fields and layers, ratios outside [0, 1] and wrong
types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pruning_nets import res_bn_net

import certcompress as cc
from certcompress.compress.pruning import LayerRule, PruningPlan, prune

SHAPE = (1, 1, 4, 4)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_round_trip_preserves_masks(tmp_path: Path, suffix: str) -> None:
    model = res_bn_net()
    for plan in (PruningPlan.path_magnitude(model, 0.4, input_shape=SHAPE, exclude=["fc"]),
                 PruningPlan.magnitude(model, 0.3, scope="per-layer"),
                 PruningPlan.per_layer(model, {"conv1": 0.5, "fc": (0.25, "random")}, seed=3)):
        path = plan.save(tmp_path / f"plan{suffix}")
        back = PruningPlan.load(path)
        a, b = plan.masks(model), back.masks(model)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert back.to_dict() == plan.to_dict()


def test_mask_and_index_rules(tmp_path: Path) -> None:
    model = res_bn_net()
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 3] = False
    data = {"scope": "per-layer", "layers": {
        "fc": {"mask": mask.int().tolist()},
        "conv1": {"pruned_indices": [0, 5, 5, 26]}}}
    (tmp_path / "p.json").write_text(json.dumps(data))
    plan = PruningPlan.load(tmp_path / "p.json")
    masks = plan.masks(model)
    assert torch.equal(masks["fc"], mask)
    assert int((~masks["conv1"]).sum()) == 3 and not bool(masks["conv1"].reshape(-1)[26])
    assert bool(masks["conv2"].all())
    pruned, cert = prune(model, plan, SHAPE, 1.0, search_steps=0)
    assert cert.changed_parameters == 4
    assert float(pruned.fc.weight.detach()[1, 3]) == 0.0
    back = PruningPlan.from_json(plan.to_json())
    assert torch.equal(back.masks(model)["conv1"], masks["conv1"])


BAD_FILES = [
    ({"criterion": "magnitude", "sparsity": 0.5}, r"'scope' is missing"),
    ({"scope": "global", "criterion": "magnitude"}, r"'sparsity' is missing"),
    ({"scope": "global", "sparsity": 0.5}, r"'criterion' is missing"),
    ({"scope": "per-layer"}, r"'layers' is missing"),
    ({"scope": "per-layer", "layers": {"fc": {"ratio": 0.5}}}, r"layers\['fc'\]\.criterion is missing"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 0.5, "sparsty": 1},
     r"'sparsty' is unknown"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratoi": 0.5}}},
     r"layers\['fc'\]\.ratoi is unknown"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 1.5}, r"sparsity must be in \[0, 1\]"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratio": -0.1}}},
     r"layers\['fc'\]\.ratio must be in \[0, 1\]"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": "0.5"},
     r"sparsity must be a number in \[0, 1\], got a string"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": True}, r"got a boolean"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratio": [0.5]}}},
     r"layers\['fc'\]\.ratio must be a number"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": ["fc"]}, r"layers must be a mapping"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": 0.5}},
     r"layers\['fc'\] must be a mapping"),
    ({"scope": "global", "criterion": "largest", "sparsity": 0.5}, r"criterion = 'largest' is not"),
    ({"scope": "global", "criterion": 3, "sparsity": 0.5}, r"criterion must be a string"),
    ({"scope": "everywhere", "criterion": "magnitude", "sparsity": 0.5}, r"scope must be one of"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 0.5, "exclude": "fc"},
     r"exclude must be a list"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 0.5, "seed": 1.5},
     r"seed must be an integer"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 0.5, "input_shape": [1, 0]},
     r"input_shape\[1\] must be >= 1"),
    ({"scope": "per-layer", "layers": {"fc": {"mask": [[1, 2]]}}}, r"layers\['fc'\]\.mask entries"),
    ({"scope": "per-layer", "layers": {"fc": {"mask": [[1], [1, 0]]}}},
     r"layers\['fc'\]\.mask must be rectangular"),
    ({"scope": "per-layer", "layers": {"fc": {"pruned_indices": [-1]}}},
     r"layers\['fc'\]\.pruned_indices\[0\] must be >= 0"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratio": 0.5, "mask": [[1]]}}},
     r"layers\['fc'\] needs exactly one of"),
    ([1, 2], r"must be a mapping \(JSON object\)"),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES)
def test_bad_plan_files_name_the_field(tmp_path: Path, data, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(cc.ConfigurationError, match=message) as info:
        PruningPlan.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("plan", "message"), [
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"conv3": {"ratio": 0.5}}},
     r"layers\['conv3'\]: no prunable layer named 'conv3'.*conv1, conv2, fc"),
    ({"scope": "per-layer", "layers": {"fc": {"mask": [[1, 0]]}}},
     r"layers\['fc'\]\.mask has shape \(1, 2\); the weight fc.weight has shape \(4, 12\)"),
    ({"scope": "per-layer", "layers": {"fc": {"pruned_indices": [48]}}},
     r"layers\['fc'\]\.pruned_indices: index 48 is outside \[0, 48\)"),
    ({"scope": "global", "criterion": "magnitude", "sparsity": 0.5, "exclude": ["bn1"]},
     r"exclude\[0\] = 'bn1' matches no prunable layer"),
    ({"scope": "per-layer", "criterion": "magnitude", "layers": {"fc": {"ratio": 0.5}},
      "exclude": ["fc"]}, r"layers\['fc'\] has a rule but is also excluded"),
])
def test_plans_that_do_not_fit_the_model(plan, message: str) -> None:
    model = res_bn_net()
    p = PruningPlan.from_dict(plan)
    with pytest.raises(cc.ConfigurationError, match=message):
        p.masks(model)


def test_invalid_yaml_and_json_text(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("scope: [global\n")
    with pytest.raises(cc.ConfigurationError, match="not valid YAML"):
        PruningPlan.load(tmp_path / "a.yaml")
    (tmp_path / "a.json").write_text("{scope: global}")
    with pytest.raises(cc.ConfigurationError, match="not valid JSON"):
        PruningPlan.load(tmp_path / "a.json")
    with pytest.raises(cc.ConfigurationError, match="does not exist"):
        PruningPlan.load(tmp_path / "missing.json")


def test_python_construction_is_validated_too() -> None:
    with pytest.raises(cc.ConfigurationError, match=r"layers\['x'\]\.ratio must be in"):
        PruningPlan("per-layer", layers={"x": LayerRule(ratio=2.0)})
    with pytest.raises(cc.ConfigurationError, match="sparsity is only for scope 'global'"):
        PruningPlan("per-layer", sparsity=0.5)
    with pytest.raises(cc.ConfigurationError, match="sparsity must be in"):
        PruningPlan.magnitude(res_bn_net(), 2.0)
