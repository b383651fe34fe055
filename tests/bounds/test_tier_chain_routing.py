"""The ``bounds`` tier routes chain pairs (MLPs, plain CNNs) through the differential
single pass of certcompress.equivalence.chain as well and states, per output and for
the l1 bound, the smaller of the two sound bounds (docs/bounds.md, "Chain pairs").

Tested: soundness through the shared harness (hypothesis MLP and 1-D CNN pairs, pruned,
float16-cast, rounded; attack and, for one to three inputs, the dense grid; every bound
one-sided: bound >= found), for the tier's bounds and for the chain pass's own bounds;
never looser than the engine alone (which it still computes, to the bit); strictly
tighter on float16 MLP pairs; the option and its record in the certificate; the
``verify_onnx(recertify=True)`` round trip, also for a certificate made before the
routing (no ``chain`` recorded: re-checked with the engine alone)."""

from __future__ import annotations

import math
from pathlib import Path

import _soundness as sh
import pytest
import torch
from _nets import conv1d_mlp as _cnn
from _nets import deterministic_copy as _compress
from _nets import mlp as _mlp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.tierbase import GraphPair
from certcompress.bounds.tiers import bounds_tier, tier_registry
from certcompress.certificate import MethodBound
from certcompress.domain import InputDomain
from certcompress.equivalence import chain_bounds
from certcompress.equivalence.chain_bounds import chain_per_output as _chain_per_output
from certcompress.equivalence.chain_bounds import chain_state as _chain_state
from certcompress.errors import ConfigurationError, NumericalRangeError

# ------------------------------------------------------------------ pairs






def _box(n_in: int, half: float) -> InputDomain:
    c = torch.linspace(-0.3, 0.4, n_in, dtype=torch.float64)[None]
    return InputDomain.box(c - half, c + half, shape=(1, n_in))


def _tier(net: nn.Module, comp: nn.Module, dom: InputDomain,
          opts: PropagationOptions) -> MethodBound:
    return bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom, opts)


def _found(net: nn.Module, comp: nn.Module, dom: InputDomain, seed: int) -> sh.Found:
    lo, hi = sh.box(dom, dom.shape)
    extra = sh.dense_grid(lo, hi) if lo.numel() <= 3 else None
    return sh.attack(sh.f64(net), sh.f64(comp), lo, hi, seed, per_output=True, extra=extra,
                     steps=20, restarts=3)


# ------------------------------------------------------------------ soundness
@settings(max_examples=30, deadline=None)
@given(arch=st.sampled_from(["mlp", "mlp", "cnn"]), n_in=st.integers(1, 5),
       width=st.integers(3, 12), depth=st.integers(1, 3), n_out=st.integers(1, 3),
       kind=st.sampled_from(["prune", "float16", "round"]), seed=st.integers(0, 2 ** 16),
       half=st.sampled_from([0.01, 0.1, 0.5, 2.0]), steps=st.sampled_from([0, 3]),
       intermediate=st.sampled_from(["crown", "interval"]))
def test_tier_and_chain_pass_are_sound(arch: str, n_in: int, width: int, depth: int,
                                       n_out: int, kind: str, seed: int, half: float,
                                       steps: int, intermediate: str) -> None:
    net = _mlp(n_in, width, depth, n_out, seed) if arch == "mlp" else \
        _cnn(n_in, 2, n_out, seed)
    comp = _compress(net, kind)
    dom = _box(n_in, half)
    opts = PropagationOptions(slope_steps=steps, intermediate=intermediate)  # type: ignore[arg-type]
    mb = _tier(net, comp, dom, opts)
    found = _found(net, comp, dom, seed)
    what = f"{arch} {kind} n_in={n_in} half={half} steps={steps} {intermediate}"
    sh.assert_sound(found, mb.bound, mb.per_output, f"bounds tier ({what})")
    d = mb.details
    assert d["chain"] is True and "chain_bound" in d, d
    # the chain pass alone, l1 and per output (a min with the engine could hide it)
    sh.assert_sound(found, d["chain_bound"], None, f"chain pass l1 ({what})")
    lowered = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    state = _chain_state(lowered, dom, opts)
    assert state is not None
    per = _chain_per_output(state, lowered.output_size, opts)
    sh.assert_sound(found, float(per.sum()), per.tolist(), f"chain pass per output ({what})")
    sh.record("bounds tier, chain pairs", mb.bound, found.worst)


# ------------------------------------------------------------------ never looser
@settings(max_examples=15, deadline=None)
@given(n_in=st.integers(1, 6), width=st.integers(3, 16), depth=st.integers(1, 3),
       n_out=st.integers(1, 4), kind=st.sampled_from(["prune", "float16", "round"]),
       seed=st.integers(0, 2 ** 16), half=st.sampled_from([0.02, 0.2, 1.0]),
       steps=st.sampled_from([0, 2]))
def test_never_looser_than_the_engine_alone(n_in: int, width: int, depth: int, n_out: int,
                                            kind: str, seed: int, half: float,
                                            steps: int) -> None:
    net = _mlp(n_in, width, depth, n_out, seed)
    comp = _compress(net, kind)
    dom = _box(n_in, half)
    before = _tier(net, comp, dom, PropagationOptions(chain=False, slope_steps=steps))
    after = _tier(net, comp, dom, PropagationOptions(slope_steps=steps))
    assert after.bound <= before.bound
    assert all(a <= b for a, b in zip(after.per_output, before.per_output))
    # the engine's bound is still computed, the same as without the routing
    assert after.details["engine_bound"] == before.bound == before.details["engine_bound"]
    assert after.bound == min(after.details["engine_bound"], after.details["chain_bound"],
                              after.bound)
    assert after.details["differential_single_pass"] is (after.bound < before.bound)
    assert before.details["chain"] is False and "chain_bound" not in before.details
    assert before.details["differential_single_pass"] is False


