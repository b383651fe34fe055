"""certcompress._shapes and _threads. broadcast_shapes agrees with torch.broadcast_shapes: the same
shape where torch broadcasts, an error exactly where torch raises; InputDomain.box
names bounds that do not fit its shape."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certcompress._shapes import broadcast_shapes
from certcompress._threads import one_thread
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError

_shape = st.lists(st.sampled_from([0, 1, 2, 3]), min_size=0, max_size=4).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(_shape, min_size=1, max_size=4))
def test_broadcast_shapes_matches_torch(shapes: list[tuple[int, ...]]) -> None:
    try:
        want = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        with pytest.raises(ValueError, match="do not broadcast"):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == want


def test_broadcast_shapes_edge_cases() -> None:
    assert broadcast_shapes() == ()
    assert broadcast_shapes((2, 1), (3,)) == (2, 3)
    assert broadcast_shapes(torch.Size([1, 5]), (4, 1)) == (4, 5)
    with pytest.raises(ValueError, match=r"\(2,\), \(3,\)"):
        broadcast_shapes((2,), (3,))
    with pytest.raises(ValueError, match="negative"):
        broadcast_shapes((-1,))


def test_input_domain_box_names_bounds_that_do_not_fit_the_shape() -> None:
    with pytest.raises(ConfigurationError, match=r"\(3,\) and \(\) do not broadcast to shape \(1, 5\)"):
        InputDomain.box(torch.zeros(3), 1.0, shape=(1, 5))
    with pytest.raises(ConfigurationError, match="larger than shape"):
        InputDomain.box(torch.zeros(2, 5), 1.0, shape=(1, 5))
    dom = InputDomain.box(torch.zeros(5), torch.ones(1, 5), shape=(1, 5))
    assert tuple(dom.lower_tensor().shape) == (1, 5)


def test_one_thread_restores_the_thread_count_also_on_error() -> None:

    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), one_thread():
        raise KeyError("x")
    assert torch.get_num_threads() == before
    with one_thread(False):
        assert torch.get_num_threads() == before


def _fresh_thread_count() -> int:
    """The thread count a newly started thread gets: torch's process-wide setting (the
    calling thread's own OpenMP count may differ)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_one_thread_restores_the_count_when_threads_overlap() -> None:
    """Two threads in overlapping one_thread blocks (A enters, B enters, A leaves, B
    leaves): B must not save the 1 that A set and restore it after A restored the real
    count, which left the process (every later thread) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        start = _fresh_thread_count()
        assert start == 2
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        inside_b: list[int] = []

        def a() -> None:
            with one_thread():
                a_in.set()
                b_in.wait(30)
            a_out.set()

        def b() -> None:
            a_in.wait(30)
            with one_thread():
                b_in.set()
                a_out.wait(30)
                inside_b.append(torch.get_num_threads())

        ta, tb = threading.Thread(target=a), threading.Thread(target=b)
        ta.start()
        tb.start()
        ta.join()
        tb.join()
        assert inside_b == [1]  # B's block still ran on one thread after A left
        assert _fresh_thread_count() == start
    finally:
        torch.set_num_threads(before)


def test_one_thread_nests() -> None:
    before = torch.get_num_threads()
    with one_thread():
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # still inside the outer block
    assert torch.get_num_threads() == before
