"""Certificates in float32 arithmetic: the bound covers both models as executed in IEEE
float32 (torch on CPU, onnxruntime), in any summation order.

Every check is one-sided: a deviation measured in float32 never exceeds the float32
certificate. The measured deviations are formed in float64 from the float32 outputs.
"""

from __future__ import annotations

import copy
import math
import textwrap
from pathlib import Path

import _soundness as sh
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import certcompress as cc
from certcompress import cli
from certcompress.bounds.arithmetic import gamma32
from certcompress.bounds.propagation.engine import PropagationOptions

ULP_UP = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))


def _linear_1x1(weight: float, bias: float) -> nn.Module:
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.fill_(weight)
        m.bias.fill_(bias)
    return m.eval()


def _dev32(f: nn.Module, g: nn.Module, x: Tensor) -> Tensor:
    """Per-input l1 deviation of the float32 outputs (formed in float64)."""
    return sh.measure(sh.f32(f), sh.f32(g), x, float32=True).l1


# --------------------------------------------------------------------- the issue's case
def test_issue_case_one_ulp_weight_with_large_bias() -> None:
    m, m2 = _linear_1x1(1.0, 1e6), _linear_1x1(ULP_UP, 1e6)
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 1))
    exact = cc.certify(m, m2, domain=dom, search_steps=0)
    f32 = cc.certify(m, m2, domain=dom, search_steps=0, arithmetic="float32")
    x = torch.tensor([[2.0 ** -5]])  # 1e6 + x is a rounding tie in float32
    measured = float(_dev32(m, m2, x).max())
    assert measured == 0.0625
    assert exact.bound < 1.2e-7 < measured  # the exact certificate says nothing of float32
    assert exact.arithmetic == "exact" and f32.arithmetic == "float32"
    assert f32.bound >= measured
    for tier in f32.by_method.values():
        assert tier.bound >= measured and tier.per_output[0] >= measured
        assert tier.details["arithmetic"] == "float32"
        assert tier.details["bound_exact"] <= tier.bound
    # not absurdly loose: two roundings of ~1e6 each, at most a few ulps of 1e6
    sh.record("certify float32: one-ulp Linear(1, 1), bias 1e6", f32.bound, measured,
              at_most=16.0)
    assert "float32" in f32.summary() and "arithmetic" in exact.summary()


def test_certificate_records_arithmetic_and_reads_old_files() -> None:
    m, m2 = _linear_1x1(1.0, 1e6), _linear_1x1(ULP_UP, 1e6)
    cert = cc.certify(m, m2, (1, 1), 1.0, search_steps=0, arithmetic="float32")
    back = cc.Certificate.from_json(cert.to_json())
    assert back.arithmetic == "float32" and back.bound == cert.bound
    d = cert.to_dict()
    del d["arithmetic"]  # a file written before the field existed
    assert cc.Certificate.from_dict(d).arithmetic == "exact"
    d["arithmetic"] = "float16"
    with pytest.raises(cc.CertificateError, match="arithmetic"):
        cc.Certificate.from_dict(d)
    with pytest.raises(cc.ConfigurationError, match="arithmetic"):
        cc.certify(m, m2, (1, 1), 1.0, arithmetic="fp32")


def test_gamma() -> None:
    assert gamma32(1) >= 2.0 ** -24
    assert gamma32(1000) >= 1000 * 2.0 ** -24 / (1 - 1000 * 2.0 ** -24)
    with pytest.raises(cc.NumericalRangeError):
        gamma32(2 ** 23)


# -------------------------------------------------------------- float32 executions
def _chunked_forward(model: nn.Sequential, x: Tensor, chunk: int, reverse: bool) -> Tensor:
    """The MLP evaluated in float32 with each Linear summed in chunks of ``chunk``
    inputs, the partial sums added in forward or reverse order (another summation
    order than torch's GEMM)."""
    h = x.float()
    for layer in model:
        if isinstance(layer, nn.Linear):
            w, b = layer.weight.float(), layer.bias.float()
            parts = [h[:, s:s + chunk] @ w[:, s:s + chunk].T
                     for s in range(0, h.shape[1], chunk)]
            if reverse:
                parts = parts[::-1]
            acc = parts[0]
            for p in parts[1:]:
                acc = acc + p
            h = acc + b if not reverse else b + acc
        else:
            h = layer(h)
    return h


