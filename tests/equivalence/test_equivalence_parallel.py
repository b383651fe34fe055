"""The parallel executors give the same verdict, regions and bound as the serial
search (only the bounding of each round's regions is distributed, in chunks that depend
on the round alone; the caller bounds chunks too)."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import pytest
import torch
from _pairs import compress, mlp

import certcompress as cc
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import ChainPair, chain_from_pair
from certcompress.equivalence.parallel import Pool, _pack, close_pools, warm_pools
from certcompress.equivalence.search import MIN_CHUNK, SPLIT_ROUND, bound_chunk, chunk_size


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    net = mlp(3, 16, 3, 3, 1)
    return net, compress(net, "round")


#: the domain every test here searches
DOM = InputDomain.box(-2, 2, shape=(1, 3))


def _flat_box() -> tuple[torch.Tensor, torch.Tensor]:
    return DOM.lower_tensor().reshape(-1), DOM.upper_tensor().reshape(-1)


def _chain(pair: tuple[torch.nn.Module, torch.nn.Module]) -> ChainPair:
    net, comp = pair
    chain = chain_from_pair(lower_pair(cc.trace(net, DOM.shape), cc.trace(comp, DOM.shape)))
    assert chain is not None
    return chain


def _warm_helpers(pair: tuple[torch.nn.Module, torch.nn.Module]) -> list[int]:
    """Run one local call (it leaves its helpers warm) and return their pids."""
    net, comp = pair
    cc.verify_equivalence(net, comp, DOM, epsilon=0.3, executor="local", workers=2,
                          batch=16, chunk=4)
    pids = _pids()
    assert pids
    return pids


def _assert_gone(pids: list[int]) -> None:
    """Each process was stopped and reaped: no such process any more."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _same(a: cc.EquivalenceResult, b: cc.EquivalenceResult) -> None:
    assert (a.status, a.regions, a.bound, a.proven_fraction) == \
        (b.status, b.regions, b.bound, b.proven_fraction)


def test_local_executor_same_verdict(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    net, comp = pair
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, DOM, **kw)
    local = cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    assert serial.regions > 16  # several rounds, several chunks
    _same(serial, local)
    assert local.details["executor"] == "local"


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_executor_same_verdict(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    net, comp = pair
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, DOM, **kw)
    ray_res = cc.verify_equivalence(net, comp, DOM, executor="ray", workers=2, **kw)
    _same(serial, ray_res)


def test_chunk_size_depends_on_the_round_alone() -> None:
    # small rounds are cut in SPLIT_ROUND chunks of at least MIN_CHUNK regions, large ones
    # in chunks of ``chunk``; never more than ``chunk`` (a user's small chunk is kept)
    assert chunk_size(2, 128) == MIN_CHUNK
    assert chunk_size(64, 128) == MIN_CHUNK
    assert chunk_size(128, 128) == 128 // SPLIT_ROUND
    assert chunk_size(256, 128) == 256 // SPLIT_ROUND
    assert chunk_size(1000, 128) == 128
    assert chunk_size(8, 4) == 4
    assert chunk_size(1, 1) == 1


def _jobs(chain: ChainPair, lo: torch.Tensor, hi: torch.Tensor, n: int
          ) -> list[tuple[torch.Tensor, torch.Tensor, None, torch.Tensor, int, None]]:
    """``n`` jobs of 3 regions each, random sub-boxes, the difference rows ``+-e_o``."""
    g = torch.Generator().manual_seed(0)
    m = chain.n_out
    jobs = []
    for _ in range(n):
        a = lo + (hi - lo) * torch.rand((3, lo.numel()), generator=g, dtype=torch.float64)
        b = lo + (hi - lo) * torch.rand((3, lo.numel()), generator=g, dtype=torch.float64)
        eye = torch.eye(m, dtype=torch.float64)
        cd = torch.cat([eye, -eye]).repeat(3, 1)
        jobs.append((torch.minimum(a, b), torch.maximum(a, b), None, cd, 2 * m, None))
    return jobs


