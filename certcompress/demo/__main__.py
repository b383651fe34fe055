"""``python -m certcompress.demo``: run the end-to-end example with its defaults."""

from __future__ import annotations

from .run import run_demo

raise SystemExit(run_demo())
