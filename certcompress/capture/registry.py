"""The explicit adapter registry: module types, functions and tensor methods.

Filled by explicit calls (the built-in adapters in :func:`register_builtin_adapters`,
then each loaded plugin's ``register_adapters`` hook). No module scanning, no import
side effects. Module adapters are looked up along the module type's MRO, so a subclass
of ``nn.Conv2d`` is handled by the Conv2d adapter unless a more specific one exists, but
only when no class in between overrides ``forward`` (or another method that decides what
a call computes, :data:`CALL_METHODS`), or the adapter declares the subclass in its
``subclasses``. A subclass with its own ``forward`` is traced through instead, so the
graph is what its ``forward`` computes (docs/architecture.md, "Trace check").
Every entry records which source (``certcompress`` or a plugin) registered it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._attribution import Attributed
from ..errors import PluginError
from .adapters.base import Adapter

__all__ = ["AdapterRegistry", "Registration", "CALL_METHODS", "overriding_class"]

#: methods whose override changes what calling a module computes
CALL_METHODS = ("forward", "_conv_forward", "__call__", "_call_impl", "_wrapped_call_impl",
                "__getattr__", "__getattribute__")


def overriding_class(t: type, base: type) -> type | None:
    """The first class of ``t``'s MRO before ``base`` that defines one of
    :data:`CALL_METHODS`, or None when calling a ``t`` computes what ``base`` computes."""
    for cls in t.__mro__:
        if cls is base:
            return None
        if any(name in vars(cls) for name in CALL_METHODS):
            return cls
    return None


@dataclass(frozen=True)
class Registration:
    """One registry entry: the adapter and who registered it."""

    adapter: Adapter
    source: str


def _key_name(key: object) -> str:
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    if isinstance(key, str):
        return f"Tensor.{key}"
    name = getattr(key, "__qualname__", None) or getattr(key, "__name__", None)
    mod = getattr(key, "__module__", None)
    if name and mod:
        return f"{mod}.{name}"
    return str(key)


class AdapterRegistry(Attributed):
    """Maps module types, functions (including aten overloads) and method names to
    adapters."""

    def __init__(self) -> None:
        self._modules: dict[type, Registration] = {}
        self._functions: dict[object, Registration] = {}
        self._methods: dict[str, Registration] = {}
        self._source = "certcompress"
        # (module name, hook, source): registrations that wait for a library's import
        self._pending: list[tuple[str, Callable[[AdapterRegistry], None], str]] = []

    # ------------------------------------------------------------- registration
    def _check(self, adapter: Adapter, source: str, key: object) -> None:
        if not isinstance(adapter, Adapter):
            raise PluginError(
                f"{source}: cannot register {type(adapter).__name__!r} for {_key_name(key)}: "
                "adapters must be instances of certcompress.capture.Adapter"
            )

    def register_module(self, module_type: type[nn.Module], adapter: Adapter, *,
                        source: str | None = None, replace: bool = False) -> None:
        """Handle every module of ``module_type`` (and its subclasses) with ``adapter``."""
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise PluginError(f"{source or self._source}: {module_type!r} is not an nn.Module "
                              "subclass")
        src = source or self._source
        self._check(adapter, src, module_type)
        self._put(self._modules, module_type, Registration(adapter, src), replace)

    def register_function(self, targets: Iterable[Callable[..., Any]] | Callable[..., Any],
                          adapter: Adapter, *, source: str | None = None,
                          replace: bool = False) -> None:
        """Handle calls of each function (or aten overload) in ``targets``."""
        src = source or self._source
        items = targets if isinstance(targets, (list, tuple, set)) else [targets]
        for target in items:
            if not callable(target):
                raise PluginError(f"{src}: function target {target!r} is not callable")
            self._check(adapter, src, target)
            self._put(self._functions, target, Registration(adapter, src), replace)

    def register_method(self, names: Iterable[str] | str, adapter: Adapter, *,
                        source: str | None = None, replace: bool = False) -> None:
        """Handle ``tensor.<name>(...)`` calls."""
        src = source or self._source
        items = [names] if isinstance(names, str) else list(names)
        for name in items:
            self._check(adapter, src, name)
            self._put(self._methods, name, Registration(adapter, src), replace)

    def register_when_imported(self, module_name: str,
                               hook: Callable[[AdapterRegistry], None]) -> None:
        """Run ``hook(self)`` once ``module_name`` has been imported: at once if it is,
        else before the first lookup or listing after its import. For adapters of a heavy
        library's classes: a model holding one cannot exist before the library is
        imported, so registering them earlier only costs start-up time. The hook's
        registrations are attributed to whoever registers now."""
        if not isinstance(module_name, str) or not module_name or not callable(hook):
            raise PluginError(f"{self._source}: register_when_imported needs a module name "
                              f"and a callable, got {module_name!r}, {hook!r}")
        self._pending.append((module_name, hook, self._source))
        self._sync()

    def _sync(self) -> None:
        """Run the waiting hooks whose library is now imported."""
        if not self._pending:
            return
        ready = [p for p in self._pending if p[0] in sys.modules]
        if not ready:
            return
        self._pending = [p for p in self._pending if p[0] not in sys.modules]
        for _, hook, source in ready:
            with self.attributed_to(source):
                try:
                    hook(self)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"{source}: registering adapters once its library was "
                                      f"imported failed: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _put(table: dict[Any, Registration], key: object, reg: Registration,
             replace: bool) -> None:
        old = table.get(key)
        if old is not None and not replace and old.source != reg.source:
            raise PluginError(
                f"{reg.source}: {_key_name(key)} already has adapter '{old.adapter.name}' "
                f"from {old.source}; pass replace=True to override it"
            )
        table[key] = reg

    # ------------------------------------------------------------------ lookup
    def for_module(self, module: nn.Module) -> Registration | None:
        """The adapter for ``module``'s type or its nearest registered base class, unless
        a class in between overrides ``forward`` (see :meth:`overridden`)."""
        base, reg = self._nearest(type(module))
        if reg is None or self._override(type(module), base, reg) is not None:
            return None
        return reg

    def overridden(self, module: nn.Module) -> tuple[type, type] | None:
        """``(subclass, base)`` when the adapter registered for ``base`` does not apply to
        ``module`` because ``subclass`` (its type or a class in between) overrides
        ``forward`` and the adapter does not declare it; None otherwise."""
        base, reg = self._nearest(type(module))
        if reg is None:
            return None
        sub = self._override(type(module), base, reg)
        return None if sub is None else (sub, base)

    def _nearest(self, t: type) -> tuple[type, Registration | None]:
        self._sync()
        for cls in t.__mro__:
            reg = self._modules.get(cls)
            if reg is not None:
                return cls, reg
        return t, None

    @staticmethod
    def _override(t: type, base: type, reg: Registration) -> type | None:
        sub = overriding_class(t, base)
        if sub is None:
            return None
        declared = tuple(getattr(reg.adapter, "subclasses", ()))
        return None if any(issubclass(t, d) and issubclass(d, sub) for d in declared) else sub

    def for_function(self, target: object) -> Registration | None:
        self._sync()
        try:
            return self._functions.get(target)
        except TypeError:  # unhashable target
            return None

    def for_method(self, name: str) -> Registration | None:
        return self._methods.get(name)

    def has_module_adapter(self, module: nn.Module) -> bool:
        return self.for_module(module) is not None

    # ------------------------------------------------------------------ listing
    def entries(self) -> list[tuple[str, str, str, str]]:
        """Rows ``(kind, key, adapter, source)`` for docs and ``certcompress adapters``."""
        self._sync()
        rows = [("module", _key_name(k), r.adapter.name, r.source) for k, r in self._modules.items()]
        rows += [("function", _key_name(k), r.adapter.name, r.source)
                 for k, r in self._functions.items()]
        rows += [("method", _key_name(k), r.adapter.name, r.source) for k, r in self._methods.items()]
        return sorted(rows)

    def module_type_names(self) -> list[str]:
        self._sync()
        return sorted(k.__name__ for k in self._modules)

    def copy(self) -> AdapterRegistry:
        new = AdapterRegistry()
        new._modules = dict(self._modules)
        new._functions = dict(self._functions)
        new._methods = dict(self._methods)
        new._pending = list(self._pending)
        new._source = self._source
        return new
