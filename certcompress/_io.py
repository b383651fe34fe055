"""File I/O in one place: atomic output (a file is either written whole or not at all),
and reading text and JSON with errors that name what was read and where."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from .errors import ConfigurationError

# Temporary outputs are named ``.{target}.cc{pid}-{random}.tmp`` beside their target, so
# that a later run can tell the leftovers of a killed run (their process is gone) from
# the work in progress of a live one, and remove them.
_TMP_TAG = "cc"
_TMP_RE = re.compile(r"\.cc(\d+)-[A-Za-z0-9_]+\.tmp$")
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _respect_umask(path: Path, directory: bool = False) -> None:
    # mkstemp / mkdtemp create 0600 / 0700 whatever the umask; an output is meant to be
    # read like any other file the user writes (e.g. by a model server under another
    # user), so give it the permissions ``open()`` / ``mkdir()`` would have given it.
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders a killed run left beside ``target``
    (``.{name}.cc{pid}-*.tmp`` whose process no longer runs); returns what was removed.
    Temporaries of running processes are left alone."""
    t = Path(target)
    parent = t.parent if str(t.parent) else Path(".")
    prefix = f".{t.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        m = _TMP_RE.search(e.name[len(prefix) - 1:])
        if m is None or _pid_alive(int(m.group(1))):
            continue
        p = Path(e.path)
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{_TMP_TAG}{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched, so
    a reader never sees a half-written file. The parent directory must exist. The file
    gets the permissions the umask allows (as ``open()`` would give it), and the
    leftovers of a killed earlier run beside ``path`` are removed first.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(
            f"cannot write '{target}': directory '{parent}' does not exist; create it first"
        )
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _respect_umask(tmp_path)
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# ------------------------------------------------------------------ sets of files
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Callable[..., int] | None = None
with contextlib.suppress(Exception):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or the file system cannot."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], owned: Iterable[str] | None = None
               ) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``
    as one step, so a reader (or a run killed at any point) sees either the old complete
    set of files or the new one, never a mix.

    Where ``path`` already exists it is swapped with the new folder in one
    ``renameat2(RENAME_EXCHANGE)`` and the old one removed; where that call is missing,
    the old folder is renamed aside first (a kill between the two renames leaves the
    old set at ``.{name}.cc{pid}-*.old.tmp``). ``owned``: the only names an existing
    ``path`` may hold (what this command writes); a folder holding anything else is
    refused before anything is written, so no unrelated file is ever removed.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(
            f"cannot write '{target}': directory '{parent}' does not exist; create it first")
    check_replaceable_dir(target, owned)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=parent))
    try:
        _respect_umask(tmp, directory=True)
        yield tmp
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old set
        else:
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".old.tmp",
                                        dir=parent))
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable_dir(target: Path, owned: Iterable[str] | None) -> None:
    """Refuse an existing ``target`` that is not a folder, or (``owned`` given) holds
    names other than ``owned``: replacing it would delete them."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigurationError(f"output '{target}' exists and is not a directory; name a "
                                 "directory")
    if owned is None:
        return
    allowed = set(owned)
    foreign = sorted(e for e in os.listdir(target)
                     if e not in allowed and not _TMP_RE.search(e))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ConfigurationError(
            f"output directory '{target}' holds files this command did not write ({shown}); "
            "it is replaced as a whole, so name a new or empty directory, or one an earlier "
            "run of this command wrote")


def atomic_files(writers: Mapping[str | os.PathLike[str], Callable[[Path], object]]) -> list[Path]:
    """Write several files so that each appears whole: every writer ``fn(tmp_path)``
    runs first, into temporaries beside its target, and only when all succeeded are
    they renamed into place, one after another. A failure writes none of them. (Files
    in different folders cannot be renamed in one step: a kill during the final renames,
    a few microseconds, can leave some new and some old; use :func:`atomic_dir` where
    the set must be replaced as one.)"""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in writers.items():
            t = Path(target)
            parent = t.parent if str(t.parent) else Path(".")
            if not parent.is_dir():
                raise ConfigurationError(
                    f"cannot write '{t}': directory '{parent}' does not exist; create it first")
            remove_stale_temporaries(t)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(t), suffix=".tmp", dir=parent)
            os.close(fd)
            staged.append((Path(tmp), t))
            _respect_umask(Path(tmp))
            write(Path(tmp))
        for tmp_path, t in staged:
            os.replace(tmp_path, t)
    except BaseException:
        for tmp_path, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        raise
    return [t for _, t in staged]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _probe_writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``; else the reason (checked by
    creating and removing a file, so it holds for root and read-only mounts too)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".certcompress-probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return None


def check_outputs(outputs: Iterable[str | os.PathLike[str] | None],
                  inputs: Iterable[str | os.PathLike[str] | None] = (), *,
                  directories: Iterable[str | os.PathLike[str] | None] = (),
                  create_dirs: bool = False) -> None:
    """Fail *before any work* if an output cannot be written: ``outputs`` are files,
    ``directories`` output folders (created with their parents when ``create_dirs``,
    else their parent must exist). Refused, each with a
    :class:`~certcompress.errors.ConfigurationError` naming the path: a file output that
    is a directory, a missing or non-directory parent, a folder where no file can be
    created, an output that is (or resolves to, links included) one of ``inputs`` or
    another output. ``None`` entries are skipped."""
    files = [Path(p) for p in outputs if p is not None and str(p) != ""]
    dirs = [Path(p) for p in directories if p is not None and str(p) != ""]
    ins = [Path(p) for p in inputs if p is not None and str(p) != ""]
    every = files + dirs
    for i, out in enumerate(every):
        for src in ins:
            if _same_file(out, src) or (out in dirs and src.resolve().is_relative_to(
                    out.resolve())):
                raise ConfigurationError(
                    f"output '{out}' is the input '{src}'" if _same_file(out, src) else
                    f"output directory '{out}' holds the input '{src}' and would replace it")
        for other in every[:i]:
            if _same_file(out, other):
                raise ConfigurationError(f"two outputs are the same file: '{other}' and "
                                         f"'{out}'; name different files")
    for out in files:
        if out.is_dir():
            raise ConfigurationError(f"output '{out}' is a directory; name a file, e.g. "
                                     f"{out / 'certificate.json'}")
        _check_folder(out, out.parent if str(out.parent) else Path("."), create=False)
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise ConfigurationError(f"output '{d}' exists and is not a directory; name a "
                                     "directory")
        parent = d.parent if str(d.parent) else Path(".")
        if create_dirs and not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot create '{parent}' for output '{d}': "
                                         f"{exc.strerror or exc}") from None
        _check_folder(d, parent, create=False)


def model_input_files(*specs: str | None) -> list[str]:
    """The existing files named by CLI input arguments (a model spec ``FILE.py:make``
    names ``FILE.py``), for :func:`check_outputs`' ``inputs``."""
    found: list[str] = []
    for spec in specs:
        if not spec:
            continue
        for cand in (spec, spec.rsplit(":", 1)[0] if ":" in spec else None):
            if cand and Path(cand).exists():
                found.append(cand)
                break
    return found


def _check_folder(out: Path, parent: Path, create: bool) -> None:
    if parent.exists() and not parent.is_dir():
        raise ConfigurationError(f"cannot write '{out}': '{parent}' is not a directory")
    if not parent.is_dir():
        raise ConfigurationError(f"cannot write '{out}': directory '{parent}' does not exist; "
                                 "create it first")
    why = _probe_writable(parent)
    if why is not None:
        raise ConfigurationError(f"cannot write '{out}': directory '{parent}' is not writable "
                                 f"({why}); name another output or fix its permissions "
                                 "(checked before any work)")


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