def _permuted(model: nn.Sequential, perm: Tensor) -> nn.Sequential:
    """The same function with the first layer's input features permuted jointly with
    its weight columns (``model(x) = permuted(x[:, perm])`` exactly)."""
    p = copy.deepcopy(model)
    with torch.no_grad():
        p[0].weight.copy_(model[0].weight[:, perm])
    return p


def _mlp(seed: int, widths: list[int], bias_scale: float) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(widths[i]))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * bias_scale)
        layers += [lin, nn.ReLU()] if i < len(widths) - 2 else [lin]
    return nn.Sequential(*layers).eval()


def _compress(model: nn.Module, seed: int, kind: str) -> nn.Module:
    """One-ulp changes of random weights (``ulp``), or magnitude pruning (``prune``)."""
    c = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in c.parameters():
            if p.dim() < 2:
                continue
            if kind == "ulp":
                mask = torch.rand(p.shape, generator=g) < 0.5
                up = torch.nextafter(p, torch.full_like(p, math.inf))
                down = torch.nextafter(p, torch.full_like(p, -math.inf))
                sign = torch.rand(p.shape, generator=g) < 0.5
                p.copy_(torch.where(mask, torch.where(sign, up, down), p))
            else:
                p.masked_fill_(p.abs() < p.abs().flatten().kthvalue(
                    max(1, p.numel() // 3)).values, 0.0)
    return c.eval()


def _probe_points(dom: cc.InputDomain, n: int, seed: int, pgd: tuple[nn.Module, nn.Module]
                  | None = None) -> Tensor:
    """The shared harness's points of the domain (centre, extreme corners, ``n`` uniform
    ones, every corner where few) and, given two models, their float32 PGD maximizer."""
    lo, hi = sh.box(dom, dom.shape)
    x = sh.points(lo, hi, torch.Generator().manual_seed(seed), n, 0)
    if pgd is not None:
        x = torch.cat([x, sh.pgd(sh.f32(pgd[0]), sh.f32(pgd[1]), lo, hi, steps=20,
                                 restarts=4, seed=seed)])
    return x.float()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), log_bias=st.integers(0, 6),
       kind=st.sampled_from(["ulp", "prune"]), width=st.integers(3, 24),
       half_width=st.sampled_from([1.0, 0.1, 100.0]))
def test_mlp_float32_deviation_never_exceeds_certificate(seed: int, log_bias: int, kind: str,
                                                          width: int, half_width: float
                                                          ) -> None:
    model = _mlp(seed, [width, 16, 8, 3], 10.0 ** log_bias)
    comp = _compress(model, seed, kind)
    dom = cc.InputDomain.box(-half_width, half_width, shape=(1, width))
    cert = cc.certify(model, comp, domain=dom, search_steps=0, arithmetic="float32")
    x = _probe_points(dom, 64, seed, pgd=(model, comp))
    devs = [_dev32(model, comp, x)]
    perm = torch.randperm(width, generator=torch.Generator().manual_seed(seed))
    devs.append(_dev32(_permuted(model, perm), _permuted(comp, perm), x[:, perm]))
    for chunk, rev in ((1, False), (3, True), (5, False)):
        with torch.no_grad():
            a = _chunked_forward(model, x, chunk, rev).double()
            b = _chunked_forward(comp, x, chunk, not rev).double()  # mixed orders
        devs.append((a - b).abs().sum(1))
    worst = float(torch.stack(devs).max())
    sh.record("certify float32: MLPs, float32 executions", cert.bound, worst)
    per_worst = torch.stack([(_chunked_forward(model, x, 2, True).double()
                              - _chunked_forward(comp, x, 7, False).double()).abs().amax(0)])
    assert worst <= cert.bound, (worst, cert.bound)
    for tier in cert.by_method.values():
        assert worst <= tier.bound
        assert bool((per_worst[0] <= torch.tensor(tier.per_output, dtype=torch.float64)).all())


def _cnn(seed: int, bias_scale: float) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1, bias=False),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 3))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-bias_scale, bias_scale)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-bias_scale, bias_scale)
        net[-1].bias.fill_(bias_scale)
    return net.eval()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), log_bias=st.integers(0, 5),
       kind=st.sampled_from(["ulp", "prune"]))
