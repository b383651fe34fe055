"""Model capture: torch.fx / torch.export graphs through adapters into the IR."""

from .adapters.base import Adapter, Converted, MultiOutput, Unsupported
from .plugins import (
    ENTRY_POINT_GROUP,
    LoadedPlugin,
    LoweringTable,
    Plugin,
    PluginManager,
    default_registry,
    load_plugin,
    plugin_manager,
)
from .registry import AdapterRegistry, Registration
from .tracer import ConvertContext, check_eval_mode, trace

__all__ = ["Adapter", "AdapterRegistry", "ConvertContext", "Converted", "ENTRY_POINT_GROUP",
           "LoadedPlugin", "LoweringTable", "MultiOutput", "Plugin", "PluginManager", "Registration",
           "Unsupported", "check_eval_mode", "default_registry", "load_plugin",
           "plugin_manager", "trace"]
