"""``python -m certcompress.cli``: the same as the ``certcompress`` console script."""

from __future__ import annotations

from . import main

raise SystemExit(main())
