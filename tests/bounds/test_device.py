"""Where the bound tiers run (``PropagationOptions.device``, docs/bounds.md "On a GPU"):
the device option's refusals and its ``"auto"`` choice on any machine; on a machine with
a CUDA GPU, the bounds tier and ``certify_local`` there, attacked with the shared harness,
re-checked on the CPU, and tight against the CPU's bound."""

from __future__ import annotations

import math

import _soundness as sh
import pytest
import torch
from _nets import compress, mlp, random_conv_net
from propagation_helpers import check_tier_sound, random_box

import certcompress as cc
from certcompress.bounds.propagation import device as devmod
from certcompress.bounds.propagation.device import (
    AUTO_CUDA_ELEMENTS,
    DEVICE_ENV,
    DEVICE_MARGIN,
    resolve_device,
    stated_up,
)
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.tierbase import RECERTIFY_RTOL, GraphPair, compare_values
from certcompress.bounds.tiers import bounds_tier, tier_registry
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine (the GPU "
                                "checks run where one is lent)")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CUDA", "", "cpu ", 3, None, "mps"])
def test_device_option_refuses_what_it_cannot_name(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="'auto'.*'cpu', 'cuda' or 'cuda:N'"):
        PropagationOptions(device=bad)  # type: ignore[arg-type]


def test_device_option_accepts_strings_and_torch_devices() -> None:
    assert PropagationOptions().device == "auto"
    assert PropagationOptions(device=torch.device("cpu")).device == "cpu"  # type: ignore[arg-type]
    assert PropagationOptions(device="cuda:1").device == "cuda:1"


def test_auto_picks_the_cpu_for_small_pairs_and_the_environment_overrides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device("auto", AUTO_CUDA_ELEMENTS - 1).type == "cpu"
    assert resolve_device("cpu", 10 ** 9).type == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto", 10 ** 9).type == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigurationError, match=DEVICE_ENV):
        resolve_device("auto", 10)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("cpu", 10).type == "cpu"  # an explicit device ignores it


def test_auto_keeps_the_cpu_unless_the_gpu_rule_is_on_and_rechecks_follow_the_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(devmod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devmod.torch.cuda, "device_count", lambda: 1)
    assert not devmod.AUTO_PICKS_GPU  # a GPU runs when asked for (docs/bounds.md)
    assert resolve_device("auto", 10 ** 9).type == "cpu"
    assert resolve_device("cuda", 10) == torch.device("cuda", 0)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert resolve_device("auto", 10) == torch.device("cuda", 0)
    monkeypatch.delenv(DEVICE_ENV)
    monkeypatch.setattr(devmod, "AUTO_PICKS_GPU", True)
    assert resolve_device("auto", AUTO_CUDA_ELEMENTS) == torch.device("cuda", 0)
    assert resolve_device("auto", AUTO_CUDA_ELEMENTS - 1).type == "cpu"
    with pytest.raises(ConfigurationError, match="only 1 CUDA device"):
        resolve_device("cuda:3", 10)
    # an entry made on a GPU is re-checked on one where one is present, else on the CPU
    assert devmod.recheck_device("cuda:0") == "cuda"
    assert devmod.recheck_device("cpu") == devmod.recheck_device(None) == "cpu"
    monkeypatch.setattr(devmod.torch.cuda, "is_available", lambda: False)
    assert devmod.recheck_device("cuda:0") == "cpu"


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_not_silently_run_on_the_cpu() -> None:
    net = mlp(3, 8, 2, 2, seed=0)
    comp = compress(net, "prune", 1, 0.3)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 3))
    with pytest.raises(ConfigurationError, match="torch.cuda.is_available.. is False"):
        cc.certify(net, comp, domain=dom, methods=("bounds",),
                   propagation=PropagationOptions(device="cuda"))
    with pytest.raises(ConfigurationError, match="no usable GPU"):
        cc.certify_local(net, comp, torch.zeros(1, 3), 0.1, progress=False,
                         propagation=PropagationOptions(device="cuda"))


def test_cpu_statement_is_unchanged_and_recorded() -> None:
    net = mlp(4, 12, 2, 3, seed=2)
    comp = compress(net, "round", 3, 0.1)
    dom = random_box((1, 4), 5)
    g, g2 = cc.trace(net, (1, 4)), cc.trace(comp, (1, 4))
    auto = bounds_tier(g, g2, dom)
    cpu = bounds_tier(g, g2, dom, PropagationOptions(device="cpu"))
    assert auto.details["device"] == cpu.details["device"] == "cpu"
    assert (auto.bound, auto.per_output) == (cpu.bound, cpu.per_output)


