"""Soundness of the bound-propagation tier, tested: on random ReLU-DAG networks (dense,
conv, max-pooling, residual adds, concatenation, clamps, leaky ReLUs, BatchNorm),
random per-feature boxes and random compressions (pruning, grid rounding, noise, sign
flips), no deviation found by sampling, box vertices or gradient ascent exceeds the
tier's l1 bound or its per-output bounds, and every primitive node's sampled values lie
within its propagated bounds."""

from __future__ import annotations

from _nets import CONV_BLOCKS, VECTOR_BLOCKS, compress, random_conv_net, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st
from propagation_helpers import check_tier_sound, random_box

from certcompress.bounds.propagation.engine import PropagationOptions

COMPRESSIONS = st.one_of(
    st.tuples(st.just("prune"), st.sampled_from([0.1, 0.3, 0.6])),
    st.tuples(st.just("round"), st.sampled_from([0.01, 0.05, 0.2])),
    st.tuples(st.just("perturb"), st.sampled_from([0.01, 0.1, 0.5])),
    st.tuples(st.just("flip"), st.sampled_from([0.05, 0.3])),
)
OPTIONS = st.sampled_from([PropagationOptions(), PropagationOptions(intermediate="interval"),
                           PropagationOptions(max_rows=4, sign_vectors_up_to=0)])


@settings(max_examples=40)
@given(blocks=st.lists(st.sampled_from(VECTOR_BLOCKS), max_size=3),
       width=st.integers(2, 6), n_in=st.integers(1, 4), n_out=st.integers(1, 3),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS, include_bn=st.booleans(),
       box_width=st.sampled_from([0.05, 0.5, 2.0, 5.0]), options=OPTIONS)
def test_vector_dag_bounds_tier_is_sound(blocks: list[str], width: int, n_in: int,
                                         n_out: int, seed: int,
                                         compression: tuple[str, float], include_bn: bool,
                                         box_width: float, options: PropagationOptions
                                         ) -> None:
    net, shape = random_vector_net(blocks, width, n_in, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount, include_bn=include_bn)
    check_tier_sound(net, comp, random_box(shape, seed + 3, box_width), seed, options)


@settings(max_examples=25)
@given(blocks=st.lists(st.sampled_from(CONV_BLOCKS), max_size=3),
       channels=st.integers(1, 3), size=st.integers(3, 5), n_out=st.integers(1, 2),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS,
       box_width=st.sampled_from([0.1, 1.0, 2.0]), options=OPTIONS)
def test_conv_dag_bounds_tier_is_sound(blocks: list[str], channels: int, size: int,
                                       n_out: int, seed: int, compression: tuple[str, float],
                                       box_width: float, options: PropagationOptions) -> None:
    net, shape = random_conv_net(blocks, channels, size, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount)
    check_tier_sound(net, comp, random_box(shape, seed + 3, box_width), seed, options)
