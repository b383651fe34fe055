"""The public API of certcompress.meanfield is frozen by a golden signature file.

After a deliberate API change: MF_UPDATE_GOLDEN=1 pytest tests/meanfield/test_mf_api.py
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

from certcompress import meanfield as mf

GOLDEN = Path(__file__).with_name("mf_api_signatures.txt")


def _render() -> str:
    lines = []
    for name in sorted(mf.__all__):
        obj = getattr(mf, name)
        if dataclasses.is_dataclass(obj) and isinstance(obj, type):
            fields = ", ".join(f"{f.name}: {f.type}" for f in dataclasses.fields(obj))
            lines.append(f"dataclass {name}({fields})")
        elif isinstance(obj, type):
            lines.append(f"class {name}{inspect.signature(obj)}")
        elif isinstance(obj, frozenset | set):  # sorted: a set's order follows string hashing
            lines.append(f"{name}: {type(obj).__name__} = {sorted(obj)!r}")
        elif callable(obj):
            lines.append(f"def {name}{inspect.signature(obj)}")
        else:
            lines.append(f"{name}: {type(obj).__name__} = {obj!r}")
    return "\n".join(lines) + "\n"


def test_public_api_matches_golden_file():
    text = _render()
    if os.environ.get("MF_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_all_names_exist_and_results_are_frozen():
    assert len(set(mf.__all__)) == len(mf.__all__)
    for name in mf.__all__:
        assert hasattr(mf, name), name
    for cls in (mf.MeanFieldEstimate, mf.AuditReport, mf.TrainRun, mf.KLEstimate,
                mf.SpearmanResult, mf.EstimateOptions, mf.SweepOptions, mf.GramPoint):
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
