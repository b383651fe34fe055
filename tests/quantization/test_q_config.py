"""QuantConfig and QuantGrid: construction, validation with errors naming the field,
sizes, and JSON round trips (the grid's codes recovered bit for bit from the weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from certcompress.compress.quantization import LayerQuant, QuantConfig, QuantGrid, quantization_grid
from certcompress.errors import ConfigurationError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def test_uniform_covers_every_affine_layer_and_counts_bits() -> None:
    m = _model()
    cfg = QuantConfig.uniform(m, 4, "per-tensor")
    assert cfg.bits == {"0": 4, "4": 4}
    assert cfg.layers["0"] == LayerQuant(4, "per-tensor")
    assert cfg.total_weight_bits(m) == 4 * (72 + 48)
    assert cfg.average_bits(m) == 4.0
    mixed = cfg.with_bits("4", 8)
    assert mixed.average_bits(m) == pytest.approx((4 * 72 + 8 * 48) / 120)
    assert cfg.bits["4"] == 4  # frozen: with_bits made a copy
    # size: packed codes + one float32 scale per tensor; BN and biases at 4 bytes
    other = sum(t.numel() for t in [m[0].bias, m[1].weight, m[1].bias, m[1].running_mean,
                                    m[1].running_var, m[4].bias]) * 4 + 8  # + num_batches
    assert cfg.size_bytes(m) == 36 + 4 + 24 + 4 + other
    per_channel = QuantConfig.uniform(m, 4)
    assert per_channel.size_bytes(m) == 36 + 16 + 24 + 12 + other


def test_unknown_layers_are_named_with_the_available_ones() -> None:
    m = _model()
    cfg = QuantConfig.from_bits({"0": 8, "fc9": 4, "1": 8})
    with pytest.raises(ConfigurationError, match=r"\['fc9', '1'\].*affine layers are: 0, 4"):
        cfg.validate(m)
    with pytest.raises(ConfigurationError, match="not in this configuration"):
        QuantConfig.uniform(m).with_bits("fc9", 4)


def test_json_round_trip_and_validation_names_the_field(tmp_path: Path) -> None:
    m = _model()
    cfg = QuantConfig.from_bits({"0": 3, "4": 16}, "per-tensor", bias_bits=8)
    path = cfg.save(tmp_path / "q.json")
    assert QuantConfig.load(path, m) == cfg
    good = cfg.to_dict()
    cases = [
        ({**good, "schema": "x"}, "'schema'"),
        ({**good, "extra": 1}, "unknown field"),
        ({**good, "layers": {"0": {"bits": 1}}}, r"'layers\.0\.bits'"),
        ({**good, "layers": {"0": {"bits": 8, "granularity": "per-row"}}},
         r"'layers\.0\.granularity'"),
        ({**good, "layers": {"0": {"granularity": "per-tensor"}}}, r"'layers\.0\.bits' is missing"),
        ({**good, "layers": {"0": {"bits": 8, "bitz": 2}}}, "unknown field"),
        ({**good, "bias_bits": 33}, "'bias_bits'"),
        ({**good, "layers": [1, 2]}, "'layers' must be an object"),
    ]
    for data, msg in cases:
        with pytest.raises(ConfigurationError, match=msg):
            QuantConfig.from_json(json.dumps(data))
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        QuantConfig.from_json("{")
    bad = QuantConfig.from_bits({"nope": 4})
    bad_path = bad.save(tmp_path / "bad.json")
    with pytest.raises(ConfigurationError, match="nope"):
        QuantConfig.load(bad_path, m)
    # files that cannot be read as text: named, with the path, not a traceback
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ConfigurationError, match="cannot read quantization config .*binary"):
        QuantConfig.load(tmp_path / "binary.json")
    with pytest.raises(ConfigurationError, match="quantization config .* is not a file"):
        QuantConfig.load(tmp_path)
    with pytest.raises(ConfigurationError, match="quantization config .* does not exist"):
        QuantConfig.load(tmp_path / "absent.json")
    with pytest.raises(ConfigurationError, match="quantization grid .* does not exist"):
        QuantGrid.load(tmp_path / "absent.json", m)


def test_grid_json_recovers_the_codes_from_the_weights(tmp_path: Path) -> None:
    m = _model()
    grid = quantization_grid(m, QuantConfig.from_bits({"0": 3, "4": 16}, bias_bits=8))
    q = grid.apply(m)
    grid.check(q)
    path = grid.save(tmp_path / "grid.json")
    state = {k: v.clone() for k, v in q.state_dict().items()}
    back = QuantGrid.load(path, state)
    assert back.config == grid.config and set(back.tensors) == set(grid.tensors)
    for name, t in grid.tensors.items():
        r = back.tensors[name]
        assert torch.equal(r.codes, t.codes) and torch.equal(r.scale, t.scale)
        assert (r.bits, r.axis, r.layer, r.granularity) == (t.bits, t.axis, t.layer, t.granularity)
    # a weight off its grid is refused, naming it
    state["0.weight"].view(-1)[0] = torch.nextafter(state["0.weight"].view(-1)[0],
                                                    torch.tensor(10.0))
    with pytest.raises(ConfigurationError, match=r"tensors\.0\.weight.*not on its grid"):
        QuantGrid.load(path, state)
    with pytest.raises(ConfigurationError, match="not on its quantization grid"):
        grid.check(m)

