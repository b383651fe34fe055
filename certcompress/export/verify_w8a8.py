"""Verify a W8A8 file (:func:`certcompress.export.w8a8.export_w8a8`): the embedded
certificate against the file's own arithmetic, int8 rounding included.

The file is run by onnxruntime (its int8 kernels: QLinearConv, int8 max-pooling, the
requantizations) on points of the certificate's domain: uniform samples, random
vertices, every vertex where there are at most 256, the centre, the given ``inputs``
inside the domain, and the end points of a projected sign-gradient search
(:func:`certcompress.measure.adversarial_deviation`) whose gradient comes from a torch
surrogate: the file itself, imported (:func:`certcompress.capture.onnx.load_onnx`) with
its activation quantizers disabled (its weights, smooth), with onnxruntime's value
substituted (straight-through). At each point ``||f(x) - ort(x)||_1``, with ``f`` the
BatchNorm-folded ``original`` in float64, must stay within the certificate's bound plus
the float32 allowance of :class:`~certcompress.export.results.Tolerance` (what
:data:`~certcompress.export.w8a8.COVERS` leaves out: float32 rounding of the layers that
stay float).

Checks (each ``passed``, ``failed`` or ``skipped``): ``certificate`` (fatal), ``checker``,
``metadata`` (the W8A8 entries: covers, activation type, version), ``binding`` (the
BatchNorm-folded ``original`` has the certificate's original parameter digest),
``runtime``, ``bound``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from ..capture.fakequant import ActivationQuantizer
from ..capture.onnx import load_onnx
from ..certificate import Certificate
from ..compress.quantization.activations import fold_batchnorm
from ..digest import parameter_digest
from ..errors import CertificateError, ConfigurationError, VerificationError
from ..measure import adversarial_deviation, float64_function
from . import _runtime
from .results import (
    FAILED,
    PASSED,
    SKIPPED,
    Check,
    Tolerance,
    VerificationFailed,
    VerificationReport,
)

__all__ = ["is_w8a8", "verify_w8a8", "KEY_W8A8_CERTIFICATE"]

KEY_W8A8_CERTIFICATE = "certcompress.w8a8.certificate"
_KEYS = ("certcompress.w8a8.covers", "certcompress.w8a8.activation_type",
         "certcompress.w8a8.version")


def is_w8a8(model: onnx.ModelProto) -> bool:
    """Whether ``model`` carries a W8A8 certificate (and no regular export metadata)."""
    keys = {p.key for p in model.metadata_props}
    return KEY_W8A8_CERTIFICATE in keys and "certcompress.certificate" not in keys


def _points(cert: Certificate, inputs: Tensor | None, seed: int, n: int
            ) -> tuple[Tensor, str]:
    per = tuple(cert.input_shape[1:])
    lo, hi = (t.reshape(per) for t in cert.input_box())
    gen = torch.Generator().manual_seed(seed)
    parts = [lo + torch.rand((n,) + per, generator=gen, dtype=torch.float64) * (hi - lo),
             torch.where(torch.rand((n,) + per, generator=gen) < 0.5, lo, hi),
             (0.5 * (lo + hi)).unsqueeze(0)]
    d = lo.numel()
    if 2 ** d <= 256:
        bits = torch.tensor([[(i >> j) & 1 for j in range(d)] for i in range(2 ** d)],
                            dtype=torch.bool).reshape((-1,) + per)
        parts.append(torch.where(bits, hi, lo))
    what = f"{n} uniform samples, {n} random vertices and the centre of the domain"
    if inputs is not None:
        x = torch.as_tensor(inputs).detach().to(torch.float64)
        if tuple(x.shape) == per:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != per:
            raise ConfigurationError(f"inputs of shape {tuple(x.shape)} do not fit the "
                                     f"certificate's input shape {cert.input_shape}")
        flat = x.reshape(len(x), -1)
        inside = ((flat >= lo.reshape(1, -1)) & (flat <= hi.reshape(1, -1))).all(1)
        parts.append(x[inside])
        what += f", {int(inside.sum())} given inputs inside it"
    return torch.cat(parts), what


def _surrogate(path: Path) -> Callable[[Tensor], Tensor] | None:
    try:
        imported = load_onnx(path)
    except Exception:  # the search then holds onnxruntime's outputs fixed
        return None
    smooth = copy.deepcopy(imported)
    for m in smooth.modules():
        if isinstance(m, ActivationQuantizer):
            m.op = replace(m.op, enabled=False)
    return float64_function(smooth.eval())


def verify_w8a8(path: Path, shown: str, model: onnx.ModelProto, *,
                original: nn.Module | None, inputs: Tensor | None, tolerance: Tolerance,
                search_steps: int, search_restarts: int, seed: int,
                samples: int = 256) -> VerificationReport:
    """The checks of the module docstring on the W8A8 file ``model`` (read from ``path``)."""
    props = {p.key: p.value for p in model.metadata_props}
    try:
        cert = Certificate.from_json(props[KEY_W8A8_CERTIFICATE])
    except (CertificateError, ValueError) as exc:
        raise VerificationError(f"check 'certificate' failed: the embedded W8A8 certificate "
                                f"of '{shown}' is malformed: {exc}") from None
    checks: list[Check] = []
    values: dict[str, object] = {}

    def add(name: str, ok: bool | None, detail: str, measured: float | None = None,
            limit: float | None = None) -> None:
        checks.append(Check(name, SKIPPED if ok is None else (PASSED if ok else FAILED),
                            detail, measured, limit))

    try:
        onnx.checker.check_model(model, full_check=True)
        add("checker", True, "onnx.checker full_check")
    except Exception as exc:
        add("checker", False, f"onnx.checker (full_check) rejects the model: {exc}")
    missing = [k for k in _KEYS if k not in props]
    add("metadata", not missing, f"W8A8 entries missing: {missing}" if missing else
        f"W8A8 entries present; the certificate covers: {props.get(_KEYS[0], '')}")
    folded = None
    if original is not None:
        folded = fold_batchnorm(original)
        ok = parameter_digest(folded) == cert.original_digest
        add("binding", ok, "the BatchNorm-folded original has the certificate's original "
            "parameter digest" if ok else "the original model given is not the "
            "certificate's original (parameter digests of the BatchNorm-folded model differ)")
    else:
        add("binding", None, "not run: no torch model given")
    try:
        sess = _runtime.session(model)
    except Exception as exc:
        add("runtime", False, f"onnxruntime {_runtime.ort_version()} cannot load the model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        sess = None
    if sess is None or folded is None:
        add("bound", None, "not run: " + ("onnxruntime cannot run the file" if sess is None
                                          else "needs the original torch model"))
    else:
        ort_f = _runtime.runner(sess)
        x, what = _points(cert, inputs, seed, samples)
        f = float64_function(folded)
        with torch.no_grad():
            y, fx = ort_f(x), f(x)
        add("runtime", True, f"onnxruntime {_runtime.ort_version()} ran {len(x)} inputs")
        if fx.shape != y.shape:
            add("bound", False, f"the original's outputs have shape {tuple(fx.shape[1:])}, "
                                f"onnxruntime's {tuple(y.shape[1:])}")
        else:
            n_out = int(y.shape[1])
            dev = (fx - y).abs().sum(1)
            found, where = float(dev.max()), what
            scale = float(y.abs().sum(1).max())
            if search_steps > 0:
                s = _surrogate(path)

                def g(z: Tensor) -> Tensor:
                    v = ort_f(z)
                    return v if s is None else s(z) + (v - s(z)).detach()

                lo, hi = cert.input_box()
                order = torch.argsort(dev, descending=True)[:search_restarts]
                adv = adversarial_deviation(f, g, cert.input_shape, lo, hi, steps=search_steps,
                                            restarts=search_restarts, starts=x[order],
                                            seed=seed)
                with torch.no_grad():
                    yz = ort_f(adv.argmax)
                    dz = float((f(adv.argmax) - yz).abs().sum(1).max())
                scale = max(scale, float(yz.abs().sum(1).max()))
                where += f"; search {adv.steps} steps x {adv.restarts} starts: {dz:.4g}"
                found = max(found, dz)
            tol = tolerance.value(scale, n_out)
            values.update(inputs=int(len(x)), inputs_source=what, outputs=n_out,
                          output_scale=scale, numerical_tolerance=tol, deviation_max=found)
            ok = found <= cert.bound + tol
            add("bound", ok, f"max ||f(x) - ort(x)||_1 = {found:.4g} over {where}; "
                             f"{'within' if ok else 'EXCEEDS'} the certified bound "
                             f"{cert.bound:.4g} + float32 tolerance {tol:.3g}",
                found, cert.bound + tol)
    report = VerificationReport(path=shown, checks=tuple(checks), certificate=cert,
                                tolerance=tolerance, file_bytes=path.stat().st_size,
                                opset=next((o.version for o in model.opset_import
                                            if o.domain in ("", "ai.onnx")), 0),
                                quantized=(), **values)  # type: ignore[arg-type]
    if not report.passed:
        parts = [f"check '{c.name}' failed: {c.detail}" for c in report.failed]
        raise VerificationFailed(f"verification of '{shown}' failed: " + "; ".join(parts),
                                 report)
    return report
