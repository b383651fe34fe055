"""``sweep`` on the local process pool: a task that raises becomes an error row and the
sweep goes on; a rerun skips stored keys (the factories count their calls); a worker
process killed during a task is replaced and the task retried; bad arguments are
refused before any work."""

from __future__ import annotations

import os

import pytest
from scale_zoo import MLP_SHAPE

from certcompress.errors import ConfigurationError, ModelLoadError
from certcompress.scale import CertifyTask, ModelRef, SerialExecutor, results, sweep


def _tasks(zoo, factory="counted", sparsities=(0.2, 0.4, 0.6, 0.8)):
    ref = zoo.ref(factory)
    return [CertifyTask(model=ref, input_shape=MLP_SHAPE, radius=1.0, search_steps=2,
                        search_restarts=1,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": s})
            for s in sparsities]


def test_a_failing_task_is_stored_as_an_error_and_the_sweep_goes_on(zoo, local_pool, tmp_path):
    store = tmp_path / "runs.sqlite"
    bad = CertifyTask(model=zoo.ref("broken"), input_shape=MLP_SHAPE, radius=1.0,
                      pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5})
    tasks = _tasks(zoo)
    tasks.insert(2, bad)
    df = sweep(tasks, local_pool, store, "zoo", progress=False)
    s = df.attrs["summary"]
    assert (s.succeeded, s.failed, s.skipped, s.total) == (4, 1, 0, 5)
    assert list(df["key"]) == [t.key for t in tasks]  # the order given
    err = df.iloc[2]
    assert err["status"] == "error" and err["kind"] == "certify"
    assert err["error"].startswith("ModelLoadError: the factory")
    assert "RuntimeError: factory failed on purpose" in err["error"]
    assert (df["status"] == "ok").sum() == 4 and df["certified_bound"].notna().sum() == 4
    assert zoo.calls() == 4
    stored = results.load(store, "zoo")
    assert "RuntimeError" in stored.loc[stored["status"] == "error", "error"].item()

    # rerun: nothing is recomputed, the same rows come back
    again = sweep(tasks, local_pool, store, "zoo", progress=False)
    s2 = again.attrs["summary"]
    assert (s2.succeeded, s2.failed, s2.skipped) == (0, 0, 5)
    assert zoo.calls() == 4
    assert list(again["created"]) == list(df["created"])
    # only the failed task runs again with retry_failed
    retried = sweep(tasks, local_pool, store, "zoo", progress=False, retry_failed=True)
    s3 = retried.attrs["summary"]
    assert (s3.succeeded, s3.failed, s3.skipped) == (0, 1, 4) and zoo.calls() == 4
    # a new task in the same sweep: only it runs
    more = _tasks(zoo, sparsities=(0.9,))
    s4 = sweep(tasks + more, local_pool, store, "zoo", progress=False).attrs["summary"]
    assert (s4.succeeded, s4.skipped) == (1, 5) and zoo.calls() == 5


def test_a_killed_worker_is_replaced_and_its_task_retried(zoo, local_pool, tmp_path):
    crash = CertifyTask(model=zoo.ref("crash_once_local"), input_shape=MLP_SHAPE, radius=1.0,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5},
                        search_steps=0)
    tasks = [crash, *_tasks(zoo, sparsities=(0.3, 0.7))]
    df = sweep(tasks, local_pool, tmp_path / "runs.sqlite", "crash", progress=False)
    assert list(df["status"]) == ["ok"] * 3
    crashed_pid = int((zoo.dir / "crashed-local.txt").read_text())
    row = df.iloc[0]
    assert row["attempts"] == 2 and int(row["worker"].rsplit(":", 1)[1]) != crashed_pid
    with pytest.raises(ProcessLookupError):
        os.kill(crashed_pid, 0)


def test_serial_and_local_give_the_same_rows(zoo, local_pool, tmp_path):
    tasks = _tasks(zoo, "make", (0.1, 0.5))
    a = sweep(tasks, local_pool, tmp_path / "a.sqlite", "x", progress=False)
    b = sweep(tasks, SerialExecutor(), tmp_path / "b.sqlite", "x", progress=False)
    cols = ["certified_bound", "adversarial_max", "compressed_digest", "path_metric_exact"]
    assert a[cols].equals(b[cols])


def test_bad_arguments_are_refused_before_any_work(zoo, tmp_path):
    store = tmp_path / "runs.sqlite"
    with pytest.raises(ConfigurationError, match=r"tasks\[1\] is a str, not a Task"):
        sweep([_tasks(zoo)[0], "task"], "serial", store)
    with pytest.raises(ConfigurationError, match="executor 'cloud' is unknown; use one of "
                                                 "local, ray, serial"):
        sweep(_tasks(zoo), "cloud", store)
    with pytest.raises(ConfigurationError, match="address is for executor='ray'"):
        sweep(_tasks(zoo), "local", store, address="auto")
    with pytest.raises(ConfigurationError, match="sweep must be a non-empty name"):
        sweep(_tasks(zoo), "serial", store, sweep=" ")
    assert zoo.calls() == 0


def test_duplicate_tasks_run_once(zoo, tmp_path):
    t = _tasks(zoo, sparsities=(0.5,))[0]
    df = sweep([t, t], SerialExecutor(), tmp_path / "r.sqlite", "d", progress=False)
    assert len(df) == 1 and df.attrs["summary"].duplicates == 1 and zoo.calls() == 1
    assert "1 duplicate(s) dropped" in str(df.attrs["summary"])


def test_model_refs_are_checked_where_tasks_are_made(zoo):
    with pytest.raises(ModelLoadError, match="weights file .* cannot be read"):
        ModelRef(zoo.spec("make"), str(zoo.dir / "missing.pt"))


def test_a_task_whose_worker_dies_past_its_retries_is_an_error_row(zoo, local_pool, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(local_pool, "max_retries", 0)
    crash = CertifyTask(model=zoo.ref("crash_once_local"), input_shape=MLP_SHAPE, radius=1.0,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5},
                        search_steps=0)
    tasks = [*_tasks(zoo, "make", (0.3,)), crash, *_tasks(zoo, "make", (0.6, 0.9))]
    df = sweep(tasks, local_pool, tmp_path / "runs.sqlite", "lost", progress=False)
    assert list(df["status"]) == ["ok", "error", "ok", "ok"]  # only the crashed task fails
    assert df.iloc[1]["error"].startswith("WorkerLost: the worker process running this task "
                                          "died (1 attempt(s)")
    assert df.attrs["summary"].failed == 1


def test_the_progress_bar_counts_done_failed_and_left(zoo, tmp_path, capsys):
    bad = CertifyTask(model=zoo.ref("broken"), input_shape=MLP_SHAPE, radius=1.0,
                      pruning={"scope": "global", "criterion": "magnitude", "sparsity": 0.5})
    sweep([*_tasks(zoo, sparsities=(0.5,)), bad], SerialExecutor(), tmp_path / "r.sqlite",
          "bar", progress=True)
    err = capsys.readouterr().err
    assert "sweep bar: 100%" in err and "2/2" in err and "ok=1 failed=1 left=0" in err
    assert "task/s" in err or "s/task" in err  # the rate
    assert "sweep 'bar' on serial: 1 succeeded, 1 failed, 0 skipped" in err


def test_executor_ray_without_ray_says_how_to_install_it(zoo, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigurationError, match=r"executor 'ray' needs Ray: pip install "
                                                 r"'ray>=2.9' \(or use executor='local'\)"):
        sweep(_tasks(zoo, sparsities=(0.5,)), "ray", tmp_path / "r.sqlite", progress=False)
    assert zoo.calls() == 0