def test_cnn_with_batchnorm_float32(seed: int, log_bias: int, kind: str) -> None:
    model = _cnn(seed, 10.0 ** log_bias)
    comp = _compress(model, seed, kind)
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    cert = cc.certify(model, comp, domain=dom, search_steps=0, arithmetic="float32",
                      propagation=PropagationOptions(intermediate="interval"))
    x = _probe_points(dom, 48, seed)
    worst = float(_dev32(model, comp, x).max())
    # the same models with BatchNorm folded into the convolutions in float32 (what an
    # exporter or onnxruntime's optimizer does)
    folded = float(_dev32(_fold(model), _fold(comp), x).max())
    assert max(worst, folded) <= cert.bound
    for tier in cert.by_method.values():
        assert max(worst, folded) <= tier.bound
        assert tier.details["bound_exact"] <= tier.bound


def _fold(net: nn.Module) -> nn.Module:
    """Conv+BatchNorm pairs folded in float32 arithmetic."""
    net = copy.deepcopy(net).float()
    layers = list(net)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(layers) and \
                isinstance(layers[i + 1], nn.BatchNorm2d):
            bn = layers[i + 1]
            with torch.no_grad():
                a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv = copy.deepcopy(m)
                conv.weight.mul_(a.reshape(-1, 1, 1, 1))
                b = m.bias if m.bias is not None else torch.zeros_like(a)
                conv.bias = nn.Parameter((b - bn.running_mean) * a + bn.bias)
            out.append(conv)
            i += 2
            continue
        out.append(m)
        i += 1
    return nn.Sequential(*out).eval()


# ----------------------------------------------------------------------- onnxruntime
def test_onnx_under_onnxruntime_no_tolerance(tmp_path: Path) -> None:
    model = _mlp(3, [6, 16, 3], 1e5)
    comp = _compress(model, 3, "ulp")
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 6))
    cert = cc.certify(model, comp, domain=dom, search_steps=0, arithmetic="float32")
    path = tmp_path / "m.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=model, search_steps=2)
    x = _probe_points(dom, 64, 0)
    from certcompress.export import _runtime

    ort = _runtime.runner(_runtime.session(str(path)))
    y = ort(x).double()
    with torch.no_grad():
        dev = (model.float()(x.float()).double() - y).abs().sum(1)
    assert float(dev.max()) <= cert.bound
    report = cc.verify_onnx(path, original=model, search_steps=3)
    bound_check = next(c for c in report.checks if c.name == "bound")
    assert bound_check.status == "passed"
    assert bound_check.limit == cert.bound  # no tolerance added to a float32 certificate


def test_onnx_cnn_float32_and_recertify(tmp_path: Path) -> None:
    model = _cnn(5, 100.0)
    comp = _compress(model, 5, "prune")
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    cert = cc.certify(model, comp, domain=dom, search_steps=0, arithmetic="float32",
                      methods=("path-metric",))
    path = tmp_path / "c.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=model, search_steps=2)
    report = cc.verify_onnx(path, original=model, search_steps=2, recertify=True)
    assert {c.name: c.status for c in report.checks}["bound"] == "passed"
    assert {c.name: c.status for c in report.checks}["recertify"] == "passed"


