"""``certcompress equiv-batch``: equivalence verification of many instances in one process
(a thin layer over :func:`certcompress.equivalence.verify_equivalence`, like ``equiv``).

    certcompress equiv-batch INSTANCES.csv [--epsilon 0.05 --norm inf | --property top1]
                             [--timeout 60] [search options of equiv] --out results.csv

Each line of INSTANCES.csv is ``ORIGINAL,COMPRESSED,SPEC.vnnlib[,TIMEOUT]``: two model
specs (``FILE.onnx``, ``model.py:make``, ...) and a VNN-LIB file, paths relative to the
CSV's folder; ``TIMEOUT`` (seconds) overrides ``--timeout`` for that line. Blank lines
and lines starting with ``#`` are skipped. A model named on several lines is loaded
once; the process starts once, where separate ``equiv`` calls pay torch's import each.

``--out`` gets one row per instance (original, compressed, vnnlib, status, bound, found,
regions, seconds), written atomically after every instance, so an interrupted run keeps
what it finished. Exit status: 0 if every instance is verified, 3 if one is falsified,
4 otherwise; 2 on a usage error (a malformed line is named with its line number before
any work starts).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text, read_text_file
from ..equivalence.result import EquivalenceResult
from ..equivalence.vnnlib import read_vnnlib
from ..errors import ConfigurationError
from ..loading import load_module
from .equiv import EXIT_CODES, add_search_options, combined_status, verify_with
from .options import add_executor, add_output, check_output, common_parent, load_plugins

__all__ = ["register", "run", "Instance", "read_instances", "COLUMNS"]

COLUMNS = ("original", "compressed", "vnnlib", "status", "bound", "found", "regions",
           "seconds")


@dataclass(frozen=True)
class Instance:
    """One line of an instances file (paths resolved against the file's folder)."""

    original: str
    compressed: str
    vnnlib: Path
    timeout: float | None
    line: int


def _resolve(folder: Path, spec: str) -> str:
    """A model spec or path relative to ``folder`` (``model.py:make`` keeps its suffix)."""
    path, sep, attr = spec.partition(":")
    if sep and not Path(path).suffix:  # pkg.mod:make, not a file
        return spec
    return str(folder / path) + (sep + attr if sep else "")


def read_instances(path: str | Path) -> list[Instance]:
    """Parse an instances file; every malformed line is named in one error."""
    p = Path(path)
    text = read_text_file(p, "instances file", ConfigurationError)
    folder = p.parent
    out: list[Instance] = []
    bad: list[str] = []
    for no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) not in (3, 4) or not all(cells[:3]):
            bad.append(f"line {no}: expected ORIGINAL,COMPRESSED,SPEC.vnnlib[,TIMEOUT], got "
                       f"{len(cells)} field(s)")
            continue
        timeout = None
        if len(cells) == 4 and cells[3]:
            try:
                timeout = float(cells[3])
            except ValueError:
                timeout = math.nan
            if not (timeout > 0 and math.isfinite(timeout)):
                bad.append(f"line {no}: TIMEOUT must be a number of seconds > 0, got "
                           f"{cells[3]!r}")
                continue
        out.append(Instance(_resolve(folder, cells[0]), _resolve(folder, cells[1]),
                            folder / cells[2], timeout, no))
    if bad:
        raise ConfigurationError(f"{p}: " + "; ".join(bad))
    if not out:
        raise ConfigurationError(f"{p} lists no instance (lines ORIGINAL,COMPRESSED,"
                                 "SPEC.vnnlib[,TIMEOUT])")
    missing = [f"line {i.line}: {i.vnnlib}" for i in out if not i.vnnlib.is_file()]
    if missing:
        raise ConfigurationError(f"{p}: VNN-LIB file(s) not found: " + "; ".join(missing))
    return out


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "equiv-batch", parents=[common_parent()],
        help="equivalence verification of every instance of a CSV file, in one process",
        description="Lines ORIGINAL,COMPRESSED,SPEC.vnnlib[,TIMEOUT] (paths relative to "
                    "the file). Exit 0: all verified, 3: one falsified, 4: otherwise.")
    p.add_argument("instances", metavar="INSTANCES.csv", help="the instances file")
    add_search_options(p)
    add_executor(p, ("serial", "local", "ray"), "serial",
                 "where each round's regions are bounded (see equiv)", ray=False)
    add_output(p, None, "write one CSV row per instance here (atomically, after each)",
               required=True)
    p.set_defaults(func=run)


def _row(inst: Instance, results: Sequence[EquivalenceResult], seconds: float
         ) -> dict[str, Any]:
    status = combined_status(results)
    bounds = [r.bound for r in results]  # None where a property states no bound (top1)
    bound = math.inf if not bounds or None in bounds else max(b for b in bounds if b is not None)
    found = max((r.found for r in results if r.found is not None), default=0.0)
    return {"original": inst.original, "compressed": inst.compressed,
            "vnnlib": str(inst.vnnlib), "status": status, "bound": f"{bound:.9g}",
            "found": f"{found:.9g}", "regions": sum(r.regions for r in results),
            "seconds": f"{seconds:.3f}"}


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output(out, args.instances)
    if args.workers is not None and args.workers < 1:
        raise ConfigurationError(f"--workers must be >= 1, got {args.workers}")
    instances = read_instances(args.instances)
    load_plugins(args.plugin)
    models: dict[str, nn.Module] = {}

    def model(spec: str) -> nn.Module:
        if spec not in models:
            models[spec] = load_module(spec, None, needed_by="equiv-batch")
        return models[spec]

    rows: list[dict[str, Any]] = []
    statuses: list[str] = []
    t_all = time.perf_counter()
    for k, inst in enumerate(instances, start=1):
        t0 = time.perf_counter()
        original, compressed = model(inst.original), model(inst.compressed)
        results = []
        for dom in read_vnnlib(inst.vnnlib).domains():
            r = verify_with(args, original, compressed, dom, inst.timeout)
            results.append(r)
            if r.status == "falsified":
                break
        row = _row(inst, results, time.perf_counter() - t0)
        rows.append(row)
        statuses.append(row["status"])
        _write(out, rows)
        print(f"[{k}/{len(instances)}] {row['status']:9s} bound {row['bound']} found "
              f"{row['found']} {row['seconds']} s  {Path(inst.original).name} vs "
              f"{Path(inst.compressed).name} on {inst.vnnlib.name}")
    counts = {s: statuses.count(s) for s in EXIT_CODES}
    print(f"{len(instances)} instances in {time.perf_counter() - t_all:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; results written to {out}")
    if counts["falsified"]:
        return EXIT_CODES["falsified"]
    return EXIT_CODES["verified"] if counts["verified"] == len(instances) else \
        EXIT_CODES["unknown"]
