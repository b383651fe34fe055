"""Core benchmark (issues 2 and 14): ``certify`` (path-metric tier, no search, no
reference data) and ``path_norm`` as ratios to one float64 forward pass of the same model
at batch 1, for torchvision resnet18 and resnet50 at 224x224 (random weights, a 30%
magnitude pruning), all measured in one run.

Target (issue 14): certify <= 4x one float64 forward pass. Run:
``.venv/bin/python benchmarks/bench_core.py [--repeat N] [--threads T]``.

``certify`` is broken down by stage, from the fastest of its timed runs: ``trace``
(``trace_pair``: fx capture of the original, reused for the compressed copy when the
structure is identical, conversion, BatchNorm folding; the trace checks excluded),
``checks`` (the two trace checks: graph vs a float64 copy of each module on probes of the
domain, each module run twice on the centre), ``tier`` (the path-metric: parameter scan
and difference pass), ``measurement`` (the output scale: the original's trace-check
probes reused, plus random points within ``api.SCALE_MACS``, at least one: one forward
pass of each resnet) and ``rest`` (resolving the
domain, assembling the certificate, waiting for the SHA-256 digests computed in a worker
thread meanwhile). Each is reported as wall seconds over the forward pass's wall seconds
and, less sensitive to other load on the machine, CPU seconds (this process, all
threads, the digest worker's included) over the forward pass's CPU seconds. On a loaded
machine, ``--threads 1`` gives the steadiest ratios (two OpenMP threads contending with
other processes make single forward passes vary several-fold).

Also: ``two_traces_and_digests`` (what certify did before ``trace_pair``) against
``trace_pair`` alone, in the same run.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchvision
from _common import best_time, write_results  # type: ignore[import-not-found]

import certcompress as cc
import certcompress.api as api
import certcompress.capture.tracer as tracer
from certcompress.capture.pair import trace_pair
from certcompress.demo.digits import magnitude_prune_copy
from certcompress.digest import parameter_digest

SPARSITY = 0.3
STAGES = ("trace", "checks", "tier", "measurement", "rest")


class _Clock:
    """Wall and CPU seconds spent in wrapped functions, per stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - w0
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c0
        return timed


@contextmanager
def _instrumented(clock: _Clock) -> Iterator[None]:
    """certify's stages timed through the names it calls them by."""
    patches = [(api, "trace_pair", "trace+checks"), (tracer, "numeric_check", "checks"),
               (api, "_run_tiers", "tier"), (api, "_measure", "measurement"),
               (api, "_with_costs", "measurement")]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, stage in patches:
            setattr(mod, name, clock.wrap(stage, getattr(mod, name)))
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _forward(m64: torch.nn.Module, x: torch.Tensor, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of one float64 forward pass (after a warm-up)."""
    def fwd() -> None:
        with torch.no_grad():
            m64(x)
    fwd()
    runs = [_timed(fwd) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def bench(name: str, size: int, repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    pruned = magnitude_prune_copy(model, SPARSITY)
    m64 = copy.deepcopy(model).double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    shape = (1, 3, size, size)
    methods = ("path-metric",)

    def certify() -> cc.Certificate:
        return cc.certify(model, pruned, shape, 2.64, methods=methods, search_steps=0)

    fwd_wall, fwd_cpu = _forward(m64, x, repeat)
    certify()  # warm-up
    best: tuple[float, float, _Clock] | None = None
    for _ in range(repeat):
        clock = _Clock()
        with _instrumented(clock):
            wall, cpu = _timed(certify)
        if best is None or wall < best[0]:
            best = (wall, cpu, clock)
    assert best is not None
    # the forward pass again, after certify: the smaller of the two, so that load that
    # came and went during the run does not flatter the ratio
    w2, c2 = _forward(m64, x, repeat)
    fwd_wall, fwd_cpu = min(fwd_wall, w2), min(fwd_cpu, c2)
    cert_wall, cert_cpu, clock = best
    wall = {"trace": clock.wall["trace+checks"] - clock.wall["checks"],
            "checks": clock.wall["checks"], "tier": clock.wall["tier"],
            "measurement": clock.wall["measurement"]}
    cpu = {"trace": clock.cpu["trace+checks"] - clock.cpu["checks"],
           "checks": clock.cpu["checks"], "tier": clock.cpu["tier"],
           "measurement": clock.cpu["measurement"]}
    wall["rest"] = cert_wall - sum(wall.values())
    cpu["rest"] = cert_cpu - sum(cpu.values())
    cert = certify()

    t_pn = best_time(lambda: cc.path_norm(model, shape), repeat)

    def two_traces_and_digests() -> None:
        cc.trace(model, shape), cc.trace(pruned, shape)
        parameter_digest(model), parameter_digest(pruned)

    t_two = best_time(two_traces_and_digests, repeat)
    t_pair = best_time(lambda: trace_pair(model, pruned, shape).digests(), repeat)
    row = {"forward_f64_s": fwd_wall, "forward_f64_cpu_s": fwd_cpu,
           "certify_s": cert_wall, "certify_cpu_s": cert_cpu,
           "certify_ratio": cert_wall / fwd_wall, "certify_cpu_ratio": cert_cpu / fwd_cpu,
           "breakdown_ratio": {k: wall[k] / fwd_wall for k in STAGES},
           "breakdown_cpu_ratio": {k: cpu[k] / fwd_cpu for k in STAGES},
           "path_norm_ratio": t_pn / fwd_wall,
           "two_traces_and_digests_ratio": t_two / fwd_wall,
           "trace_pair_ratio": t_pair / fwd_wall,
           "trace_pair_reused": trace_pair(model, pruned, shape).reused,
           "certified_bound": cert.bound, "path_metric_exact": cert.path_metric_exact,
           "output_scale": cert.measurements.output_scale,
           "output_scale_source": cert.measurements.output_scale_source}
    parts = " + ".join(f"{k} {wall[k] / fwd_wall:.2f}" for k in STAGES)
    cparts = " + ".join(f"{k} {cpu[k] / fwd_cpu:.2f}" for k in STAGES)
    print(f"{name:9s} {size}x{size}: forward(f64) {fwd_wall * 1e3:.1f} ms wall, "
          f"{fwd_cpu * 1e3:.1f} ms CPU")
    print(f"{'':9s} certify (path-metric, no search) {row['certify_ratio']:.2f}x wall "
          f"(target <= 4) = {parts}")
    print(f"{'':9s} certify CPU time {row['certify_cpu_ratio']:.2f}x = {cparts}")
    print(f"{'':9s} path_norm {row['path_norm_ratio']:.2f}x | two traces + digests "
          f"{row['two_traces_and_digests_ratio']:.2f}x -> trace_pair "
          f"{row['trace_pair_ratio']:.2f}x (capture reused: {row['trace_pair_reused']}) | "
          f"bound {cert.bound:.3e}, output scale {row['output_scale']:.4g} "
          f"({row['output_scale_source']})")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    load = os.getloadavg()
    print(f"torch threads {torch.get_num_threads()}, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    rows = {m: bench(m, a.size, a.repeat) for m in a.models}
    path = write_results("core", {"size": a.size, "sparsity": SPARSITY, "load_average": load,
                                  "threads": torch.get_num_threads(), "results": rows})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