# --------------------------------------------------------------------------- refusals
def test_overflowing_domain_is_refused() -> None:
    m, m2 = _linear_1x1(4.0, 0.0), _linear_1x1(ULP_UP * 4.0, 0.0)  # 4e38 > FLT_MAX
    dom = cc.InputDomain.box(-1e38, 1e38, shape=(1, 1))
    with pytest.raises(cc.NumericalRangeError, match="float32"):
        cc.certify(m, m2, domain=dom, search_steps=0, arithmetic="float32")


def test_bilinear_interpolation_is_refused() -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.interpolate(self.conv(x), scale_factor=2.0,
                                             mode="bilinear").flatten(1)

    m = Up().eval()
    with pytest.raises(cc.UnsupportedModelError, match="float32"):
        cc.certify(m, copy.deepcopy(m), (1, 1, 4, 4), 1.0, search_steps=0,
                   arithmetic="float32")


def test_input_cast_is_counted() -> None:
    """A domain whose bounds float32 cannot represent: the input rounding is covered."""
    m, m2 = _linear_1x1(1e4, 0.0), _linear_1x1(1e4, 0.0)
    dom = cc.InputDomain.box(-0.1, 0.1, shape=(1, 1))
    cert = cc.certify(m, m2, domain=dom, search_steps=0, arithmetic="float32")
    assert cert.by_method["path-metric"].details["bound_exact"] == 0.0  # the same function
    # both models' input rounding (u |x|) times the weight, at least
    assert cert.bound >= 2 * 1e4 * 0.1 * 2.0 ** -24
    x = torch.tensor([[0.1]], dtype=torch.float64)  # real input, rounded by the cast
    with torch.no_grad():
        exact = float(m.double()(x))
        deployed = float(m.float()(x.float()))
    assert abs(deployed - exact) <= cert.bound / 2


# ------------------------------------------------------------------------------- CLI
def test_cli_arithmetic_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    """))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    torch.save(net.state_dict(), tmp_path / "a.pt")
    torch.save(_compress(net, 0, "ulp").state_dict(), tmp_path / "b.pt")
    spec = f"{tmp_path / 'net.py'}:make"
    out = tmp_path / "cert.json"
    code = cli.main(["certify", spec, spec, "--weights", str(tmp_path / "a.pt"),
                     "--compressed-weights", str(tmp_path / "b.pt"), "--input-shape", "1", "4",
                     "--domain", "0:1", "--search-steps", "0", "--arithmetic", "float32",
                     "--out", str(out)])
    assert code == 0
    assert "float32" in capsys.readouterr().out
    assert cc.Certificate.load(out).arithmetic == "float32"


class _Scaled(nn.Module):
    """A Linear followed by a scalar multiply (which onnxruntime may fold)."""

    def __init__(self, lin: nn.Linear, head: nn.Linear, folded: bool) -> None:
        super().__init__()
        self.lin, self.head, self.folded = lin, head, folded

    def forward(self, x: Tensor) -> Tensor:
        if self.folded:
            return self.head(torch.relu(nn.functional.linear(
                x, self.lin.weight * 0.1, self.lin.bias * 0.1)))
        return self.head(torch.relu(self.lin(x) * 0.1))


def test_scalar_multiply_folded_by_a_runtime() -> None:
    g = torch.Generator().manual_seed(7)
    lin, head = nn.Linear(16, 16), nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 16, generator=g))
        lin.bias.copy_(torch.randn(16, generator=g) * 1e4)
    model = _Scaled(lin, head, folded=False).eval()
    comp = _compress(model, 7, "ulp")
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 16))
    cert = cc.certify(model, comp, domain=dom, search_steps=0, arithmetic="float32")
    x = _probe_points(dom, 64, 7)
    as_folded = [_Scaled(m.lin, m.head, folded=True).eval() for m in (model, comp)]
    worst = max(float(_dev32(model, comp, x).max()),
                float(_dev32(as_folded[0], as_folded[1], x).max()),
                float(_dev32(as_folded[0], comp, x).max()))
    assert worst <= cert.bound
