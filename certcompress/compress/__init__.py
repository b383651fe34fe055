"""Compression methods certified with path-metric bounds (pruning, quantization)."""
