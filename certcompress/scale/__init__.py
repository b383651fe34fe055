"""Scale-out: run many certification, pruning, quantization and mean-field
configurations as tasks on this machine (a process pool) or on Ray, with every result
kept in a resumable SQLite store. See docs/scale-out.md.

    from certcompress.scale import CertifyTask, ModelRef, sweep, results
    ref = ModelRef("torchvision:resnet18", weights="resnet18.pt")
    tasks = [CertifyTask(model=ref, input_shape=(1, 3, 64, 64), radius=1.0,
                         pruning={"scope": "global", "criterion": "magnitude", "sparsity": s})
             for s in (0.1, 0.3, 0.5)]
    df = sweep(tasks, executor="local", store="runs.sqlite", sweep="resnet18-pruning")
    results.load("runs.sqlite", sweep="resnet18-pruning")
"""

from __future__ import annotations

from . import results
from .executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    Outcome,
    RayExecutor,
    SerialExecutor,
    make_executor,
)
from .integrations import (
    meanfield_sweep_tasks,
    pruning_report_tasks,
    quantization_sweep_tasks,
    run_tasks,
)
from .manifest import Manifest, load_manifest
from .refs import DataRef, ModelRef
from .store import SCHEMA_VERSION, ResultStore, StoreError
from .sweep import SweepSummary, sweep
from .tasks import (
    TASK_KINDS,
    CertifyTask,
    MeanFieldTask,
    PruneTask,
    QuantizeTask,
    Task,
    task_from_dict,
    task_from_json,
)

__all__ = [
    "CertifyTask", "DataRef", "EXECUTORS", "Executor", "LocalExecutor", "Manifest",
    "MeanFieldTask", "ModelRef", "Outcome", "PruneTask", "QuantizeTask", "RayExecutor",
    "ResultStore", "SCHEMA_VERSION", "SerialExecutor", "StoreError", "SweepSummary",
    "TASK_KINDS", "Task", "load_manifest", "make_executor", "meanfield_sweep_tasks",
    "pruning_report_tasks", "quantization_sweep_tasks", "results", "run_tasks", "sweep",
    "task_from_dict", "task_from_json",
]
