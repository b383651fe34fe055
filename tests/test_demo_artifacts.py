"""The demo leaves what the README's CLI walk-through needs: weights that load through the
model spec it names (with ``weights_only=True``) and the held-out test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from certcompress.demo import MODEL_SPEC, save_artifacts
from certcompress.demo.digits import DigitsCNN, load_digits
from certcompress.loading import load_model, load_reference_inputs


def test_saved_model_and_data_load_through_the_cli_paths(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    data = load_digits(seed=0)
    weights, test = save_artifacts(model, data, tmp_path)
    again = load_model(MODEL_SPEC, str(weights))
    assert isinstance(again, torch.nn.Module)
    x = data.x_test[:5]
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))
    ref = load_reference_inputs(str(test), (1, 1, 8, 8))
    assert torch.equal(ref.to(data.x_test.dtype), data.x_test)
    with np.load(test) as npz:
        assert np.array_equal(npz["y"], data.y_test.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_test.npz", "model.pt"]