def test_caller_and_started_helper_share_a_round(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """Once the helper has started, the caller bounds chunks from the end and the helper
    from the front; every chunk's bound is the serial one, bit for bit, in job order."""
    chain = _chain(pair)
    jobs = _jobs(chain, *_flat_box(), 40)
    with Pool("local", chain, workers=2) as pool:
        deadline = time.monotonic() + 300
        while not pool._started(0):
            assert time.monotonic() < deadline, "the helper process did not start"
            time.sleep(0.05)

        def until_the_helper_took_one() -> None:
            # the caller's side work; on a loaded machine the helper thread may otherwise
            # not be scheduled before the caller has taken every (tiny) chunk
            limit = time.monotonic() + 60
            while pool.chunks["helpers"] == 0 and time.monotonic() < limit:
                time.sleep(0.001)

        got = list(pool.map(jobs, side=until_the_helper_took_one))
        assert pool.chunks["helpers"] > 0 and pool.chunks["caller"] > 0
        assert pool.chunks["helpers"] + pool.chunks["caller"] == len(jobs)
    assert len(got) == len(jobs)
    for job, (ub, lx, pre) in zip(jobs, got):
        ub0, lx0, pre0 = bound_chunk(chain, *job)
        assert torch.equal(ub, ub0) and torch.equal(lx, lx0)
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(pre, pre0))


def test_one_worker_bounds_in_the_caller(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """``workers=1``: no helper process; the caller bounds every chunk."""
    net, comp = pair
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, DOM, **kw)
    one = cc.verify_equivalence(net, comp, DOM, executor="local", workers=1, **kw)
    _same(serial, one)
    assert one.details["chunks"]["helpers"] == 0 and one.details["chunks"]["caller"] > 0


def test_falsified_same_counterexample_on_every_executor(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A round's counterexample search runs while the next round is bounded (in the
    caller, beside the workers): the same counterexample, regions and worst deviation
    found on the serial and local executors."""
    net, comp = pair
    x = torch.rand(4000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.no_grad():
        worst = float((net(x) - comp(x)).abs().amax())
    kw = dict(epsilon=0.9 * worst, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, DOM, **kw)
    local = cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    assert serial.status == "falsified"
    assert (serial.counterexample, serial.regions, serial.found) == \
        (local.counterexample, local.regions, local.found)
    assert serial.counterexample is not None
    cex = torch.tensor(serial.counterexample, dtype=torch.float64)[None]
    with torch.no_grad():
        assert float((net(cex) - comp(cex)).abs().amax()) > kw["epsilon"]


def test_last_rounds_counterexample_search_runs(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """The budget ends the search after the root region; its counterexample search, left
    for the next round, still runs and falsifies (not "unknown")."""
    net, comp = pair
    res = cc.verify_equivalence(net, comp, DOM, epsilon=1e-9, max_regions=1, timeout=60)
    assert res.status == "falsified" and res.regions == 1


def test_a_failing_chunk_fails_the_round(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A chunk that fails (here: regions of the wrong width) raises in the caller, whoever
    bound it; the pool stays usable."""
    chain = _chain(pair)
    lo, hi = _flat_box()
    jobs = _jobs(chain, lo, hi, 6)
    a, b, cz, cd, r, prior = jobs[0]
    bad = (a[:, :2], b[:, :2], cz, cd, r, prior)  # 2 input features, the chain has 3
    with Pool("local", chain, workers=2) as pool:
        deadline = time.monotonic() + 300
        while not pool._started(0):
            assert time.monotonic() < deadline, "the helper process did not start"
            time.sleep(0.05)
        with pytest.raises(RuntimeError):
            list(pool.map([bad] + jobs[1:]))
        assert len(list(pool.map(jobs))) == len(jobs)


def _wait_started(pool: Pool) -> None:
    deadline = time.monotonic() + 300
    while not pool._started(0):
        assert time.monotonic() < deadline, "the helper process did not start"
        time.sleep(0.05)


def _pids() -> list[int]:
    return warm_pools().get(1, [])


