"""Differential bound propagation on the pair (original, compressed) over the IR."""
