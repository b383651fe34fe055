"""The tutorial certcompress plugin: support a module the core does not know.

Read the files in order: module.py (the module, ``scale * relu(x)``), op.py (the IR op
and its contract), adapter.py (node -> op), lowering.py (op -> bound-propagation
primitives), plugin.py (registration), and pyproject.toml (the entry point). docs/adding-an-adapter.md walks through the same
steps.
"""

from __future__ import annotations

from .adapter import ScaledReLUAdapter
from .lowering import lower_scaled_relu
from .module import ScaledReLU
from .op import ScaledReLUOp
from .plugin import ExamplePlugin

__all__ = ["ExamplePlugin", "ScaledReLU", "ScaledReLUAdapter", "ScaledReLUOp",
           "lower_scaled_relu"]