def test_a_gpu_statement_is_raised_by_the_margin_and_passes_a_cpu_recheck() -> None:
    """A bound computed on a GPU is stated DEVICE_MARGIN higher: a CPU re-check whose
    kernels summed in another order (simulated: the CPU bound moved by +-1e-13 relative,
    far more than reordering moves a float64 sum) finds it no smaller, and not larger
    beyond the re-check's tolerance."""
    cuda = torch.device("cuda", 0)
    vals = [0.0, 1e-300, 3.5, 1e30, 5e-324]
    up = stated_up(cuda, vals)
    assert stated_up(torch.device("cpu"), vals) == vals
    for v, u in zip(vals, up):
        assert u >= v and (v == 0.0 or u > v)
        assert u <= v * (1.0 + 2.0 * DEVICE_MARGIN) + 5e-324
    for v in (3.5, 1e30, 1e-3):
        for moved in (v * (1 + 1e-13), v * (1 - 1e-13)):
            problems: list[str] = []
            compare_values("bound", stated_up(cuda, [moved])[0], v, problems)
            assert problems == [], problems
    assert DEVICE_MARGIN < RECERTIFY_RTOL / 2


def _meta(spec: str, elements: int) -> torch.device:
    """Stands in for a GPU whose run fails: nothing computes on the meta device."""
    return torch.device("meta")


def test_a_failed_automatic_gpu_run_falls_back_to_the_cpu_with_a_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``"auto"`` chose a GPU and the run fails there (out of memory, an op the
    device lacks), the tier and certify_local say so and compute the CPU's bound; a
    device named explicitly, and certcompress's own errors, propagate."""
    cnet, shape = random_conv_net(["conv_stride", "maxpool", "residual"], 4, 6, 3, seed=1)
    comp = compress(cnet, "prune", 2, 0.4)
    dom = random_box(shape, 3, max_width=1.0)
    g, g2 = cc.trace(cnet, shape), cc.trace(comp, shape)
    cpu = bounds_tier(g, g2, dom, PropagationOptions(device="cpu"))
    pts = dom.sample(2, torch.Generator().manual_seed(0))
    local_cpu = cc.certify_local(cnet, comp, pts, 0.05, progress=False)
    monkeypatch.setattr("certcompress.bounds.tiers.resolve_device", _meta)
    monkeypatch.setattr("certcompress.bounds.local.resolve_device", _meta)
    with pytest.warns(RuntimeWarning, match="failed .*ran on the CPU instead"):
        auto = bounds_tier(g, g2, dom)
    assert auto.details["device"] == "cpu"
    assert (auto.bound, auto.per_output) == (cpu.bound, cpu.per_output)
    with pytest.warns(RuntimeWarning, match="ran on the CPU instead"):
        local = cc.certify_local(cnet, comp, pts, 0.05, progress=False)
    assert local.deviation_bound == local_cpu.deviation_bound
    assert "computed on cpu" in local.rounding
    with pytest.raises(RuntimeError):
        bounds_tier(g, g2, dom, PropagationOptions(device="cuda"))


def test_run_on_passes_certcompress_errors_and_explicit_devices_through() -> None:
    def refuse(d: torch.device) -> None:
        raise cc.errors.NumericalRangeError("overflow")

    def fail(d: torch.device) -> str:
        if d.type != "cpu":
            raise RuntimeError("CUDA out of memory")
        return "cpu result"

    meta = torch.device("meta")
    with pytest.raises(cc.errors.NumericalRangeError):
        devmod.run_on("auto", meta, refuse)
    with pytest.raises(RuntimeError, match="out of memory"):
        devmod.run_on("cuda", meta, fail)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        assert devmod.run_on("auto", meta, fail) == ("cpu result", torch.device("cpu"))


# ---------------------------------------------------------------------- on a GPU
def _pairs() -> list[tuple[str, torch.nn.Module, torch.nn.Module, InputDomain]]:
    out = []
    net = mlp(6, 32, 3, 4, seed=0)
    out.append(("mlp-round", net, compress(net, "round", 1, 0.05), random_box((1, 6), 1)))
    for k, blocks in enumerate((["conv_stride", "residual", "maxpool"],
                                ["conv_bn", "concat", "avgpool", "convT"],
                                ["leaky", "relu6", "maxpool_ceil", "adaptive"])):
        cnet, shape = random_conv_net(blocks, 4, 6, 3, seed=10 + k)
        out.append((f"cnn-{k}", cnet, compress(cnet, "prune", 20 + k, 0.4),
                    random_box(shape, 30 + k, max_width=1.0)))
    return out


