"""Outputs are complete or absent (issue 13, part 3) and results stores are read
read-only (part 4).

- ``quantize --out DIR`` killed with SIGKILL at random points of a loop of runs: DIR
  holds the old complete set or the new complete set (config, state dict, certificate
  and table all of one run), and the next run removes the killed run's temporaries;
- files and folders follow the umask (022 and 077), not a forced 0600;
- an output that is (or links to) an input is refused before any work;
- an output folder where nothing can be created is found before any work, and nothing
  else is written (``prune`` with an unwritable certificate folder);
- a results store that cannot be written (immutable file and folder) is listed, shown
  and exported, and its connection refuses writes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from certcompress import cli
from certcompress._io import atomic_dir, atomic_write_text, check_outputs
from certcompress.cli.quantize import OUTPUT_FILES
from certcompress.digest import parameter_digest
from certcompress.errors import ConfigurationError
from certcompress.scale.store import ResultStore

REPO = Path(__file__).resolve().parents[1]

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
""")


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text(MODEL)
    return tmp_path


def _quantize_args(d: Path, out: Path, bits: int) -> list[str]:
    return ["quantize", f"{d / 'm.py'}:make", "--input-shape", "1", "4", "--radius", "1",
            "--bits", str(bits), "--search-steps", "1", "--out", str(out)]


def _make() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3)).eval()


def _check_one_complete_set(out: Path) -> int:
    """The folder holds exactly one run's files, consistent with each other; returns
    the run's width."""
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
    cfg = json.loads((out / "quant_config.json").read_text())
    widths = {spec["bits"] for spec in cfg["layers"].values()}
    assert len(widths) == 1
    bits = widths.pop()
    cert = json.loads((out / "certificate.json").read_text())
    model = _make()
    model.load_state_dict(torch.load(out / "quantized_state_dict.pt", weights_only=True))
    assert parameter_digest(model) == cert["compressed_digest"]
    grid = json.loads((out / "quant_grid.json").read_text())
    assert {s["bits"] for s in grid["config"]["layers"].values()} == {bits}
    assert f",{bits}," in (out / "bits.csv").read_text().replace(" ", "")
    return bits


def _temporaries(out: Path) -> list[str]:
    return [e for e in os.listdir(out.parent) if e.startswith(f".{out.name}.")]


DRIVER = textwrap.dedent("""
    import sys
    from certcompress import cli
    args = sys.argv[1:]
    bits = 8
    i = 0
    while True:
        a = list(args)
        a[a.index("--bits") + 1] = str(bits)
        assert cli.main(a) == 0
        if i == 0:
            print("READY", flush=True)
        bits = 4 if bits == 8 else 8
        i += 1
""")


def test_kill_during_quantize_leaves_the_old_or_the_new_complete_set(model_dir: Path) -> None:
    out = model_dir / "q"
    assert cli.main(_quantize_args(model_dir, out, 4)) == 0
    assert _check_one_complete_set(out) == 4
    (model_dir / "driver.py").write_text(DRIVER)
    rng = random.Random(13)
    seen_tmp = False
    for _ in range(1):  # each kill costs a fresh interpreter (seconds): keep it to one
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{model_dir}"}
        proc = subprocess.Popen([sys.executable, str(model_dir / "driver.py"),
                                 *_quantize_args(model_dir, out, 8)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=env, cwd=model_dir)
        try:
            assert proc.stdout is not None
            while "READY" not in proc.stdout.readline():
                assert proc.poll() is None, "the driver failed before its first run"
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the following runs
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _check_one_complete_set(out) in (4, 8)
        seen_tmp = seen_tmp or bool(_temporaries(out))
    # the next run removes what the killed runs left beside the folder
    assert cli.main(_quantize_args(model_dir, out, 8)) == 0
    assert _check_one_complete_set(out) == 8
    assert _temporaries(out) == []


def test_atomic_dir_replaces_a_folder_in_one_step_and_refuses_foreign_files(
        tmp_path: Path) -> None:
    out = tmp_path / "set"
    for n in (1, 2):
        with atomic_dir(out, ["a", "b"]) as tmp:
            (tmp / "a").write_text(f"{n}")
            (tmp / "b").write_text(f"{n}")
        assert sorted(os.listdir(out)) == ["a", "b"]
        assert (out / "a").read_text() == (out / "b").read_text() == f"{n}"
    with pytest.raises(RuntimeError), atomic_dir(out, ["a", "b"]) as tmp:
        (tmp / "a").write_text("3")
        raise RuntimeError("fails half-way")
    assert (out / "a").read_text() == "2" and _temporaries(out) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match=r"holds files this command did not write "
                                                 r"\(notes.txt\)"), atomic_dir(out, ["a", "b"]):
        pass
    assert (out / "notes.txt").read_text() == "mine"


