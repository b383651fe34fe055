"""The tier registry and the Tier template method, through the example tier of
docs/adding-a-tier.md: its code is taken from the doc, saved as one module, loaded as a
plugin, and certified with (so the doc's example runs as written), its certificates saved
and loaded back with the tier's typed details."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import certcompress as cc
import certcompress.certificate as certificate_mod
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.tiers import GraphPair, Tier, TierBound, TierRegistry, tier_registry
from certcompress.capture import plugins as plugins_mod
from certcompress.capture.plugins import Plugin, PluginManager
from certcompress.certificate import WORST_CASE, TierDetails
from certcompress.cli.domain_options import add_domain_arguments
from certcompress.errors import (
    CertificateError,
    ConfigurationError,
    NumericalRangeError,
    PluginError,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-tier.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def opnorm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PluginManager:
    """The doc's tier module saved as certcompress_opnorm.py, importable, and a fresh
    process-wide plugin manager (restored, with the registry and the registered details
    types, after the test); the working directory is ``tmp_path``."""
    (tmp_path / "certcompress_opnorm.py").write_text(BLOCKS[0], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "certcompress_opnorm", raising=False)
    monkeypatch.setattr(certificate_mod, "_DETAILS", dict(certificate_mod._DETAILS))
    monkeypatch.chdir(tmp_path)
    pm = PluginManager(load_entry_points=False)
    monkeypatch.setattr(plugins_mod, "_manager", pm)
    return pm


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)
                         ).double().eval()


def test_the_doc_example_runs_and_the_summary_shows_the_tier(opnorm: PluginManager) -> None:
    assert "operator-norm" not in tier_registry()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[1], str(DOC), "exec"), {})  # the doc's usage block, as written
    text = out.getvalue()
    assert re.search(r"tier operator-norm\s+\S+\s+\(upper bound", text)
    assert "('path-metric', 'bounds', 'bab', 'operator-norm')" in text
    assert tier_registry().origin("operator-norm") == "operator-norm-tier"
    # the certificate it saved loads back with the tier's typed details
    assert "OperatorNormDetails 2" in text
    saved = Path("opnorm-certificate.json")
    back = cc.Certificate.load(saved)
    details = back.by_method["operator-norm"].details
    assert type(details).__name__ == "OperatorNormDetails" and isinstance(details, TierDetails)
    assert certificate_mod.details_type("operator-norm") is type(details)
    assert details.layers == 2 and details.linf_bound > 0  # type: ignore[attr-defined]
    assert details["float_slack_rel"] == 2.0 ** -53
    assert back.to_dict() == json.loads(saved.read_text())
    # typed means validated: a file whose details miss a field, add one or change a type
    raw = json.loads(saved.read_text())
    for edit, message in ((lambda d: d.pop("layers"), "missing field.*layers"),
                          (lambda d: d.update(extra=1), "unknown field.*extra"),
                          (lambda d: d.update(layers="2"), "field 'layers' must be int")):
        bad = json.loads(json.dumps(raw))
        edit(bad["by_method"]["operator-norm"]["details"])
        with pytest.raises(CertificateError, match=message):
            cc.Certificate.from_dict(bad)


def test_the_example_tier_is_sound_and_recorded(opnorm: PluginManager) -> None:
    cc.load_plugin("certcompress_opnorm:OperatorNormPlugin")
    net = _net(1)
    comp = _net(1)
    with torch.no_grad():
        comp[1].weight.mul_(0.9)
        comp[3].bias.add_(0.01)
    dom = cc.InputDomain.box(-0.5, 1.0, shape=(1, 8))
    x = dom.sample(4000, torch.Generator().manual_seed(0))
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "operator-norm"),
                      reference_inputs=x, search=cc.SearchOptions(steps=30, restarts=8))
    t = cert.by_method["operator-norm"]
    assert t.method == "operator-norm" and t.scope == WORST_CASE and t.seconds >= 0
    assert t.details["float_slack_rel"] == 2.0 ** -53 and t.details["layers"] == 2
    # one-sided: above every measured deviation (certify's self-check also raised if not)
    with torch.no_grad():
        dev = (net(x) - comp(x)).abs().sum(1).max().item()
    assert t.bound >= dev and t.bound >= cert.measurements.adversarial_max
    assert all(p >= (net(x) - comp(x)).abs().max().item() for p in t.per_output)
    # the l_inf bound is the l1 bound over the 3 outputs
    assert t.bound == pytest.approx(3 * t.per_output[0], rel=1e-15)
    assert cert.bound == min(cert.by_method["path-metric"].bound, t.bound)
    # the same model twice: zero
    same = cc.certify(net, _net(1), domain=dom, methods="operator-norm", search_steps=0)
    assert same.by_method["operator-norm"].bound == 0.0


def test_registry_errors_and_lookup(opnorm: PluginManager) -> None:
    reg = tier_registry()
    with pytest.raises(ConfigurationError, match="unknown certification method 'nope'; "
                                                 "choose from path-metric, bounds"):
        reg.get("nope")
    with pytest.raises(ConfigurationError, match=r"unknown certification method\(s\) \['nope'\]"):
        cc.certify(_net(), _net(), (1, 8), 1.0, methods=("path-metric", "nope"))
    with pytest.raises(ConfigurationError, match="already registered"):
        reg.register(type(reg.get("bounds"))())
    with pytest.raises(ConfigurationError, match="not a certcompress Tier"):
        TierRegistry().register(object())  # type: ignore[arg-type]
    assert reg.defaults(with_domain=False) == ("path-metric",)
    assert reg.defaults(with_domain=True) == ("path-metric", "bounds")
    cc.load_plugin("certcompress_opnorm:OperatorNormPlugin")
    assert reg.names() == ("path-metric", "bounds", "bab", "operator-norm")
    # a plugin that is no longer loaded takes its tier with it
    plugins_mod._manager = PluginManager(load_entry_points=False)
    assert "operator-norm" not in tier_registry()


def test_a_failing_plugin_is_named(opnorm: PluginManager) -> None:
    class Broken(Plugin):
        name = "broken-tiers"

        def register_tiers(self, registry: TierRegistry) -> None:
            raise RuntimeError("boom")

    opnorm.add(Broken, "explicit: test")
    with pytest.raises(PluginError, match="'broken-tiers'.*register_tiers: RuntimeError: boom"):
        tier_registry()
    opnorm.plugins.clear()
    assert tier_registry().names() == ("path-metric", "bounds", "bab")


class _Fixed(Tier):
    name = "fixed"
    value = 0.0

    def _bound(self, pair: GraphPair, domain: cc.InputDomain, options: Any) -> TierBound:
        m = pair.original.output_size
        return TierBound(self.value, (self.value,) * m, exact=False, float_slack_rel=0.0)


def test_template_method_checks_inputs_and_result() -> None:
    net = _net()
    g = cc.trace(net, (1, 8))
    pair = GraphPair(g, g)
    tier = _Fixed()
    with pytest.raises(ConfigurationError, match="differs from the traced input shape"):
        tier.bound(pair, cc.InputDomain.box(0, 1, shape=(1, 9)))
    with pytest.raises(ConfigurationError, match="tier 'fixed' takes no options"):
        tier.bound(pair, cc.InputDomain.box(0, 1, shape=(1, 8)), options=1)
    tier.value = math.inf
    with pytest.raises(NumericalRangeError, match="'fixed' tier's bound overflows float64"):
        tier.bound(pair, cc.InputDomain.box(0, 1, shape=(1, 8)))
    tier.value = float("nan")
    with pytest.raises(NumericalRangeError):
        tier.bound(pair, cc.InputDomain.box(0, 1, shape=(1, 8)))


def test_consumers_take_the_tier_from_the_registry(opnorm: PluginManager) -> None:
    cc.load_plugin("certcompress_opnorm:OperatorNormPlugin")
    # the CLI option accepts a registered tier and refuses an unknown one
    p = argparse.ArgumentParser()
    p.add_argument("--radius", type=float)
    add_domain_arguments(p)
    assert p.parse_args(["--method", "operator-norm"]).method == ["operator-norm"]
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "nope"])
    # the pruning budget search certifies each step with path-metric and the tier
    net = _net(2)
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 8))
    found = cc.search_sparsity(net, 0.5, "magnitude", certifier="operator-norm", domain=dom)
    pruned, _ = cc.prune(net, found.plan, (1, 8), 1.0, search_steps=0)
    cert = cc.certify(net, pruned, domain=dom, methods=("path-metric", "operator-norm"),
                      search_steps=0)
    assert found.bound == pytest.approx(cert.bound, rel=1e-12) and found.bound <= 0.5
    with pytest.raises(ConfigurationError, match="certifier must be a worst-case tier"):
        cc.search_sparsity(net, 0.5, "magnitude", certifier="nope", domain=dom)


def test_search_options_and_old_keywords() -> None:
    net = _net()
    a = cc.certify(net, _net(), (1, 8), 1.0, search=cc.SearchOptions(steps=3, seed=1))
    b = cc.certify(net, _net(), (1, 8), 1.0, search_steps=3, seed=1)
    assert a.measurements.adversarial_steps == b.measurements.adversarial_steps == 3
    with pytest.raises(ConfigurationError, match="either search= or search_steps"):
        cc.certify(net, _net(), (1, 8), 1.0, search=cc.SearchOptions(), search_steps=3)
    with pytest.raises(ConfigurationError, match="search steps must be an integer >= 0"):
        cc.SearchOptions(steps=-1)


class _Spec(Plugin):
    name = "spec-for-sequential"

    def input_spec(self, model: nn.Module) -> cc.InputSpec | None:
        return cc.InputSpec((1, 8), 0.75, "test spec") if isinstance(model, nn.Sequential) \
            else None


def test_resolve_domain_is_the_one_resolver(opnorm: PluginManager) -> None:
    net = _net()
    ball = cc.resolve_domain(net, (1, 8), 2.0)
    assert ball == cc.InputDomain.box(-2.0, 2.0, shape=(1, 8), description=ball.description)
    assert ball.description == "ball ||x||_inf <= 2"
    with pytest.raises(ConfigurationError, match=r"input_shape is required for Sequential "
                                                 r"\(no installed plugin knows its input\)"):
        cc.resolve_domain(net, None, 1.0)
    with pytest.raises(ConfigurationError, match="input_radius is required: .* no installed "
                                                 "plugin knows a default for Sequential"):
        cc.resolve_domain(net, (1, 8))
    with pytest.raises(ConfigurationError, match="input_shape must be positive integers"):
        cc.resolve_domain(net, (1, True), 1.0)
    with pytest.raises(ConfigurationError, match="input_radius must be a finite number >= 0"):
        cc.resolve_domain(net, (1, 8), -1.0)
    box = cc.InputDomain.box(0.0, 1.0, shape=(1, 8))
    assert cc.resolve_domain(net, domain=box) is box
    with pytest.raises(ConfigurationError, match="either domain or input_radius"):
        cc.resolve_domain(net, None, 1.0, box)
    with pytest.raises(ConfigurationError, match="differs from the domain's shape"):
        cc.resolve_domain(net, (1, 9), None, box)
    # a plugin's input spec fills in shape and radius, and says so
    opnorm.add(_Spec, "explicit: test")
    spec_ball = cc.resolve_domain(net)
    assert spec_ball.shape == (1, 8) and spec_ball.radius == 0.75
    assert spec_ball.description == "ball ||x||_inf <= 0.75 (test spec)"
    cert = cc.certify(net, _net(), search_steps=0)
    assert cert.domain == "||x||_inf <= 0.75 (test spec)" and cert.radius == 0.75


def test_local_and_statistical_share_the_vocabulary() -> None:
    net = _net(3)
    comp = _net(3)
    with torch.no_grad():
        comp[1].weight.mul_(0.95)
    x = torch.rand(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    box = cc.InputDomain.box(0.0, 1.0, shape=(1, 8))
    opts = PropagationOptions(intermediate="interval")
    old = cc.certify_local(net, comp, x, 0.05, domain_lower=0.0, domain_upper=1.0,
                           options=opts, progress=False)
    new = cc.certify_local(net, comp, x, 0.05, domain=box, propagation=opts, progress=False)
    assert new.deviation_bound == old.deviation_bound and new.domain == old.domain
    with pytest.raises(ConfigurationError, match="either domain or domain_lower"):
        cc.certify_local(net, comp, x, 0.05, domain=box, domain_lower=0.0, progress=False)
    with pytest.raises(ConfigurationError, match="either propagation or options"):
        cc.certify_local(net, comp, x, 0.05, options=opts, propagation=opts, progress=False)
    with pytest.raises(ConfigurationError, match=r"InputDomain of shape \(1, 8\)"):
        cc.certify_local(net, comp, x, 0.05, domain=cc.InputDomain.box(0, 1, shape=(1, 9)),
                         progress=False)
    stat = cc.certify_statistical(net, comp, x, domain=box)
    assert stat.n == 3
    with pytest.raises(ConfigurationError, match=r"1 sample\(s\) lie outside the domain \(first "
                                                 r"indices \[1\]\)"):
        cc.certify_statistical(net, comp, torch.cat([x[:1], x[1:2] + 2.0]), domain=box)


_LOAD_IN_FRESH_PROCESS = """
import sys
import certcompress as cc
if sys.argv[2]:
    cc.load_plugin(sys.argv[2])  # named, as with --plugin; no certify, no tier_registry()
