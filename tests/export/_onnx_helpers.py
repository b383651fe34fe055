"""Shared helpers of the ONNX export tests: small models, their compressions and
certificates, and the command line with the export commands registered."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import pytest
import torch
from torch import Tensor, nn

import certcompress as cc
from certcompress import cli
from certcompress.compress.quantization.config import QuantConfig
from certcompress.compress.quantization.grid import QuantGrid, quantization_grid
from certcompress.demo.digits import magnitude_prune_copy

MLP_SHAPE = (1, 12)
RADIUS = 1.0


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 4)).eval()


def inputs(shape: tuple[int, ...], n: int = 16, radius: float = RADIUS, seed: int = 1
           ) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n,) + shape[1:], generator=gen) * 2 - 1) * radius


def pruned(model: nn.Module, sparsity: float = 0.4) -> nn.Module:
    return magnitude_prune_copy(model, sparsity, kinds=(nn.Linear, nn.Conv2d))


def quantized(model: nn.Module, bits: int | dict[str, int] = 8) -> tuple[nn.Module, QuantGrid]:
    """A copy of ``model`` on the quantization package's grid, and that grid."""
    cfg = (QuantConfig.uniform(model, bits) if isinstance(bits, int)
           else QuantConfig.from_bits(bits))
    grid = quantization_grid(model, cfg)
    return grid.apply(model), grid


def certify(model: nn.Module, compressed: nn.Module, shape: tuple[int, ...], x: Tensor,
            steps: int = 3) -> cc.Certificate:
    return cc.certify(model, compressed, shape, RADIUS, reference_inputs=x,
                      search_steps=steps, search_restarts=2)


def rewrite(path: str, model: onnx.ModelProto) -> None:
    onnx.save_model(model, path)


def copy_module(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


@contextmanager
def export_commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``certcompress.cli.main`` with the ``export`` and ``verify`` commands of
    ``certcompress.cli.export`` (whether or not the core command line lists them yet)."""
    module = "certcompress.cli.export"
    current = cli._OPTIONAL_COMMANDS
    if isinstance(current, dict):
        monkeypatch.setattr(cli, "_OPTIONAL_COMMANDS",
                            {**current, "export": module, "verify": module})
    else:
        monkeypatch.setattr(cli, "_OPTIONAL_COMMANDS", tuple(dict.fromkeys((*current, module))))
    yield


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("certcompress: error: "), err
    assert "Traceback" not in err
    return lines[0]
