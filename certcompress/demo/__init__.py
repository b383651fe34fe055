"""The demo and its fixtures, kept out of the library modules (``certcompress demo``, the
README's main job).

- :mod:`certcompress.demo.run`: :func:`run_demo`, the end-to-end example, and
  :func:`save_artifacts` (what the README's CLI walk-through continues from);
- :mod:`certcompress.demo.digits`: scikit-learn's digits and the small CNN trained on it
  (``certcompress.demo.digits:DigitsCNN`` is the demo's model spec);
- :mod:`certcompress.demo.pruning`, :mod:`~certcompress.demo.quantization`,
  :mod:`~certcompress.demo.export`: the demo's sections, one per library package.

The names below are imported on first use, so ``import certcompress.demo.digits`` (a
test fixture) does not load the pruning, quantization and export stacks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import INPUT_SHAPE, MODEL_SPEC, RADIUS, run_demo, save_artifacts

__all__ = ["INPUT_SHAPE", "MODEL_SPEC", "RADIUS", "run_demo", "save_artifacts"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".run", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
