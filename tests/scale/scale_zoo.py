"""Helpers of the scale-out tests: a directory with a factory file of tiny models (and
factories that count their calls, fail, crash their process once, or are not
deterministic) and their saved weights."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

from certcompress.loading import load_model
from certcompress.scale import ModelRef

MODELS_PY = textwrap.dedent('''
    import os
    import signal
    import time

    import torch
    from torch import nn

    HERE = os.path.dirname(os.path.abspath(__file__))


    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(12, 16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 36, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


    def make():
        return MLP()


    def make_cnn():
        return SmallCNN()


    def _count(name):
        with open(os.path.join(HERE, name), "a") as fh:
            fh.write(f"{os.getpid()}\\n")


    def counted():
        _count("calls.txt")
        return MLP()


    def slow_counted():
        _count("slow_calls.txt")
        # while the test holds the gate (a file holding the number of calls let through),
        # later calls wait (at most 60 s): the sweep cannot finish before the test has
        # stopped it, however loaded the machine
        hold = os.path.join(HERE, "slow_hold")
        if os.path.exists(hold):
            with open(hold) as fh:
                allowed = int(fh.read())
            with open(os.path.join(HERE, "slow_calls.txt")) as fh:
                n = len(fh.read().splitlines())
            end = time.monotonic() + 60
            while n > allowed and os.path.exists(hold) and time.monotonic() < end:
                time.sleep(0.05)
        time.sleep(0.4)
        return MLP()


    def broken():
        raise RuntimeError("factory failed on purpose")


    def unseeded():
        torch.manual_seed(time.time_ns() % 2**31)
        return MLP()


    def _crash_once(tag):
        marker = os.path.join(HERE, f"crashed-{tag}.txt")
        if not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return MLP()


    def crash_once_local():
        return _crash_once("local")


    def crash_once_ray():
        return _crash_once("ray")
''')

MLP_SHAPE = (1, 12)
CNN_SHAPE = (1, 1, 6, 6)


@dataclass(frozen=True)
class Zoo:
    """The factory file and weights the tests use."""

    dir: Path
    models: Path
    mlp_weights: Path
    cnn_weights: Path

    def spec(self, factory: str) -> str:
        return f"{self.models}:{factory}"

    def ref(self, factory: str = "make", weights: Path | None | str = "mlp") -> ModelRef:
        w = {"mlp": self.mlp_weights, "cnn": self.cnn_weights}.get(str(weights), weights)
        return ModelRef(self.spec(factory), None if w is None else str(w))

    def calls(self, name: str = "calls.txt") -> int:
        p = self.dir / name
        return len(p.read_text().splitlines()) if p.exists() else 0


def write_zoo(d: Path) -> Zoo:
    d.mkdir(parents=True, exist_ok=True)
    models = d / "models.py"
    models.write_text(MODELS_PY)
    torch.manual_seed(0)
    mlp = load_model(f"{models}:make")
    cnn = load_model(f"{models}:make_cnn")
    with torch.no_grad():  # non-trivial BatchNorm statistics
        cnn.bn.running_mean.uniform_(-0.5, 0.5)
        cnn.bn.running_var.uniform_(0.5, 2.0)
    torch.save(mlp.state_dict(), d / "mlp.pt")
    torch.save(cnn.state_dict(), d / "cnn.pt")
    return Zoo(d, models, d / "mlp.pt", d / "cnn.pt")


def resume_tasks(models: str, weights: str) -> list:
    """Six slow tasks (each factory call sleeps 0.4 s and is counted) for the
    interrupted-sweep test; the subprocess and the test build them the same way."""
    from certcompress.scale import CertifyTask

    ref = ModelRef(f"{models}:slow_counted", weights)
    return [CertifyTask(model=ref, input_shape=MLP_SHAPE, radius=1.0, search_steps=2,
                        search_restarts=1,
                        pruning={"scope": "global", "criterion": "magnitude", "sparsity": s})
            for s in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)]


SWEEP_SCRIPT = textwrap.dedent('''
    import sys

    sys.path.insert(0, sys.argv[1])
    from scale_zoo import resume_tasks

    from certcompress.scale import LocalExecutor, sweep

    if __name__ == "__main__":
        import signal

        # Ctrl-C live, as in a terminal (a test runner's worker may start us with SIGINT
        # ignored, which Python would keep)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tasks = resume_tasks(sys.argv[2], sys.argv[3])
        sweep(tasks, LocalExecutor(workers=1), sys.argv[4], "resume", progress=False)
''')
