"""Scale-out benchmark (issue 8): 16 certification tasks (torchvision resnet18, random
weights pinned by init_seed, global pruning plans at 16 sparsities and two criteria, input
1x3x32x32 by default (``--size``: 224 takes minutes per task on a shared 2-core machine),
no adversarial search) run with the local executor on 1 worker, on 2 workers and on a
local Ray instance with 2 CPUs, in one run; wall times as ratios to 1 worker.

Each executor is started and warmed first (worker processes import torch and
certcompress; the time is reported as ``startup_s``), then the 16 tasks are timed.
Overhead per task, on tiny tasks (an MLP, ~10 ms of work each): the median round trip of
one task at a time (submit, run, return, store) minus its work, and in a batch of 16,
(wall x CPUs - sum of task seconds) / 16; Ray's extra overhead is its round trip minus the
local pool's. The machine's load average is recorded: other processes inflate every
figure, the 2-worker ones most. Run: ``.venv/bin/python benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]

from certcompress.scale import CertifyTask, Executor, LocalExecutor, ModelRef, RayExecutor, sweep

SIZE = 32  # resnet18's input side: 224 takes minutes per task on a shared 2-core box
MLP_PY = textwrap.dedent('''
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
''')


def resnet_tasks(ref: ModelRef, n: int, search_steps: int, size: int) -> list[CertifyTask]:
    out = []
    for i in range(n):
        crit = "magnitude" if i % 2 == 0 else "random"
        sparsity = round(0.05 + 0.05 * (i // 2) + 0.01 * (i % 2), 4)
        out.append(CertifyTask(model=ref, input_shape=(1, 3, size, size), radius=1.0,
                               search_steps=search_steps,
                               pruning={"scope": "global", "criterion": crit,
                                        "sparsity": sparsity}))
    return out


def tiny_tasks(ref: ModelRef, n: int, offset: float = 0.0) -> list[CertifyTask]:
    return [CertifyTask(model=ref, input_shape=(1, 16), radius=1.0, search_steps=0,
                        pruning={"scope": "global", "criterion": "magnitude",
                                 "sparsity": round(offset + i / (2 * n), 6)})
            for i in range(n)]


def timed(tasks: list[CertifyTask], ex: Executor, store: Path, name: str
          ) -> tuple[float, float]:
    """(wall seconds, sum of the tasks' own seconds) of one sweep."""
    t0 = time.perf_counter()
    df = sweep(tasks, ex, store, name, progress=False)
    wall = time.perf_counter() - t0
    bad = df[df["status"] != "ok"]
    if len(bad):
        raise SystemExit(f"{len(bad)} task(s) failed: {bad['error'].iloc[0]}")
    return wall, float(df["seconds"].sum())


def run(label: str, ex: Executor, cpus: int, work: dict[str, list[CertifyTask]], tmp: Path
        ) -> dict[str, Any]:
    store = tmp / f"{label}.sqlite"
    t0 = time.perf_counter()
    timed(work["warm"], ex, store, "warm-up")
    startup = time.perf_counter() - t0
    tiny_wall, tiny_busy = timed(work["tiny"], ex, store, "tiny")
    # one tiny task at a time: the round trip (submit, run, return, store) minus the work
    trips = [timed([t], ex, store, f"trip-{i}") for i, t in enumerate(work["trip"])]
    roundtrip = sorted(w - b for w, b in trips)[len(trips) // 2]
    wall, busy = timed(work["resnet"], ex, store, "resnet18")
    n, nt = len(work["resnet"]), len(work["tiny"])
    row = {"cpus": cpus, "startup_s": startup, "wall_s": wall, "task_seconds_sum": busy,
           "overhead_per_task_s": (wall * cpus - busy) / n,
           "tiny_wall_s": tiny_wall,
           "tiny_overhead_per_task_s": (tiny_wall * cpus - tiny_busy) / nt,
           "roundtrip_overhead_median_s": roundtrip}
    print(f"{label:8s} startup {startup:5.1f} s | {n} resnet18 tasks {wall:6.1f} s (their own "
          f"time {busy:6.1f} s) | overhead per task: {roundtrip * 1e3:5.1f} ms round trip, "
          f"{row['tiny_overhead_per_task_s'] * 1e3:5.1f} ms in a batch of {nt} tiny tasks")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--search-steps", type=int, default=0)
    ap.add_argument("--size", type=int, default=SIZE, help="input height and width")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        tmp = Path(d)
        (tmp / "mlp.py").write_text(MLP_PY)
        resnet = ModelRef("torchvision:resnet18", init_seed=0)
        mlp = ModelRef(f"{tmp / 'mlp.py'}:make", init_seed=0)
        work = {"warm": tiny_tasks(mlp, 4, offset=0.6), "tiny": tiny_tasks(mlp, 16),
                "trip": tiny_tasks(mlp, 9, offset=0.55),
                "resnet": resnet_tasks(resnet, args.tasks, args.search_steps, args.size)}
        rows: dict[str, dict[str, Any]] = {}
        with LocalExecutor(workers=1) as ex:
            rows["local-1"] = run("local-1", ex, 1, work, tmp)
        with LocalExecutor(workers=2) as ex:
            rows["local-2"] = run("local-2", ex, 2, work, tmp)
        with RayExecutor(num_cpus=2) as ex:
            rows["ray-2"] = run("ray-2", ex, 2, work, tmp)
    base = rows["local-1"]["wall_s"]
    ratios = {k: v["wall_s"] / base for k, v in rows.items()}
    ray_extra = (rows["ray-2"]["roundtrip_overhead_median_s"]
                 - rows["local-2"]["roundtrip_overhead_median_s"])
    print(f"wall time vs 1 local worker: 2 local workers {ratios['local-2']:.2f}x, Ray 2 CPUs "
          f"{ratios['ray-2']:.2f}x; Ray vs 2 local workers {rows['ray-2']['wall_s'] / rows['local-2']['wall_s']:.2f}x; "
          f"Ray's extra overhead per task {ray_extra * 1e3:.1f} ms")
    import ray

    path = write_results("scale", {
        "tasks": args.tasks, "input_shape": [1, 3, args.size, args.size],
        "search_steps": args.search_steps,
        "model": "torchvision resnet18 (random weights, init_seed 0)",
        "executors": rows, "wall_ratio_vs_local_1": ratios,
        "ray_vs_local_2": rows["ray-2"]["wall_s"] / rows["local-2"]["wall_s"],
        "ray_extra_overhead_per_task_s": ray_extra, "ray_version": ray.__version__,
        "load_average_1min_before": load_before, "load_average_1min": os.getloadavg()[0], "torch_threads_per_worker": 1,
        "driver_torch_threads": torch.get_num_threads()})
    print(f"written {path}")


if __name__ == "__main__":
    main()