def test_warm_helpers_serve_two_calls_with_different_pairs(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """The local helpers outlive a call: a second call with another pair reuses the same
    process and still gets its own pair's result (the serial one), and the first pair's
    result does not change when it runs again after the second."""
    close_pools()
    net, comp = pair
    net2 = mlp(3, 12, 2, 3, 7)
    comp2 = compress(net2, "round")
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial_a = cc.verify_equivalence(net, comp, DOM, **kw)
    serial_b = cc.verify_equivalence(net2, comp2, DOM, **kw)
    assert (serial_a.regions, serial_a.bound) != (serial_b.regions, serial_b.bound)
    first = cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    assert first.details["helpers_warm"] is False
    pids = _pids()
    assert len(pids) == 1
    # let the helper finish starting, so the next calls hand it chunks
    with Pool("local", chain_from_pair(lower_pair(cc.trace(net, DOM.shape),
                                                  cc.trace(comp, DOM.shape))),
              workers=2) as probe:
        _wait_started(probe)
    second = cc.verify_equivalence(net2, comp2, DOM, executor="local", workers=2, **kw)
    third = cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    assert _pids() == pids  # the same process served every call
    for res in (second, third):
        assert res.details["helpers_warm"] is True
        assert res.details["chunks"]["helpers"] > 0
    _same(serial_a, first)
    _same(serial_b, second)
    _same(serial_a, third)
    assert (second.found, third.found) == (serial_b.found, serial_a.found)


def test_close_pools_stops_the_helpers(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    pids = _warm_helpers(pair)
    assert close_pools() == 1
    assert warm_pools() == {}
    _assert_gone(pids)


def test_a_killed_helper_is_replaced(pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A helper that died between calls (killed from outside) is replaced by the next
    call, which gets the serial result."""
    net, comp = pair
    kw = dict(epsilon=0.3, timeout=60, batch=16, chunk=4)
    serial = cc.verify_equivalence(net, comp, DOM, **kw)
    cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    old = _pids()
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _pids() == old:  # warm_pools lists live sets only
        assert time.monotonic() < deadline
        time.sleep(0.05)
    res = cc.verify_equivalence(net, comp, DOM, executor="local", workers=2, **kw)
    assert res.details["helpers_warm"] is False
    assert _pids() and _pids() != old
    _same(serial, res)


def test_a_helper_dying_during_a_call_fails_it_clearly(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A helper killed while it holds the call's chunks: the call raises an error naming
    the dead helper (no hang), and the next call starts a fresh one."""
    chain = _chain(pair)
    jobs = _jobs(chain, *_flat_box(), 40)
    with Pool("local", chain, workers=2) as pool:
        _wait_started(pool)
        os.kill(_pids()[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match="helper process 0 .* died"):
            list(pool.map(jobs, side=lambda: time.sleep(0.5)))
    with Pool("local", chain, workers=2) as pool:
        assert not pool.warm
        _wait_started(pool)
        assert len(list(pool.map(jobs))) == len(jobs)


def test_an_interrupted_call_leaves_the_helpers_usable(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """Ctrl-C in the caller (KeyboardInterrupt raised while the helper bounds): the round
    stops, the helper finishes the chunk it holds, and the next call on the same warm
    process gets every result, the serial ones."""
    chain = _chain(pair)
    jobs = _jobs(chain, *_flat_box(), 40)

    def interrupt() -> None:
        time.sleep(0.2)
        raise KeyboardInterrupt

    with Pool("local", chain, workers=2) as pool:
        _wait_started(pool)
        pids = _pids()
        with pytest.raises(KeyboardInterrupt):
            list(pool.map(jobs, side=interrupt))
    with Pool("local", chain, workers=2) as pool:
        assert pool.warm and _pids() == pids
        got = list(pool.map(jobs))
    for job, (ub, lx, _) in zip(jobs, got):
        ub0, lx0, _ = bound_chunk(chain, *job)
        assert torch.equal(ub, ub0) and torch.equal(lx, lx0)


def test_a_concurrent_call_gets_private_helpers(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """While one call holds the warm helpers, another (a second thread) gets its own,
    stopped when it ends; the warm set is unchanged."""
    chain = _chain(pair)
    with Pool("local", chain, workers=2) as held:
        pids = _pids()
        with Pool("local", chain, workers=2) as other:
            assert other._private and other._local_set is not None
            private = [int(p.pid) for p in other._local_set.procs]
            assert not set(private) & set(pids)
        _assert_gone(private)
        assert held._local_set is not None and not held._private
    assert _pids() == pids


def test_a_forked_child_does_not_own_the_helpers(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """After fork, the child sees no warm helpers (its parent's stay the parent's)."""
    pids = _warm_helpers(pair)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os._exit(0 if warm_pools() == {} and close_pools() == 0 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _pids() == pids
    for pid in pids:
        os.kill(pid, 0)  # still running


def test_children_jobs_send_their_parents_bounds_once(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A round's children come in pairs with one parent's layer bounds: a job sends them
    once per pair (rows checked equal) and the helper's bound is the caller's, bit for
    bit; a job whose rows differ goes whole."""
    chain = _chain(pair)
    lo, hi = _flat_box()
    parents = _jobs(chain, lo, hi, 1)[0]
    _, _, pre = bound_chunk(chain, *parents)
    plo, phi = parents[0], parents[1]
    mid = (plo[:, 0] + phi[:, 0]) / 2
    a_hi, b_lo = phi.clone(), plo.clone()
    a_hi[:, 0], b_lo[:, 0] = mid, mid
    clo = torch.stack([plo, b_lo], 1).reshape(-1, 3)
    chi = torch.stack([a_hi, phi], 1).reshape(-1, 3)
    m = chain.n_out
    eye = torch.eye(m, dtype=torch.float64)
    cd = torch.cat([eye, -eye]).repeat(6, 1)
    prior = [None if t is None else t.repeat_interleave(2, dim=0) for t in pre]
    job = (clo, chi, None, cd, 2 * m, prior)
    packed, ok = _pack(job)
    assert ok and packed[5] is not None
    assert sum(t.numel() for t in packed[5] if t is not None) * 2 == \
        sum(t.numel() for t in prior if t is not None)
    uneven = [None if t is None else t.clone() for t in prior]
    first = next(i for i, t in enumerate(uneven) if t is not None)
    uneven[first][1] += 1.0  # type: ignore[index]
    assert not _pack((clo, chi, None, cd, 2 * m, uneven))[1]
    with Pool("local", chain, workers=2) as pool:
        _wait_started(pool)
        got = pool._remote(0, job)
    want = bound_chunk(chain, *job)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(got[2], want[2]))


def test_a_helper_that_cannot_start_leaves_the_work_to_the_caller(
        pair: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    """A helper that exits before it starts (killed here while importing; a script
    without the main guard does the same): the caller bounds every chunk, the results are
    the serial ones, the pool says why, and the next call starts a fresh helper."""
    chain = _chain(pair)
    jobs = _jobs(chain, *_flat_box(), 12)
    close_pools()
    with Pool("local", chain, workers=2) as pool:
        assert pool._local_set is not None
        proc = pool._local_set.procs[0]
        os.kill(int(proc.pid), signal.SIGKILL)  # long before torch is imported
        proc.join(60)
        got = list(pool.map(jobs, side=lambda: time.sleep(0.1)))
        got2 = list(pool.map(jobs))
        assert pool.chunks == {"caller": 2 * len(jobs), "helpers": 0}
        assert len(pool.notes) == 1 and "exited while starting" in pool.notes[0]
        assert "__main__" in pool.notes[0]
    for job, (ub, lx, _), (ub2, _, _) in zip(jobs, got, got2):
        ub0, lx0, _ = bound_chunk(chain, *job)
        assert torch.equal(ub, ub0) and torch.equal(lx, lx0) and torch.equal(ub2, ub0)
    assert warm_pools() == {}
    with Pool("local", chain, workers=2) as pool:
        assert not pool.warm
        _wait_started(pool)
        assert len(list(pool.map(jobs))) == len(jobs) and not pool.notes
