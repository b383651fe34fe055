"""The README job's pruning section (demo_section) on an untrained digits CNN."""

from __future__ import annotations

from pathlib import Path

import torch

from certcompress.compress.pruning import PruningPlan
from certcompress.demo.digits import DigitsCNN, load_digits
from certcompress.demo.pruning import demo_section


def test_demo_section_prints_plan_sensitivity_and_search(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DigitsCNN(channels=4).eval()
    data = load_digits()
    lines: list[str] = []
    res = demo_section(model, data.x_test[:64], labels=data.y_test[:64], sparsity=0.4,
                       out_dir=tmp_path, search_steps=3, print_fn=lines.append)
    text = "\n".join(lines)
    assert "certified bound" in text and "budget search" in text and "conv2" in text
    assert res.search.bound <= res.budget
    assert res.search.next_bound is None or res.search.next_bound > res.budget
    assert res.certificate.measurements.deviation_max <= res.certificate.bound
    assert res.dense_accuracy is not None and 0.0 <= res.pruned_accuracy <= 1.0
    back = PruningPlan.load(tmp_path / "budget_plan.json")
    assert back.sparsity == res.search.plan.sparsity
    assert (tmp_path / "pruning_certificate.json").is_file()
