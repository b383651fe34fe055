"""The certify command's domain/tier options (certcompress.cli.domain_options)."""

from __future__ import annotations

import argparse

import pytest
import torch
from _nets import compress, random_vector_net

import certcompress as cc
from certcompress.cli.domain_options import add_domain_arguments, certify_kwargs, parse_domain
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--radius", type=float)
    add_domain_arguments(p)
    return p.parse_args(argv)


def test_options_build_the_certify_arguments() -> None:
    args = _parse(["--domain=-1:2", "--method", "bounds", "--propagation", "interval"])
    kw = certify_kwargs(args, (1, 3))
    assert kw["domain"] == InputDomain.box(-1.0, 2.0, shape=(1, 3),
                                           description=kw["domain"].description)
    assert kw["methods"] == ("bounds",) and kw["propagation"].intermediate == "interval"
    net, shape = random_vector_net(["dense"], 4, 3, 2, 0)
    cert = cc.certify(net, compress(net, "prune", 1, 0.3), search_steps=3, **kw)
    assert set(cert.by_method) == {"bounds"} and cert.bound == cert.by_method["bounds"].bound
    plain = certify_kwargs(_parse([]), (1, 3))
    assert plain["domain"] is None and plain["methods"] is None


def test_data_domain_and_errors() -> None:
    x = torch.rand(10, 3)
    d = parse_domain("data", (1, 3), x)
    assert bool(d.contains(x).all())
    for bad, match in [("0", "LO:HI"), ("a:b", "numbers"), ("2:1", "LO <= HI"),
                       ("data", "reference-data")]:
        with pytest.raises(ConfigurationError, match=match):
            parse_domain(bad, (1, 3))
    with pytest.raises(ConfigurationError, match="either --domain or --radius"):
        certify_kwargs(_parse(["--domain", "0:1", "--radius", "1"]), (1, 3))
    with pytest.raises(SystemExit):
        _parse(["--method", "exact"])
