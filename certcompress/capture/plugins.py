"""Plugins: extra adapters, bound-propagation lowerings, model resolvers, input specs and
certification tiers, found through the ``certcompress.plugins`` entry-point group or
named explicitly.

A plugin is a :class:`Plugin` subclass (or instance). It is loaded only when it is
installed (its distribution declares the entry point) or when a user names it
(``load_plugin("package.module:Attr")``, CLI ``--plugin``). Registration is validated;
an error names the plugin and the reason. Each registry entry records which plugin
supplied it (``certcompress adapters`` lists them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from ..domain import InputSpec
from ..errors import PluginError
from .registry import AdapterRegistry

if TYPE_CHECKING:  # the tier registry lives in a higher layer (certcompress.bounds.tiers)
    from ..bounds.tiers import TierRegistry

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "LoweringTable", "PluginManager", "LoadedPlugin",
           "default_registry",
           "plugin_manager", "load_plugin", "register_builtin_adapters"]

ENTRY_POINT_GROUP = "certcompress.plugins"


class LoweringTable(Protocol):
    """What ``Plugin.register_lowerings`` receives: the bounds tier's
    ``certcompress.bounds.propagation.lowering.LoweringRegistry`` (named structurally
    here, because the capture layer sits below the bounds layer)."""

    def register(self, op_type: type[Any], fn: Callable[..., int], *,
                 replace: bool = False) -> None: ...


class Plugin:
    """Base class of certcompress plugins. Override any hook; the defaults do nothing.

    Hooks:
      ``register_adapters(registry)``: add adapters for new module types or functions.
      ``register_lowerings(registry)``: add bound-propagation lowerings for the plugin's
      own IR op kinds (``registry.register(OpType, fn)``), so that the bounds tier
      accepts them; called when the bounds tier first lowers a graph after the plugin
      was loaded (docs/plugins.md).
      ``resolve_model(spec)``: build the model for ``"<prefix>:<rest>"`` when ``prefix``
      is in ``model_prefixes`` (e.g. ``torchvision:resnet18``); return None otherwise.
      ``input_spec(model)``: the input shape and radius for models this plugin knows.
      ``register_tiers(registry)``: add certification tiers (``registry.register(tier)``,
      docs/adding-a-tier.md); called when the tier registry first sees the plugin.
    """

    name: str = "unnamed-plugin"
    model_prefixes: tuple[str, ...] = ()

    def register_adapters(self, registry: AdapterRegistry) -> None:
        """Register adapters with ``registry.register_module/function/method``."""

    def register_lowerings(self, registry: LoweringTable) -> None:
        """Register lowerings with ``registry.register(op_type, fn)``."""

    def resolve_model(self, spec: str) -> nn.Module | None:
        """Build a model from ``spec`` (``prefix:rest``), or None if not this plugin's."""
        return None

    def input_spec(self, model: nn.Module) -> InputSpec | None:
        """The input spec of ``model`` if this plugin knows its family."""
        return None

    def register_tiers(self, registry: TierRegistry) -> None:
        """Register certification tiers with ``registry.register(tier)``."""


@dataclass(frozen=True)
class LoadedPlugin:
    plugin: Plugin
    source: str  # distribution and entry point, or "explicit: module:attr"


def register_builtin_adapters(registry: AdapterRegistry) -> None:
    """The adapters certcompress ships, one call per op-family file."""
    from .adapters import activations, affine, pooling, wiring

    for family in (affine, activations, pooling, wiring):
        family.register(registry)


class PluginManager:
    """Holds the registry and the loaded plugins."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.registry = AdapterRegistry()
        register_builtin_adapters(self.registry)
        self.plugins: list[LoadedPlugin] = []
        if load_entry_points:
            self.load_entry_points()

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            source = f"{dist.name if dist else '?'} (entry point {ep.name} = {ep.value})"
            if any(p.source == source for p in self.plugins):
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin entry point '{ep.name}' ({ep.value}) failed to "
                                  f"import: {type(exc).__name__}: {exc}") from exc
            self.add(obj, source)

    def add(self, obj: object, source: str) -> Plugin:
        """Validate and register a plugin object (a Plugin subclass or instance)."""
        plugin: object = obj() if isinstance(obj, type) and issubclass(obj, Plugin) else obj
        if not isinstance(plugin, Plugin):
            raise PluginError(f"{source}: {obj!r} is not a certcompress.capture.Plugin subclass "
                              "or instance")
        if not isinstance(plugin.name, str) or not plugin.name:
            raise PluginError(f"{source}: plugin has no name")
        if any(p.plugin.name == plugin.name for p in self.plugins):
            raise PluginError(f"{source}: a plugin named '{plugin.name}' is already loaded")
        try:
            with self.registry.attributed_to(plugin.name):
                plugin.register_adapters(self.registry)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{plugin.name}' ({source}) failed in register_adapters: "
                              f"{type(exc).__name__}: {exc}") from exc
        self.plugins.append(LoadedPlugin(plugin, source))
        return plugin

    def load_path(self, spec: str) -> Plugin:
        """Load a plugin named explicitly as ``package.module:Attr``."""
        mod_name, _, attr = spec.partition(":")
        if not mod_name or not attr:
            raise PluginError(f"plugin '{spec}': expected 'package.module:Attribute'")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise PluginError(f"plugin '{spec}': cannot import {mod_name}: {exc}") from exc
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise PluginError(f"plugin '{spec}': {mod_name} has no attribute '{attr}'") from None
        return self.add(obj, f"explicit: {spec}")

    def resolve_model(self, spec: str) -> nn.Module | None:
        prefix = spec.split(":", 1)[0]
        for lp in self.plugins:
            if prefix in lp.plugin.model_prefixes:
                return lp.plugin.resolve_model(spec)
        return None

    def prefixes(self) -> list[str]:
        return sorted(p for lp in self.plugins for p in lp.plugin.model_prefixes)

    def input_spec(self, model: nn.Module) -> InputSpec | None:
        for lp in self.plugins:
            spec = lp.plugin.input_spec(model)
            if spec is not None:
                return spec
        return None


_lock = threading.Lock()
_manager: PluginManager | None = None


def plugin_manager() -> PluginManager:
    """The process-wide manager: built-in adapters plus installed plugins (loaded once)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def default_registry() -> AdapterRegistry:
    return plugin_manager().registry


def load_plugin(spec: str) -> Plugin:
    """Load a plugin by explicit name ``package.module:Attr`` into the default manager."""
    return plugin_manager().load_path(spec)