back = cc.Certificate.load(sys.argv[1])
details = back.by_method["operator-norm"].details
print(type(details).__name__, type(details).__mro__[1].__name__, details["layers"])
print("certcompress.bounds.tiers" in sys.modules)
"""


def test_a_fresh_process_loads_a_plugin_tier_certificate_typed(
        opnorm: PluginManager, tmp_path: Path) -> None:
    """The details class that a plugin tier registers in its register_tiers hook is in
    force when a certificate is loaded first thing in a new process: with the plugin
    named (load_plugin) and with it installed (an entry point), before any certify or
    tier_registry() call."""
    cc.load_plugin("certcompress_opnorm:OperatorNormPlugin")
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 8))
    comp = _net(0)
    with torch.no_grad():
        comp[1].weight.mul_(0.8)
    cert = cc.certify(_net(0), comp, domain=dom, methods=("path-metric", "operator-norm"),
                      search_steps=0)
    saved = cert.save(tmp_path / "opnorm.json")
    # an installed distribution declaring the plugin's entry point (importlib.metadata
    # finds a .dist-info folder on sys.path)
    dist = tmp_path / "site" / "certcompress_opnorm-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: certcompress-opnorm\n"
                                   "Version: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[certcompress.plugins]\noperator-norm-tier = certcompress_opnorm:OperatorNormPlugin\n",
        encoding="utf-8")
    repo = str(Path(cc.__file__).resolve().parents[1])
    for where, named in ((str(tmp_path), "certcompress_opnorm:OperatorNormPlugin"),
                         (f"{tmp_path}{os.pathsep}{dist.parent}", "")):
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([where, repo, os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(saved), named],
                             cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["OperatorNormDetails", "TierDetails",
                                      str(cert.by_method["operator-norm"].details["layers"]),
                                      "True"], (named or "entry point", run.stdout, run.stderr)
    # without the plugin (neither named nor installed) the file still loads, untyped
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(saved), ""],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["FrozenMap", "Mapping"], run.stdout
