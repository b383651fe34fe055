"""Step 4 of the tutorial: the plugin, which registers the adapter and the lowering.

A plugin is a subclass of :class:`certcompress.capture.Plugin` with a unique ``name``.
Every hook is optional:

``register_adapters(registry)``
    Add adapters: ``registry.register_module(ModuleType, adapter)`` (looked up along
    the module type's MRO, so subclasses are covered too),
    ``registry.register_function(fn_or_list, adapter)`` for functions and aten
    overloads, ``registry.register_method("name", adapter)`` for ``tensor.name(...)``.
    Registering a key another source already owns is refused unless
    ``replace=True``; each registration records this plugin as its source.
``register_lowerings(registry)``
    Add bound-propagation lowerings for the plugin's own op kinds:
    ``registry.register(OpType, fn)`` (step 3, lowering.py). Without one, the bounds
    tier (run by ``certify(..., domain=...)`` and by default) refuses models using the op.
``resolve_model(spec)``
    Build models named ``"<prefix>:..."`` for each prefix in ``model_prefixes``
    (see certcompress-torchvision). This plugin names no models.
``input_spec(model)``
    Input shape and radius for the model families the plugin knows. None here.

certcompress finds the plugin through the entry point in pyproject.toml, or when a
user names it: ``certcompress.load_plugin("certcompress_example:ExamplePlugin")``.
"""

from __future__ import annotations

from certcompress.capture import AdapterRegistry, LoweringTable, Plugin

from .adapter import ScaledReLUAdapter
from .lowering import lower_scaled_relu
from .module import ScaledReLU
from .op import ScaledReLUOp

__all__ = ["ExamplePlugin"]


class ExamplePlugin(Plugin):
    """Adds the adapter for :class:`ScaledReLU` and the lowering of its op."""

    name = "certcompress-example"

    def register_adapters(self, registry: AdapterRegistry) -> None:
        registry.register_module(ScaledReLU, ScaledReLUAdapter())

    def register_lowerings(self, registry: LoweringTable) -> None:
        registry.register(ScaledReLUOp, lower_scaled_relu)
