"""Export a certified compressed model to one self-contained, verified ONNX file.

:func:`export_onnx` runs ``torch.onnx.export`` with the dynamo exporter (opset >= 18, a
dynamic batch dimension through ``dynamic_shapes``, the exporter's graph rewrites off so
that every initializer keeps its torch name and its exact value: the exporter's
optimizer would fold BatchNorm into the convolution weights, and the file would no
longer hold the weights that were certified), checks the opset actually written, puts
quantized weights in QDQ form (:mod:`.qdq`), embeds the certificate and the digests
(:mod:`.metadata`), runs ``onnx.checker`` (``full_check``), writes the file to a
temporary name, verifies it (:func:`~certcompress.export.verify.verify_onnx`, every
check) and only then renames it into place: a failed export leaves no file behind.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from .._io import atomic_path
from .._version import versions
from ..certificate import Certificate
from ..digest import parameter_digest
from ..errors import CertcompressError, ConfigurationError, TrainModeError, VerificationError
from ..measure import check_reference_inputs, float64_function
from .metadata import embed
from .qdq import GridsLike, apply_grids, as_grids
from .results import Tolerance, VerificationReport
from .signing import SigningKey
from .verify import _verify_file

__all__ = ["export_onnx", "to_onnx", "ExportError", "MIN_OPSET"]

MIN_OPSET = 18


class ExportError(CertcompressError, RuntimeError):
    """torch.onnx could not export the model (the message gives the exporter's reason)."""


def _check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not \
            MIN_OPSET <= opset <= newest:
        raise ConfigurationError(
            f"opset must be an integer in [{MIN_OPSET}, {newest}] (the dynamo exporter "
            f"starts at {MIN_OPSET}; onnx {onnx.__version__} knows up to {newest}), got "
            f"{opset!r}")
    return opset


def _check_module(model: object, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"{what} must be a torch.nn.Module, got "
                                 f"{type(model).__name__}")
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise TrainModeError(f"{what} is in training mode ({', '.join(training[:3])}"
                             f"{' ...' if len(training) > 3 else ''}); call .eval() first")
    return model


def to_onnx(model: nn.Module, input_shape: Sequence[int], opset: int = MIN_OPSET
            ) -> onnx.ModelProto:
    """``model`` as an ONNX ModelProto: dynamo exporter, batch dimension dynamic, exact
    initializers (no exporter rewrites), opset checked. No certificate (see
    :func:`export_onnx`)."""
    _check_opset(opset)
    _check_module(model, "the model")
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if floats - {torch.float32}:
        raise ConfigurationError(f"the model has parameters of dtype "
                                 f"{', '.join(sorted(map(str, floats)))}; export float32 models")
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError("torch.onnx's dynamo exporter needs the onnxscript package: "
                          "pip install onnxscript (or certcompress[onnx])")
    shape = tuple(int(s) for s in input_shape)
    example = torch.zeros((2,) + shape[1:], dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=opset,
                external_data=False, dynamic_shapes=({0: batch},), optimize=False,
                verbose=False)
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise ExportError(f"torch.onnx.export (dynamo) failed for {type(model).__name__}: "
                          f"{type(exc).__name__}: {first}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    written = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise VerificationError(
            f"check 'opset' failed: opset {opset} was requested, the exporter wrote "
            f"{', '.join(map(str, sorted(written))) or 'none'} (a failed version conversion)")
    return proto


def _check_initializers(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Every initializer named like a tensor of ``model``'s state equals it bit for bit;
    returns how many were compared."""
    state = model.state_dict()
    compared = 0
    for t in proto.graph.initializer:
        ref = state.get(t.name)
        if not isinstance(ref, Tensor):
            continue
        arr = onnx.numpy_helper.to_array(t)
        mine = ref.detach().cpu().contiguous().numpy()
        if arr.dtype != mine.dtype or arr.shape != mine.shape or \
                arr.tobytes() != mine.tobytes():
            raise VerificationError(
                f"check 'weights' failed: the exported initializer '{t.name}' "
                f"({arr.dtype}{list(arr.shape)}) is not the model's tensor "
                f"({mine.dtype}{list(mine.shape)}) bit for bit")
        compared += 1
    return compared


def _check_same_function(exported: nn.Module, certified: nn.Module, shape: tuple[int, ...],
                         radius: float, reference: Tensor | None, seed: int) -> float:
    """The exported model computes the certified model's function (float64, relative
    1e-9 of the output scale) on reference inputs and random inputs of the domain."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand((8,) + shape[1:], generator=gen, dtype=torch.float64) * 2 - 1) * radius
    if reference is not None:
        x = torch.cat([check_reference_inputs(reference, shape)[:32], x])
    with torch.no_grad():
        a, b = float64_function(exported)(x), float64_function(certified)(x)
    if a.shape != b.shape:
        raise VerificationError(f"check 'certified-equivalent' failed: the exported model's "
                                f"output has shape {tuple(a.shape)}, the certified model's "
                                f"{tuple(b.shape)}")
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    if not math.isfinite(diff) or diff > 1e-9 * max(1.0, scale):
        raise VerificationError(
            f"check 'certified-equivalent' failed: the exported model differs from the "
            f"certified model by {diff:.3g} (output scale {scale:.3g}) on {x.shape[0]} inputs")
    return diff


def export_onnx(compressed: nn.Module, path: str | os.PathLike[str], *,
                certificate: Certificate, reference_inputs: Tensor | None = None,
                original: nn.Module | None = None, opset: int = MIN_OPSET,
                grids: GridsLike = None, certified: nn.Module | None = None,
                tolerance: Tolerance | None = None, search_steps: int = 10,
                search_restarts: int = 2, seed: int = 0,
                signing_key: str | os.PathLike[str] | None = None) -> VerificationReport:
    """Export ``compressed`` with ``certificate`` embedded to ``path`` and verify it.

    ``certificate`` must be about ``compressed`` (its parameter digest), or about
    ``certified`` when ``compressed`` is a physically smaller model computing the same
    function (structured pruning certifies the zeroed equivalent); ``original``, when
    given, must be the certificate's original. ``grids`` (one :class:`WeightGrid` per
    quantized weight, or the quantization package's ``QuantGrid``) switch those
    weights to QDQ form; each must reproduce the certified
    weight bit for bit. ``reference_inputs`` (batch first, the certificate's input shape)
    feed the checks of :func:`~certcompress.export.verify.verify_onnx`, which runs on the
    written file with ``compressed`` and ``original``; random inputs of the domain are
    used when none are given. ``signing_key`` (an Ed25519 private key in PEM,
    :func:`~certcompress.export.signing.generate_signing_key`; needs the
    ``cryptography`` package) signs the file: the graph, every initializer and every
    certcompress metadata entry (:mod:`.signing`); the signature is checked before the
    file is kept.

    Returns the verification report. Raises :class:`VerificationError` naming the failed
    check (nothing is written), :class:`ExportError` when torch.onnx fails, and
    :class:`ConfigurationError` / :class:`TrainModeError` for bad arguments.
    """
    if not isinstance(certificate, Certificate):
        raise ConfigurationError(f"certificate must be a certcompress Certificate, got "
                                 f"{type(certificate).__name__}")
    _check_opset(opset)
    _check_module(compressed, "the compressed model")
    signer = SigningKey(signing_key) if signing_key is not None else None
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(f"output '{target}' is a directory; name a file such as "
                                 f"{target / 'model.onnx'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(f"cannot write '{target}': directory '{parent}' does not "
                                 "exist; create it first")
    shape = certificate.input_shape
    exported_digest = parameter_digest(compressed)
    certified_model = compressed if certified is None else _check_module(certified,
                                                                        "the certified model")
    certified_digest = exported_digest if certified is None else parameter_digest(certified)
    if certified_digest != certificate.compressed_digest:
        hint = ("" if certified is not None else "; if the model is a physically smaller "
                "(structured-pruned) version of the certified one, pass certified=<the "
                "certified model>")
        raise VerificationError(
            f"check 'binding' failed: the certificate is about compressed parameters with "
            f"digest {certificate.compressed_digest[:16]}..., the "
            f"{'certified' if certified is not None else 'compressed'} model has "
            f"{certified_digest[:16]}...{hint}")
    if original is not None:
        _check_module(original, "the original model")
        if parameter_digest(original) != certificate.original_digest:
            raise VerificationError("check 'binding' failed: the original model is not the "
                                    "certificate's original (parameter digests differ)")
    equivalence = None
    if certified is not None:
        equivalence = _check_same_function(compressed, certified_model, shape,
                                           certificate.radius, reference_inputs, seed)
    proto = to_onnx(compressed, shape, opset)
    compared = _check_initializers(proto, compressed)
    state = {k: v for k, v in compressed.state_dict().items() if isinstance(v, Tensor)}
    records = apply_grids(proto, as_grids(grids), state, opset)
    tol = tolerance or Tolerance()
    info: dict[str, Any] = {
        "exported_digest": exported_digest,
        "certified_digest": certificate.compressed_digest,
        "opset": opset,
        "input_shape": list(shape),
        "initializers_checked": compared,
        "quantized": [r.to_dict() for r in records],
        "tolerance": tol.to_dict(),
        "certified_equivalence_max": equivalence,
        "versions": versions("onnx", "onnxruntime"),
    }
    embed(proto, certificate, info, signer)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise VerificationError(f"check 'checker' failed: onnx.checker (full_check) rejects "
                                f"the exported model: {str(exc).strip().splitlines()[0]}"
                                ) from None
    with atomic_path(target) as tmp:
        onnx.save_model(proto, str(tmp))
        report = _verify_file(tmp, str(target), original=original, inputs=reference_inputs,
                              compressed=compressed, tolerance=tol, search_steps=search_steps,
                              search_restarts=search_restarts, seed=seed,
                              public_key=None if signer is None else signer.public_key())
    return report
