"""File I/O in one place: atomic output (a file is either written whole or not at all),
and reading text and JSON with errors that name what was read and where."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched, so
    a reader never sees a half-written file. The parent directory must exist.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"cannot write '{target}': directory '{parent}' does not exist; create it first"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[str]]:
    """Open a text file for writing that appears at ``path`` only when closed cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding="utf-8") as fh:
        yield fh


class JsonRecord:
    """``to_json``, atomic ``save`` and ``str()`` for a frozen result with ``to_dict`` and
    ``summary`` (certificates and reports): sorted keys, and NaN or infinity refused
    rather than written as non-standard JSON."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (never half-written); returns the path."""
        return atomic_write_text(path, self.to_json() + "\n")


def read_text_file(path: str | os.PathLike[str], what: str, error: type[Exception]) -> str:
    """The UTF-8 text of ``path``. A missing path, a directory, an unreadable file or
    one that is not text raises ``error`` naming ``what`` and the path."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} '{p}' does not exist" if not p.exists()
                    else f"{what} '{p}' is not a file")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} '{p}': {exc}") from None


def parse_json(text: str, what: str, error: type[Exception], hint: str = "") -> Any:
    """``json.loads(text)``; invalid JSON raises ``error`` naming ``what`` (and ``hint``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc}){hint}") from None