def test_a_killed_runs_temporaries_are_removed_but_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".c.json.cc{dead.pid}-abc.tmp"
    stale.write_text("half")
    live = tmp_path / f".c.json.cc{os.getppid()}-abc.tmp"
    live.write_text("in progress")
    atomic_write_text(tmp_path / "c.json", "{}")
    assert not stale.exists() and live.exists()


@pytest.fixture()
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(model_dir: Path, umask: None, mask: int, file_mode: int,
                                  dir_mode: int) -> None:
    os.umask(mask)
    out = model_dir / "q"
    assert cli.main(_quantize_args(model_dir, out, 4)) == 0
    assert out.stat().st_mode & 0o777 == dir_mode
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_mode & 0o777 == file_mode, name
    p = atomic_write_text(model_dir / "single.json", "{}")
    assert p.stat().st_mode & 0o777 == file_mode


def _prune_args(d: Path, *extra: str) -> list[str]:
    return ["prune", f"{d / 'm.py'}:make", "--input-shape", "1", "4", "--radius", "1",
            "--sparsity", "0.5", "--search-steps", "0", *extra]


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_output_that_is_an_input_is_refused_before_any_work(
        model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = model_dir / "w.pt"
    torch.save(_make().state_dict(), weights)
    before = weights.read_bytes()
    _refused(_prune_args(model_dir, "--weights", str(weights), "--out", str(weights),
                         "--certificate", str(model_dir / "c.json")), capsys, "is the input")
    link = model_dir / "link.pt"
    link.symlink_to(weights)
    _refused(_prune_args(model_dir, "--weights", str(weights), "--out",
                         str(model_dir / "p.pt"), "--certificate", str(link)), capsys,
             "is the input")
    _refused(_prune_args(model_dir, "--out", str(model_dir / "m.py"),  # the model's file
                         "--certificate", str(model_dir / "c.json")), capsys, "is the input")
    _refused(_prune_args(model_dir, "--out", str(model_dir / "x.pt"),
                         "--certificate", str(model_dir / "x.pt")), capsys,
             "two outputs are the same file")
    _refused(_quantize_args(model_dir, model_dir, 4), capsys, "holds the input")
    _refused(["certify", f"{model_dir / 'm.py'}:make", f"{model_dir / 'm.py'}:make",
              "--weights", str(weights), "--input-shape", "1", "4", "--radius", "1",
              "--out", str(weights)], capsys, "is the input")
    assert weights.read_bytes() == before
    assert not (model_dir / "c.json").exists() and not (model_dir / "p.pt").exists()


def _read_only_dir(d: Path) -> bool:
    """Make ``d`` a folder where nothing can be created, for root too (immutable), or
    return False where this system cannot."""
    if os.geteuid() != 0:
        d.chmod(0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0


def _undo_read_only(d: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o755)


def test_an_unwritable_output_folder_is_found_before_any_work(
        model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = model_dir / "locked"
    locked.mkdir()
    if not _read_only_dir(locked):
        pytest.skip("cannot make a folder read-only for root here (no chattr)")
    try:
        with pytest.raises(ConfigurationError, match="is not writable.*before any work"):
            check_outputs([locked / "c.json"])
        t0 = time.perf_counter()
        _refused(_prune_args(model_dir, "--out", str(model_dir / "pruned.pt"),
                             "--certificate", str(locked / "c.json")), capsys,
                 r"cannot write .*locked.*not writable")
        assert time.perf_counter() - t0 < 5.0  # refused before the model was even loaded
        assert not (model_dir / "pruned.pt").exists()  # the weights were not written first
        _refused(_quantize_args(model_dir, locked / "q", 4), capsys, "not writable")
    finally:
        _undo_read_only(locked)
    assert os.listdir(locked) == []


def _store(path: Path) -> None:
    with ResultStore(path) as st:
        st.write(sweep="s", key="k1", kind="certify", label="tiny", spec="{}", status="ok",
                 row={"certified_bound": 1.5})


def test_a_read_only_store_is_read_not_called_corrupt(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "runs.sqlite"
    _store(store)
    # the connection used to read cannot write (SQLite mode=ro), whoever runs the test
    with ResultStore(store, create=False, readonly=True) as st, \
            pytest.raises(Exception, match="readonly"):
        st._conn.execute("DELETE FROM results")
    before = store.read_bytes()
    store.chmod(0o444)
    locked = _read_only_dir(folder)
    if locked and os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(store)], capture_output=True)
    try:
        assert cli.main(["results", "list", "--store", str(store)]) == 0
        assert "s " in capsys.readouterr().out
        assert cli.main(["results", "show", "s", "--store", str(store)]) == 0
        assert "tiny" in capsys.readouterr().out
        csv = tmp_path / "r.csv"
        assert cli.main(["results", "export", str(csv), "--store", str(store)]) == 0
        assert "1.5" in csv.read_text()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(store)], capture_output=True)
        if locked:
            _undo_read_only(folder)
    assert store.read_bytes() == before
    _refused(["results", "export", str(store), "--store", str(store)], capsys, "is the input")
