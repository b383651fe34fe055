"""Who registered what: the one mixin the extension-point registries share (adapters,
lowerings, tiers), so that an error or a listing can name the plugin behind an entry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["Attributed", "BUILTIN_SOURCE"]

BUILTIN_SOURCE = "certcompress"


class Attributed:
    """``_source`` names whoever registers now (:data:`BUILTIN_SOURCE` by default);
    ``attributed_to(source)`` sets it for the registrations inside a ``with`` block."""

    _source: str = BUILTIN_SOURCE

    @contextlib.contextmanager
    def attributed_to(self, source: str) -> Iterator[None]:
        """Registrations inside the block are recorded as coming from ``source``."""
        old, self._source = self._source, source
        try:
            yield
        finally:
            self._source = old
