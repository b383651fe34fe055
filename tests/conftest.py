"""Test configuration: one torch thread per xdist worker, a hypothesis profile without
deadlines (tiny networks, but tracing timings vary), and the shared helpers on the path."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "certcompress", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("certcompress")
