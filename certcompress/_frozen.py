"""An immutable mapping for the mappings inside frozen records (certificates, tier results).

A base module: it imports nothing from certcompress. ``FrozenMap`` is a read-only
:class:`collections.abc.Mapping` over a private dict: it compares equal to any mapping with
the same items, hashes when its values do, pickles and deep-copies (unlike
``types.MappingProxyType``, which does neither), and converts back with ``dict(m)`` for JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["FrozenMap", "freeze"]

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only mapping (see module doc): no item assignment, no ``update``."""

    __slots__ = ("_data",)
    _data: dict[K, V]

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        object.__setattr__(self, "_data", dict(items or {}))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._data,))


def freeze(items: Mapping[K, V] | None) -> FrozenMap[K, V]:
    """``items`` as a :class:`FrozenMap` (itself when it already is one)."""
    return items if isinstance(items, FrozenMap) else FrozenMap(items)
