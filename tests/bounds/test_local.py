"""Local certificates are tested, not asserted: on random ReLU-DAG networks and random
compressions, no input inside a certified ball (random samples, box vertices, or found
by gradient ascent on the deviation or on the decision margin) deviates by more than the
per-point bound, leaves the per-output bounds, or changes a decision certified unchanged.

Points and tolerance come from the shared harness (tests/_soundness.py): one-sided, with
an allowance only for the measured values' own float64 rounding; the bounds carry the
engine's margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import _soundness as sh
import numpy as np
import pytest
import torch
from _nets import compress, random_conv_net, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from certcompress._frozen import FrozenMap
from certcompress.bounds import local as local_module
from certcompress.bounds.local import LocalCertificate, certify_local
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.errors import ConfigurationError
from certcompress.measure import float64_function

COMPRESSIONS = st.one_of(
    st.tuples(st.just("prune"), st.sampled_from([0.1, 0.3, 0.6])),
    st.tuples(st.just("round"), st.sampled_from([0.05, 0.2])),
    st.tuples(st.just("perturb"), st.sampled_from([0.01, 0.1, 0.5])),
    st.tuples(st.just("flip"), st.sampled_from([0.05, 0.3])),
)
EPS = st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.6])


def _check(net: nn.Module, comp: nn.Module, points: Tensor, eps: float,
           dom: tuple[float, float] | None, seed: int,
           options: PropagationOptions | None = None) -> LocalCertificate:
    lo_d, hi_d = dom if dom is not None else (None, None)
    cert = certify_local(net, comp, points, eps, domain_lower=lo_d, domain_upper=hi_d,
                         progress=False, batch_size=2, propagation=options)
    f, fc = sh.f64(net), sh.f64(comp)
    gen = torch.Generator().manual_seed(seed)
    for i in range(points.shape[0]):
        x0 = points[i].double()
        lo, hi = x0 - eps, x0 + eps
        if dom is not None:
            lo, hi = lo.clamp(min=dom[0]), hi.clamp(max=dom[1])
        c = cert.top_class[i]
        x = torch.cat([sh.points(lo, hi, gen, 32, 32),
                       sh.pgd(f, fc, lo, hi, steps=20, restarts=4, starts=x0.unsqueeze(0),
                              seed=seed + i),
                       sh.margin_pgd(fc, lo, hi, c, gen), sh.margin_pgd(f, lo, hi, c, gen)])
        found = sh.measure(f, fc, x)
        sh.assert_sound(found, cert.deviation_bound[i], what=f"local certificate, point {i}")
        with torch.no_grad():
            fx, fcx = f(x), fc(x)
        size = found.size[:, None]  # the measurement's own rounding is relative to it

        def le(a: Tensor, b: Tensor | float, size: Tensor = size) -> bool:
            b = torch.as_tensor(b, dtype=torch.float64)
            return bool((a <= b + sh.allowance(b, size, False)).all())

        d = fx - fcx
        du = torch.tensor(cert.deviation_upper[i], dtype=torch.float64)
        dl = torch.tensor(cert.deviation_lower[i], dtype=torch.float64)
        assert le(d, du) and le(-d, -dl)
        cu = torch.tensor(cert.compressed_upper[i], dtype=torch.float64)
        cl = torch.tensor(cert.compressed_lower[i], dtype=torch.float64)
        assert le(fcx, cu) and le(-fcx, -cl)
        mc = fcx[:, c] - torch.cat([fcx[:, :c], fcx[:, c + 1:]], 1).max(1).values
        assert le(-mc[:, None], -cert.margin_lower[i])
        if cert.decision_unchanged[i]:
            assert bool((fcx.argmax(1) == c).all())
        mo = fx[:, c] - torch.cat([fx[:, :c], fx[:, c + 1:]], 1).max(1).values
        assert le(-mo[:, None], -cert.original_margin_lower[i])
        if cert.original_robust[i]:
            assert bool((fx.argmax(1) == c).all())
        sh.record("certify_local: random balls", cert.deviation_bound[i], found.worst)
    return cert


@settings(max_examples=12, deadline=None)
@given(blocks=st.lists(st.sampled_from(["dense", "residual", "leaky", "relu6", "concat"]),
                       max_size=2),
       comp=COMPRESSIONS, eps=EPS, seed=st.integers(0, 10_000),
       domain=st.booleans())
def test_local_sound_vector(blocks, comp, eps, seed, domain):
    net, shape = random_vector_net(blocks, width=6, n_in=3, n_out=3, seed=seed)
    c = compress(net, comp[0], seed + 1, comp[1])
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand((3,) + shape[1:], generator=gen) * (2.0 if not domain else 1.0) \
        - (1.0 if not domain else 0.0)
    _check(net, c, pts, eps, (0.0, 1.0) if domain else None, seed)


@settings(max_examples=5, deadline=None)
@given(blocks=st.lists(st.sampled_from(["conv", "maxpool", "residual", "avgpool"]),
                       max_size=2),
       comp=COMPRESSIONS, eps=st.sampled_from([0.02, 0.1, 0.3]), seed=st.integers(0, 10_000))
def test_local_sound_conv(blocks, comp, eps, seed):
    net, shape = random_conv_net(blocks, channels=2, size=4, n_out=3, seed=seed)
    c = compress(net, comp[0], seed + 1, comp[1])
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand((2,) + shape[1:], generator=gen)
    _check(net, c, pts, eps, (0.0, 1.0), seed)


BUDGETS = st.sampled_from([PropagationOptions(sign_rows=0),
                           PropagationOptions(sign_rows=9, crown_rows_per_node=1),
                           PropagationOptions(sign_rows=30, crown_rows_per_node=0),
                           PropagationOptions(crown_rows_per_node=3)])


@settings(max_examples=10, deadline=None)
@given(blocks=st.lists(st.sampled_from(["dense", "residual", "conv", "maxpool"]),
                       max_size=2),
       comp=COMPRESSIONS, eps=st.sampled_from([0.02, 0.1, 0.3]), seed=st.integers(0, 10_000),
       n_out=st.integers(5, 8), options=BUDGETS)
def test_local_sound_with_row_budgets(blocks, comp, eps, seed, n_out, options):
    vector = [b for b in blocks if b in ("dense", "residual")]
    if len(vector) == len(blocks):
        net, shape = random_vector_net(vector, width=6, n_in=3, n_out=n_out, seed=seed)
    else:
        net, shape = random_conv_net(blocks, channels=2, size=4, n_out=n_out, seed=seed)
    c = compress(net, comp[0], seed + 1, comp[1])
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand((2,) + shape[1:], generator=gen)
    cert = _check(net, c, pts, eps, (0.0, 1.0), seed, options)
    if isinstance(options.sign_rows, int) and 2 ** n_out > options.sign_rows:
        assert "branch-and-bound" in cert.method and f"at most {options.sign_rows} rows" \
            in cert.method
    if options.crown_rows_per_node is not None:
        assert f"at most {options.crown_rows_per_node} back-substituted" in cert.method


def test_large_pairs_get_interval_bounds_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    net, comp, pts = _tiny(seed=3, sparsity=0.5)
    full = certify_local(net, comp, pts, 0.2, progress=False)
    assert "back-substituted" not in full.method
    monkeypatch.setattr(local_module, "LOCAL_CROWN_ELEMENTS", 0)
    big = certify_local(net, comp, pts, 0.2, progress=False)
    zero = certify_local(net, comp, pts, 0.2, progress=False,
                         propagation=PropagationOptions(crown_rows_per_node=0))
    assert "at most 0 back-substituted" in big.method
    assert big.deviation_bound == zero.deviation_bound
    _check(net, comp, pts, 0.2, None, 3, PropagationOptions(crown_rows_per_node=0))


def _tiny(seed: int = 0, sparsity: float = 0.3) -> tuple[nn.Module, nn.Module, Tensor]:
    net, shape = random_vector_net(["dense"], width=8, n_in=4, n_out=3, seed=seed)
    comp = compress(net, "prune", seed + 1, sparsity)
    pts = torch.rand((5,) + shape[1:], generator=torch.Generator().manual_seed(seed))
    return net, comp, pts


def test_eps_zero_is_tight_and_decides_like_the_point():
    """A ball of radius 0 is the point: the bounds are the point's values (not vacuous)."""
    net, comp, pts = _tiny()
    cert = certify_local(net, comp, pts, 0.0, progress=False)
    at = np.asarray(cert.deviation_at_point)
    assert np.all(np.asarray(cert.deviation_bound) >= at * (1 - sh.MEASURE_REL))
    # and tight, one-sided: the point's own deviation up to the rounding margin
    for b, a in zip(cert.deviation_bound, at):
        sh.assert_tight(b, a + 1e-9, 1e-6, "eps = 0")
    fc = float64_function(comp)
    with torch.no_grad():
        same = (fc(pts.double()).argmax(1) == torch.tensor(cert.top_class)).tolist()
    assert list(cert.decision_unchanged) == same  # margins are exact up to rounding
    assert cert.fraction_certified == pytest.approx(np.mean(same))
    assert not any(cert.vacuous) or all(b > s for b, s in
                                        zip(cert.deviation_bound, cert.output_scale))


