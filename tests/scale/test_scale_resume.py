"""Stop the process running a sweep (in a subprocess) after some rows are stored, by
SIGKILL or by Ctrl-C (SIGINT), then run the same sweep again: the stored rows are kept as
they were, only the missing tasks run (the factory counts its calls), no pool worker is
left behind, and the final results equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_zoo import SWEEP_SCRIPT, resume_tasks

from certcompress.scale import ResultStore, StoreError, results, sweep

HERE = Path(__file__).resolve().parent
COLUMNS = ["certified_bound", "path_metric", "adversarial_max", "compressed_digest",
           "nonzero_parameters", "compression"]


def _stored(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with ResultStore(store, create=False) as st:
            return len(st.keys("resume"))
    except StoreError:  # created but its schema not committed yet
        return 0


def _gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_a_stopped_sweep_resumes_without_recomputing(zoo, local_pool, tmp_path, sig):
    script = tmp_path / "run_sweep.py"
    script.write_text(SWEEP_SCRIPT)
    store = tmp_path / "runs.sqlite"
    args = [str(HERE), str(zoo.models), str(zoo.mlp_weights), str(store)]
    tasks = resume_tasks(*args[1:3])
    hold = zoo.dir / "slow_hold"  # the third task waits until the sweep is stopped
    hold.write_text(str(zoo.calls("slow_calls.txt") + 2))
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while _stored(store) < 2:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the sweep ended (rc {proc.returncode}) or stalled before "
                                f"storing 2 rows:\n{(tmp_path / 'sweep.log').read_text()}")
                time.sleep(0.05)
            proc.send_signal(sig)
            time.sleep(1.0)  # the signal is handled; then the held task may finish
            hold.unlink()
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
            hold.unlink(missing_ok=True)
    log_text = (tmp_path / "sweep.log").read_text()
    if sig == signal.SIGINT:  # stopped cleanly: the summary says how to resume
        assert "INTERRUPTED sweep 'resume'" in log_text, log_text
        assert "run the same sweep again to resume" in log_text
    before = results.load(store, "resume")
    n = len(before)
    assert 2 <= n < len(tasks) and set(before["status"]) == {"ok"}
    worker = int(before["worker"].iloc[0].rsplit(":", 1)[1])
    assert _gone(worker, 10), "a pool worker of the stopped sweep is still running"
    calls = zoo.calls("slow_calls.txt")

    resumed = sweep(tasks, local_pool, store, "resume", progress=False)
    s = resumed.attrs["summary"]
    assert (s.skipped, s.succeeded, s.failed) == (n, len(tasks) - n, 0)
    assert zoo.calls("slow_calls.txt") - calls == len(tasks) - n  # nothing recomputed
    kept = resumed.set_index("key").loc[list(before["key"])]
    assert list(kept["created"]) == list(before["created"])
    assert list(kept["worker"]) == list(before["worker"])

    full = sweep(tasks, local_pool, tmp_path / "full.sqlite", "resume", progress=False)
    assert list(resumed["key"]) == list(full["key"])
    assert resumed[COLUMNS].equals(full[COLUMNS])
