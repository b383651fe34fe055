"""``sweep`` on a local Ray instance (2 CPUs, one per module; the module is skipped
without Ray): the same rows as the local process pool; a worker killed during a task is retried by Ray; files shipped through
the object store are what the workers read."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import ray
from scale_zoo import CNN_SHAPE, MLP_SHAPE

from certcompress.scale import (
    CertifyTask,
    ModelRef,
    PruneTask,
    QuantizeTask,
    RayExecutor,
    sweep,
)
from certcompress.scale.refs import file_sha256

ROW_COLUMNS = ["model", "compression", "certified_bound", "path_metric", "path_metric_exact",
               "baseline_bound_linf", "adversarial_max", "sign_changes", "changed_parameters",
               "original_digest", "compressed_digest", "nonzero_parameters", "criterion",
               "sparsity", "pruned_weights", "bits_by_layer", "average_bits", "size_bytes"]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _mixed_tasks(zoo):
    cnn = zoo.ref("make_cnn", "cnn")
    common = dict(input_shape=CNN_SHAPE, radius=0.5, search_steps=3, search_restarts=2)
    return [
        CertifyTask(model=cnn, pruning={"scope": "global", "criterion": "path-magnitude",
                                        "sparsity": 0.3, "input_shape": list(CNN_SHAPE)},
                    **common),
        CertifyTask(model=cnn, quantization={"bits": 4}, **common),
        CertifyTask(model=zoo.ref(), compressed=ModelRef(zoo.spec("make"), init_seed=1),
                    input_shape=MLP_SHAPE, radius=1.0, search_steps=3),
        PruneTask(model=cnn, criterion="magnitude", sparsity=0.6, **common),
        QuantizeTask(model=cnn, config={"bits": {"conv": 3, "fc": 6}}, **common),
    ]


def test_ray_and_the_local_pool_give_identical_rows(zoo, local_pool, ray_instance, tmp_path):
    tasks = _mixed_tasks(zoo)
    local = sweep(tasks, local_pool, tmp_path / "local.sqlite", "same", progress=False)
    on_ray = sweep(tasks, "ray", tmp_path / "ray.sqlite", "same", progress=False)
    assert ray.is_initialized()  # the session it found is left running
    assert list(local["status"]) == ["ok"] * 5 and list(on_ray["status"]) == ["ok"] * 5
    assert list(local["key"]) == list(on_ray["key"]) == [t.key for t in tasks]
    assert set(ROW_COLUMNS) <= set(local.columns) and list(local.columns) == list(on_ray.columns)
    where_and_when = {"seconds", "started", "finished", "worker", "attempts", "created"}
    cols = [c for c in local.columns if c not in where_and_when]
    assert local[cols].equals(on_ray[cols])  # every result column, NaNs in the same places
    assert set(local["worker"]).isdisjoint(set(on_ray["worker"]))
    assert on_ray.attrs["summary"].executor == "ray (local instance, all CPUs)"


def test_a_ray_worker_killed_during_a_task_is_retried(zoo, ray_instance, tmp_path):
    crash = CertifyTask(model=zoo.ref("crash_once_ray"), input_shape=MLP_SHAPE, radius=1.0,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5},
                        search_steps=0)
    ok = CertifyTask(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0, search_steps=0,
                     pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.2})
    df = sweep([crash, ok], RayExecutor(max_retries=2), tmp_path / "runs.sqlite", "crash",
               progress=False)
    assert list(df["status"]) == ["ok", "ok"]
    crashed_pid = int((zoo.dir / "crashed-ray.txt").read_text())
    assert int(df.iloc[0]["worker"].rsplit(":", 1)[1]) != crashed_pid
    with pytest.raises(ProcessLookupError):
        os.kill(crashed_pid, 0)


def test_shipped_files_are_read_from_the_object_store(zoo, ray_instance, tmp_path):
    task = CertifyTask(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0, search_steps=0,
                       pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.4})
    cache = os.path.join(tempfile.gettempdir(), "certcompress-ray-files",
                         file_sha256(zoo.mlp_weights), "mlp.pt")
    if os.path.exists(cache):
        os.remove(cache)
    shipped = sweep([task], RayExecutor(ship_files=True), tmp_path / "a.sqlite", "ship",
                    progress=False)
    assert shipped.iloc[0]["status"] == "ok"
    assert os.path.exists(cache)  # the worker materialized the weights it was sent
    direct = task.run()
    assert shipped.iloc[0]["certified_bound"] == direct["certified_bound"]


def test_a_ray_task_out_of_retries_is_an_error_row(zoo, ray_instance, tmp_path):
    crash = CertifyTask(model=zoo.ref("crash_once_ray"), input_shape=MLP_SHAPE, radius=1.0,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5},
                        search_steps=0)
    ok = CertifyTask(model=zoo.ref(), input_shape=MLP_SHAPE, radius=1.0, search_steps=0,
                     pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.2})
    df = sweep([crash, ok], RayExecutor(max_retries=0), tmp_path / "runs.sqlite", "lost",
               progress=False)
    assert list(df["status"]) == ["error", "ok"]
    assert df.iloc[0]["error"].startswith("WorkerCrashedError")
    assert "Ray gave up after 0 retries" in df.iloc[0]["error"]
