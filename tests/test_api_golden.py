"""The public API (``certcompress.__all__``) against a golden text file, so that every
change to a public signature is deliberate: update the file in the same change.

Regenerate with ``CERTCOMPRESS_UPDATE_GOLDEN=1 pytest tests/test_api_golden.py``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import certcompress

GOLDEN = Path(__file__).parent / "golden" / "public_api.txt"
HEADER = ("# Public API of certcompress (certcompress.__all__), one line per name.\n"
          "# Regenerate: CERTCOMPRESS_UPDATE_GOLDEN=1 pytest tests/test_api_golden.py\n")


def _describe(name: str) -> str:
    obj = getattr(certcompress, name)
    if inspect.isclass(obj):
        bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
        return f"class {name}({bases})" if bases else f"class {name}"
    if callable(obj):
        return f"def {name}{inspect.signature(obj)}"
    return f"{name}: {type(obj).__name__}"


def public_api() -> str:
    return HEADER + "".join(f"{_describe(n)}\n" for n in sorted(certcompress.__all__))


def test_public_api_matches_golden() -> None:
    current = public_api()
    if os.environ.get("CERTCOMPRESS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(current, encoding="utf-8")
    golden = GOLDEN.read_text(encoding="utf-8") if GOLDEN.is_file() else ""
    if current != golden:
        old, new = set(golden.splitlines()), set(current.splitlines())
        diff = [f"- {line}" for line in sorted(old - new)] + \
            [f"+ {line}" for line in sorted(new - old)]
        raise AssertionError(
            "the public API differs from tests/golden/public_api.txt:\n" + "\n".join(diff)
            + "\nIf the change is deliberate, regenerate the file with "
            "CERTCOMPRESS_UPDATE_GOLDEN=1 pytest tests/test_api_golden.py and commit it."
        )


def test_every_public_name_exists_and_is_documented() -> None:
    assert len(set(certcompress.__all__)) == len(certcompress.__all__)
    for name in certcompress.__all__:
        obj = getattr(certcompress, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"certcompress.{name} has no docstring"
