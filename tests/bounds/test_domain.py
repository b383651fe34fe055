"""InputDomain: constructors, validation, queries and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError


def test_box_scalar_and_tensor_bounds() -> None:
    d = InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    assert d.bounds_shape == () and d.radius == 1.0
    assert d.lower_tensor().shape == (1, 1, 8, 8)
    lo = torch.linspace(-2, 0, 4).reshape(1, 4)
    e = InputDomain.box(lo, 0.5, shape=(1, 4))
    assert e.bounds_shape == (1, 4) and e.radius == 2.0
    assert torch.equal(e.lower_tensor(), lo.double())
    assert torch.equal(e.upper_tensor(), torch.full((1, 4), 0.5, dtype=torch.float64))
    assert "x in [-2, 0.5]" in e.describe()


def test_from_data_and_normalization() -> None:
    x = torch.rand(20, 3, 2, 2)
    d = InputDomain.from_data(x)
    assert d.shape == (1, 3, 2, 2) and bool(d.contains(x).all())
    assert float(d.lower_tensor().min()) == pytest.approx(float(x.min()))
    s = InputDomain.from_data(np.asarray(x), per_feature=False, margin=0.5)
    assert s.bounds_shape == () and s.lower[0] < float(x.min())
    n = InputDomain.from_normalization(0.0, 1.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                       (1, 3, 4, 4))
    assert n.bounds_shape == (1, 3, 1, 1)
    assert n.radius == pytest.approx((1 - 0.406) / 0.225)
    assert n.lower_tensor()[0, 0, 0, 0] == pytest.approx(-0.485 / 0.229)
    samples = n.sample(50, torch.Generator().manual_seed(0))
    assert bool(n.contains(samples).all())
    assert not bool(n.contains(samples + 10).any())


def test_frozen_and_json_round_trip() -> None:
    d = InputDomain.box(torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 2.0]]), shape=(1, 2))
    with pytest.raises(AttributeError):
        d.lower = (0.0,)  # type: ignore[misc]
    back = InputDomain.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d and hash(back) == hash(d)


@pytest.mark.parametrize("kwargs, match", [
    ({"lower": 1.0, "upper": 0.0, "shape": (1, 2)}, "exceeds"),
    ({"lower": float("nan"), "upper": 0.0, "shape": (1, 2)}, "finite"),
    ({"lower": torch.zeros(3), "upper": 1.0, "shape": (1, 2)}, "broadcast"),
    ({"lower": torch.zeros(2, 2), "upper": 1.0, "shape": (1, 2)}, "larger"),
    ({"lower": 0.0, "upper": 1.0, "shape": (1, 0)}, "positive"),
])
def test_invalid_boxes_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        InputDomain.box(**kwargs)


def test_invalid_inputs_elsewhere() -> None:
    with pytest.raises(ConfigurationError, match="std must be positive"):
        InputDomain.from_normalization(0, 1, [0.5], [0.0], (1, 1, 2, 2))
    with pytest.raises(ConfigurationError, match="shape"):
        InputDomain.from_normalization(0, 1, [0.5, 0.5], [1.0, 1.0], (1, 3, 2, 2))
    with pytest.raises(ConfigurationError, match="non-empty"):
        InputDomain.from_data(torch.zeros(0, 3))
    with pytest.raises(ConfigurationError, match="missing"):
        InputDomain.from_dict({"lower": [0.0]})
    with pytest.raises(ConfigurationError, match="unknown"):
        InputDomain.from_dict({**InputDomain.box(0, 1, shape=(1, 1)).to_dict(), "x": 1})
