"""CLI start-up time (issue 17): wall time of ``certcompress --help`` (which imports
neither torch nor the library), ``certcompress inspect --help`` (one command module, so
torch) and, for scale, ``python -c "import torch"``, each the best of N fresh processes,
measured in one run. Target: ``--help`` <= 1.5 s.

Run: ``.venv/bin/python benchmarks/bench_cli_startup.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from _common import write_results  # type: ignore[import-not-found]


def _best(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    exe = shutil.which("certcompress")
    cli = [exe] if exe else [sys.executable, "-m", "certcompress.cli"]
    rows = {
        "certcompress --help": _best([*cli, "--help"], args.repeat),
        "certcompress inspect --help": _best([*cli, "inspect", "--help"], args.repeat),
        "python -c 'import torch'": _best([sys.executable, "-c", "import torch"], args.repeat),
        "python -c 'pass'": _best([sys.executable, "-c", "pass"], args.repeat),
    }
    for name, seconds in rows.items():
        print(f"{name:<32} {seconds:6.2f} s")
    print(f"written to {write_results('cli_startup', {'seconds': rows})}")


if __name__ == "__main__":
    main()
