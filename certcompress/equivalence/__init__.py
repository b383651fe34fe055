"""Equivalence verification of an original and a compressed network: prove on a whole
input box that they stay within epsilon (l_inf or l1) or keep their decisions (top-1,
optionally only where the original is confident), or find an input where they do not,
by branch-and-bound over input splitting, or over ReLU splitting for chain pairs
(``split``; docs/equivalence.md), with a differential single pass per region.

See :func:`verify_equivalence` and :class:`EquivalenceResult`; input boxes can be read
from VNN-LIB files (:func:`read_vnnlib`). The same search tightens a worst-case bound as
the ``bab`` certification tier (:class:`BabOptions`, :mod:`.tier`). ``executor="local"``
keeps its helper processes between calls; :func:`close_pools` stops them (exit does too).
"""

from .parallel import close_pools
from .result import EquivalenceResult
from .tier import BabDetails, BabOptions, BabTier
from .verify import NORMS, PROPERTIES, verify_equivalence
from .vnnlib import VnnlibSpec, parse_vnnlib, read_vnnlib

__all__ = ["EquivalenceResult", "verify_equivalence", "NORMS", "PROPERTIES", "VnnlibSpec",
           "parse_vnnlib", "read_vnnlib", "BabOptions", "BabDetails", "BabTier", "close_pools"]
