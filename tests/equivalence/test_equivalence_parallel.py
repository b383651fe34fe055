"""The parallel executors give the same verdict, regions and bound as the serial
search (only the bounding of each round's regions is distributed, in fixed chunks)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _pairs import compress, mlp

import certcompress as cc
from certcompress.domain import InputDomain


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    net = mlp(3, 16, 3, 3, 1)
    return net, compress(net, "round")


def _same(a: cc.EquivalenceResult, b: cc.EquivalenceResult) -> None:
    assert (a.status, a.regions, a.bound, a.proven_fraction) == \
        (b.status, b.regions, b.bound, b.proven_fraction)


def test_local_executor_same_verdict(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    net, comp = pair
    dom = InputDomain.box(-2, 2, shape=(1, 3))
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, dom, **kw)
    local = cc.verify_equivalence(net, comp, dom, executor="local", workers=2, **kw)
    assert serial.regions > 16  # several rounds, several chunks
    _same(serial, local)
    assert local.details["executor"] == "local"


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_executor_same_verdict(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    net, comp = pair
    dom = InputDomain.box(-2, 2, shape=(1, 3))
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, dom, **kw)
    ray_res = cc.verify_equivalence(net, comp, dom, executor="ray", workers=2, **kw)
    _same(serial, ray_res)
