"""Test configuration: one torch thread per xdist worker, a hypothesis profile without
deadlines (tiny networks, but tracing timings vary), and the shared helpers on the path."""

from __future__ import annotations

from collections.abc import Iterator

import _soundness
import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "certcompress", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("certcompress")


@pytest.fixture(scope="session", autouse=True)
def _tightness_records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Writes the soundness harness's tightness ratios to soundness_tightness.json in
    pytest's base temporary directory at the end of the session."""
    yield
    _soundness.write_records(tmp_path_factory.getbasetemp() / "soundness_tightness.json")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = _soundness.summary_lines()
    if lines:
        terminalreporter.section("tightness (certified bound / deviation found)")
        for line in lines:
            terminalreporter.write_line(line)
