"""Trace-check benchmark (issue 12): what the trace-time equivalence check costs, as a
ratio to one float64 forward pass of the same model (target <= 3x for resnet18 at
224x224).

The check (``certcompress.capture.check``): a float64 deep copy of the module, the module
run on the probes and once more on the centre, the graph's ``ForwardInterpreter`` on the
probes, and the state comparison. Best of N after a warm-up, batch 1, random weights.
Also reported: ``trace`` with and without the check. Run:
``.venv/bin/python benchmarks/bench_trace_check.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torchvision
from _common import best_time, write_results  # type: ignore[import-not-found]
from torch import nn

from certcompress.capture import trace
from certcompress.capture.check import default_box, numeric_check


def _row(name: str, model: nn.Module, shape: tuple[int, ...], repeat: int) -> dict[str, object]:
    model = model.eval()
    eager = copy.deepcopy(model).double()
    x = torch.rand(shape, dtype=torch.float64)

    def forward() -> None:
        with torch.no_grad():
            eager(x)

    graph = trace(model, shape, check=False)
    lower, upper = default_box(shape)
    report = numeric_check(model, graph, lower, upper)
    assert report.passed, report.summary()
    t_fwd = best_time(forward, repeat)
    t_check = best_time(lambda: numeric_check(model, graph, lower, upper), repeat)
    t_trace = best_time(lambda: trace(model, shape, check=False), repeat)
    t_traced = best_time(lambda: trace(model, shape), repeat)
    row = {"model": name, "input_shape": list(shape), "probes": report.probes,
           "forward_float64_s": t_fwd, "check_s": t_check,
           "check_over_forward": t_check / t_fwd, "trace_without_check_s": t_trace,
           "trace_with_check_s": t_traced, "max_rel_error": report.max_rel_error}
    print(f"{name:>10} {str(shape):>18}: forward {t_fwd * 1e3:8.1f} ms, check "
          f"{t_check * 1e3:8.1f} ms ({report.probes} probe(s)) = {t_check / t_fwd:5.2f}x; "
          f"trace {t_trace * 1e3:7.1f} ms -> {t_traced * 1e3:7.1f} ms with the check")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, skip 32x32")
    args = ap.parse_args()
    repeat = 1 if args.quick else 3
    torch.manual_seed(0)
    rows = [_row("resnet18", torchvision.models.resnet18(), (1, 3, 224, 224), repeat)]
    if not args.quick:
        rows.append(_row("resnet18", torchvision.models.resnet18(num_classes=10),
                         (1, 3, 32, 32), repeat))
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        rows.append(_row("mlp", mlp, (1, 1, 8, 8), repeat))
    path = write_results("trace_check", {"rows": rows, "target": "check <= 3x one float64 "
                                         "forward pass, resnet18 at 224x224"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