def test_identical_models_deviation_zero_and_decision_follows_robustness():
    net, _, pts = _tiny(seed=3)
    cert = certify_local(net, net, pts, 0.05, progress=False)
    # the pair propagates d = 0 exactly: only the stated rounding margin remains
    assert all(b <= 1e-6 * s for b, s in zip(cert.deviation_bound, cert.output_scale))
    assert cert.decision_unchanged == cert.original_robust


def test_larger_ball_certifies_no_more():
    net, comp, pts = _tiny(seed=5)
    small = certify_local(net, comp, pts, 0.01, progress=False)
    huge = certify_local(net, comp, pts, 50.0, progress=False)
    assert sum(huge.decision_unchanged) <= sum(small.decision_unchanged)
    assert min(huge.deviation_bound) > max(small.deviation_at_point)


def test_certificate_outputs_table_summary_json(tmp_path):
    net, comp, pts = _tiny(seed=7)
    cert = certify_local(net, comp, pts.numpy(), 0.1, domain_lower=0.0, domain_upper=1.0,
                         progress=False)
    df = cert.table()
    assert len(df) == 5
    assert {"decision_unchanged", "deviation_bound", "margin_lower", "vacuous"} <= set(df.columns)
    s = cert.summary()
    assert "eps = 0.1" in s and "box [0, 1]" in s and "decision unchanged" in s
    back = LocalCertificate.from_json(cert.to_json())
    assert back == cert
    p = cert.save(tmp_path / "local.json")
    assert json.loads(p.read_text())["schema"] == cert.schema
    assert "worst case over that ball" in cert.scope


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -0.1}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"points": torch.zeros((0, 4))}, "non-empty"),
    ({"points": torch.zeros(4)}, "non-empty"),
    ({"domain_lower": 0.5, "domain_upper": 0.6}, "outside the domain"),
    ({"domain_lower": 1.0, "domain_upper": 0.0}, "exceeds"),
    ({"domain_lower": torch.zeros(3)}, "does not broadcast"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_input(kwargs, match):
    net, comp, pts = _tiny()
    args = {"points": pts, "eps": 0.1, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        certify_local(net, comp, args.pop("points"), args.pop("eps"), progress=False, **args)


def test_single_output_refused():
    net, shape = random_vector_net([], width=4, n_in=2, n_out=1, seed=0)
    with pytest.raises(ConfigurationError, match="at least 2"):
        certify_local(net, net, torch.zeros((1,) + shape[1:]), 0.1, progress=False)


def test_interval_option_is_sound_and_no_tighter():
    net, comp, pts = _tiny(seed=11, sparsity=0.5)
    crown = certify_local(net, comp, pts, 0.2, progress=False)
    ibp = certify_local(net, comp, pts, 0.2, progress=False,
                        options=PropagationOptions(intermediate="interval",
                                                   sign_vectors_up_to=0))
    assert "interval" in ibp.method and "sum of per-output" in ibp.method
    assert sum(ibp.decision_unchanged) <= sum(crown.decision_unchanged)
    _check(net, comp, pts, 0.2, None, 11)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "certificates"


def test_versions_are_read_only_and_an_older_file_loads():
    """The provenance mapping is frozen like the certificate's (hashable, no item
    assignment), the JSON form a plain object; a file written before still loads."""
    net, comp, pts = _tiny(seed=7)
    cert = certify_local(net, comp, pts.numpy(), 0.1, progress=False)
    assert isinstance(cert.versions, FrozenMap) and cert.versions["certcompress"]
    with pytest.raises(TypeError):
        cert.versions["torch"] = "edited"  # type: ignore[index]
    assert hash(cert) == hash(LocalCertificate.from_json(cert.to_json()))
    assert type(cert.to_dict()["versions"]) is dict
    text = (FIXTURES / "local1.json").read_text()
    old = LocalCertificate.from_json(text)
    assert isinstance(old.versions, FrozenMap)
    assert old.versions == json.loads(text)["versions"] and old.n_points == 2
    assert json.loads(old.to_json()) == json.loads(text)