@pytest.mark.parametrize("n_in,width,depth,n_out,half", [(10, 40, 2, 10, 0.05),
                                                         (6, 20, 3, 3, 0.2)])
def test_strictly_tighter_on_a_float16_mlp(n_in: int, width: int, depth: int, n_out: int,
                                          half: float) -> None:
    net = _mlp(n_in, width, depth, n_out, 1)
    comp = _compress(net, "float16")
    dom = _box(n_in, half)
    before = _tier(net, comp, dom, PropagationOptions(chain=False))
    after = _tier(net, comp, dom, PropagationOptions())
    assert after.bound < before.bound
    assert max(after.per_output) < max(before.per_output)
    assert after.details["differential_single_pass"] is True
    assert after.details["chain_bound"] == after.bound < after.details["engine_bound"]
    found = _found(net, comp, dom, 0)
    sh.assert_sound(found, after.bound, after.per_output, "float16 MLP")
    sh.record("bounds tier, float16 MLP (chain)", after.bound, found.worst)


def test_a_pair_that_is_no_chain_keeps_the_engine_bound() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)) + x)

    net = Residual().double().eval()
    comp = _compress(net, "float16")
    dom = _box(3, 0.3)
    mb = _tier(net, comp, dom, PropagationOptions())
    off = _tier(net, comp, dom, PropagationOptions(chain=False))
    assert "chain_bound" not in mb.details and mb.details["differential_single_pass"] is False
    assert mb.bound == off.bound == mb.details["engine_bound"]
    sh.assert_sound(_found(net, comp, dom, 1), mb.bound, mb.per_output, "residual pair")


@pytest.mark.parametrize("failure", ["nan", "inf", "raise"])
def test_a_chain_pass_that_overflows_leaves_the_engine_bound(
        monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    net = _mlp(4, 8, 2, 3, 2)
    comp = _compress(net, "float16")
    dom = _box(4, 0.3)
    off = _tier(net, comp, dom, PropagationOptions(chain=False))

    def broken(*args: object) -> torch.Tensor:
        if failure == "raise":
            raise NumericalRangeError("overflow in the chain pass (test)")
        return torch.full((3,), math.nan if failure == "nan" else math.inf,
                          dtype=torch.float64)

    monkeypatch.setattr(chain_bounds, "chain_per_output", broken)
    monkeypatch.setattr(chain_bounds, "chain_largest_row", lambda *a: math.nan)
    mb = _tier(net, comp, dom, PropagationOptions())
    assert (mb.bound, mb.per_output) == (off.bound, off.per_output)
    assert "chain_bound" not in mb.details and mb.details["differential_single_pass"] is False


def test_the_option_is_checked() -> None:
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigurationError, match="chain must be True or False"):
            PropagationOptions(chain=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ certificate
@pytest.mark.parametrize("chain", [True, False])
def test_certificate_records_the_routing_and_recertifies(tmp_path: Path, chain: bool) -> None:
    net = _mlp(6, 20, 3, 3, 1)
    net, comp = net.float(), _compress(net, "float16").float()
    dom = _box(6, 0.2)
    opts = PropagationOptions(chain=chain)
    cert = cc.certify(net, comp, domain=dom, search_steps=0, methods=("bounds",),
                      propagation=opts)
    tier = cert.by_method["bounds"]
    assert tier.details["chain"] is chain
    assert tier.details["differential_single_pass"] is chain
    assert ("chain_bound" in tier.details) is chain
    again = cc.Certificate.from_json(cert.to_json())
    assert dict(again.by_method["bounds"].details) == dict(tier.details)
    # restated as made, on the CPU (where every certificate is re-checked)
    assert tier_registry().get("bounds").stated_options(again.by_method["bounds"]) == \
        PropagationOptions(chain=chain, device="cpu")
    path = tmp_path / "c.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=2)
    report = cc.verify_onnx(path, original=net, search_steps=2, recertify=True)
    status = {c.name: c.status for c in report.checks}
    assert status["recertify"] == "passed", report
    assert status["bound"] == "passed"


def test_a_certificate_without_the_record_is_rechecked_with_the_engine_alone() -> None:
    net = _mlp(6, 20, 3, 3, 1)
    comp = _compress(net, "float16")
    dom = _box(6, 0.2)
    g, gc = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    old = bounds_tier(g, gc, dom, PropagationOptions(chain=False))
    details = {k: v for k, v in old.details.items()
               if k not in ("chain", "differential_single_pass", "engine_bound")}
    stated = MethodBound(method="bounds", bound=old.bound, per_output=old.per_output,
                         scope=old.scope, seconds=old.seconds, exact=False, details=details)
    tier = tier_registry().get("bounds")
    assert tier.stated_options(stated) == PropagationOptions(chain=False, device="cpu")
    _, problems = tier.recheck(GraphPair(g, gc), dom, stated)
    assert problems == []
    # a stated bound below the engine's alone is not accepted for such a certificate
    tight = bounds_tier(g, gc, dom, PropagationOptions())
    assert tight.bound < old.bound
    low = MethodBound(method="bounds", bound=tight.bound, per_output=tight.per_output,
                      scope=old.scope, seconds=old.seconds, exact=False, details=details)
    _, problems = tier.recheck(GraphPair(g, gc), dom, low)
    assert problems and "SMALLER than the recomputed" in " ".join(problems), problems