@needs_cuda
@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("intermediate", ["crown", "interval"])
def test_bounds_tier_on_cuda_is_sound_and_rechecks_on_the_gpu(
        case: int, intermediate: str) -> None:
    name, net, comp, dom = _pairs()[case]
    gpu_opts = PropagationOptions(intermediate=intermediate, device="cuda")  # type: ignore[arg-type]
    tier, worst = check_tier_sound(net, comp, dom, seed=case, options=gpu_opts)
    assert tier.details["device"] == "cuda:0"
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    # re-checked where it was made (recheck_device: a GPU is present here)
    _, problems = tier_registry().get("bounds").recheck(GraphPair(g, g2), dom, tier)
    assert problems == [], f"{name}: the GPU re-check refuses the GPU's statement: {problems}"
    cpu = bounds_tier(g, g2, dom, PropagationOptions(intermediate=intermediate,  # type: ignore[arg-type]
                                                     device="cpu"))
    # recorded, not asserted: last-bit differences can tip the engine's discrete choices
    sh.record(f"bounds tier on CUDA ({intermediate})", tier.bound, worst)
    sh.record(f"bounds tier on CUDA over CPU ({intermediate})", tier.bound, cpu.bound)


@needs_cuda
def test_certify_on_cuda_embeds_a_certificate_that_recertifies_on_the_gpu() -> None:
    _, net, comp, dom = _pairs()[1]
    cert = cc.certify(net, comp, domain=dom, methods=("bounds",),
                      propagation=PropagationOptions(device="cuda"))
    entry = cert.by_method["bounds"]
    assert entry.details["device"] == "cuda:0"
    tier = tier_registry().get("bounds")
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    _, problems = tier.recheck(GraphPair(g, g2), dom, entry)
    assert problems == []


@needs_cuda
def test_certify_local_on_cuda_is_sound() -> None:
    _, net, comp, dom = _pairs()[2]
    pts = dom.sample(3, torch.Generator().manual_seed(0))
    eps = 0.05
    gpu = cc.certify_local(net, comp, pts, eps, progress=False,
                           propagation=PropagationOptions(device="cuda"))
    cpu = cc.certify_local(net, comp, pts, eps, progress=False,
                           propagation=PropagationOptions(device="cpu"))
    assert "cuda" in gpu.rounding and "cpu" in cpu.rounding
    f, fc = sh.f64(net), sh.f64(comp)
    for i in range(3):
        lo, hi = pts[i] - eps, pts[i] + eps
        found = sh.attack(f, fc, lo.unsqueeze(0), hi.unsqueeze(0), seed=i, steps=30,
                          restarts=3)
        bound = gpu.deviation_bound[i]
        sh.assert_sound(found, bound, None, f"certify_local on CUDA, point {i}")
        assert math.isfinite(bound)
        sh.record("certify_local on CUDA over CPU", bound, cpu.deviation_bound[i])


def test_a_certificate_names_where_its_bound_was_computed_and_refuses_other_names() -> None:
    import json

    net = mlp(3, 8, 2, 2, seed=4)
    comp = compress(net, "prune", 5, 0.3)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 3))
    cert = cc.certify(net, comp, domain=dom, methods=("bounds",))
    data = json.loads(cert.to_json())
    entry = next(e for e in data["by_method"] if e["method"] == "bounds") \
        if isinstance(data["by_method"], list) else data["by_method"]["bounds"]
    assert entry["details"]["device"] == "cpu"
    assert cc.Certificate.from_json(json.dumps(data)).by_method["bounds"].details["device"] \
        == "cpu"
    entry["details"]["device"] = "gpu0"
    with pytest.raises(cc.errors.CertificateError, match="device"):
        cc.Certificate.from_json(json.dumps(data))


def test_cudnn_stays_off_while_any_thread_computes_on_a_gpu() -> None:
    """cuDNN's switch is process-wide: a GPU run in one thread that ends must not turn
    cuDNN back on under another thread's GPU run (its convolutions would then be free to
    pick FFT or Winograd algorithms, outside the error model); the last one out restores
    the setting from before, and a user's cudnn.deterministic is left alone. The meta
    device stands in for the GPU (on_device treats every non-CPU device alike)."""
    import threading

    meta = torch.device("meta")
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def long_run() -> None:
        with devmod.on_device(meta):
            inside.set()
            release.wait(30)
            seen.append(torch.backends.cudnn.enabled)

    before = (torch.backends.cudnn.enabled, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.deterministic = True
    try:
        t = threading.Thread(target=long_run)
        t.start()
        assert inside.wait(30)
        with devmod.on_device(meta):  # a short run in this thread, ending first
            assert not torch.backends.cudnn.enabled
            assert torch.backends.cudnn.deterministic
        release.set()
        t.join(30)
        assert seen == [False], "cuDNN was turned back on while another GPU run was going"
        assert torch.backends.cudnn.enabled == before[0]
        assert torch.backends.cudnn.deterministic
    finally:
        release.set()
        torch.backends.cudnn.enabled, torch.backends.cudnn.deterministic = before
