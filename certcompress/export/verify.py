"""Verify a certcompress ONNX file: integrity, and the certificate against onnxruntime.

Checks, in order (each is ``passed``, ``failed`` or ``skipped`` in the report):

``file``, ``certificate``
    The file parses as ONNX and carries a well-formed certificate (fatal: nothing else
    can run without them).
``checker``
    ``onnx.checker.check_model(full_check=True)``.
``metadata``
    The ``certcompress.*`` entries are exactly those certcompress writes (none missing,
    unknown or repeated; the current format), and the export information agrees with
    the graph and the certificate: the ``quantized`` list names exactly the weights the
    graph dequantizes, the certified digest, input shape and opset are the
    certificate's and the file's.
``digest``
    The graph digest, the certificate digest and the content digest (over the graph
    and every certcompress entry) recomputed now equal those stored at export
    (:mod:`.metadata`): a changed weight, node, certificate field or entry fails here.
``signature``
    (``public_key`` given) the Ed25519 signature (:mod:`.signing`) is by that key and
    covers the file's content now. Without a key this check is skipped with the note
    "integrity only: not authenticated": digests catch accidents, not someone who
    recomputes them.
``recertify``
    (``recertify=True``, ``original`` given) the certificate's tiers recomputed from the
    original and the file's own weights equal the stated bounds (:mod:`.recertify`):
    anyone can reproduce a certificate, so a forged bound or changed weights fail here
    even when every digest was recomputed.
``binding``
    ``original`` (when given) has the certificate's original parameter digest;
    ``compressed`` (when given) is the certified model or the model that was exported.
``runtime``
    onnxruntime loads the file and runs the inputs.
``quantized-weights``
    (``compressed`` given, quantized file) every ``DequantizeLinear`` weight computed by
    onnxruntime equals the compressed model's weight bit for bit.
``equivalence``
    (``compressed`` given) ``max_x ||ort(x) - f'(x)||_1 <= tol`` on the inputs; when
    ``compressed`` quantizes activations, ``<= tol + 2 bound`` (onnxruntime's int8
    kernels requantize with their own rounding, a step apart from the torch quantizers at
    some elements; the ``bound`` check holds the file to the certificate).
``bound``
    (``original`` given) ``||f(x) - ort(x)||_1 <= bound + tol`` on the inputs inside the
    certificate's domain and on the worst input a gradient-ascent search finds there.

A W8A8 file (:func:`certcompress.export.w8a8.export_w8a8`, activation quantization) is
checked by :mod:`.verify_w8a8` instead: its certificate against the file's own int8
arithmetic in onnxruntime, on samples and a search of the certificate's domain.

Tolerance model (:class:`Tolerance`). The certificate bounds the deviation of the
compressed network in exact arithmetic; onnxruntime computes in float32. With ``f``
(original) and ``f'`` (compressed) evaluated in float64, the triangle inequality gives
``||f(x) - ort(x)||_1 <= bound + ||f'(x) - ort(x)||_1``; the last term is float32
rounding, allowed up to ``tol = rtol * S + atol * n``, where ``S`` is the largest
``||ort(x)||_1`` over the inputs checked and ``n`` the number of outputs per input.
Defaults ``rtol = 1e-4``, ``atol = 1e-6``: float32 has a unit roundoff of 6e-8, and the
networks tested here (ResNet-18, a U-Net) measure relative errors near 1e-6, so the
allowance is about 100 times what is seen. The report records rtol, atol, S, n and tol.
A certificate in float32 arithmetic (``cert.arithmetic == "float32"``) already covers
both models as executed in float32, onnxruntime's rounding included: the ``bound`` check
then allows no tolerance (``||f(x) - ort(x)||_1 <= bound``, with ``f`` the original in
float64 and in float32, the larger deviation counted).

The search (``search_steps`` steps of projected sign-gradient ascent from
``search_restarts`` random points and the first reference inputs, in the box
``||x||_inf <= radius``; :func:`certcompress.measure.adversarial_deviation`) differentiates
on the torch side and measures onnxruntime: the compressed model is the value
``ort(x)`` with the gradient of a torch surrogate (straight-through): ``compressed`` when
given, else the original architecture loaded with the file's weights when every tensor
fits by name and shape, else none (onnxruntime's outputs held fixed at each step).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..capture.fakequant import ActivationQuantizer
from ..certificate import Certificate
from ..digest import parameter_digest
from ..errors import CertcompressError, ConfigurationError
from ..measure import adversarial_deviation, flatten_output, float32_function, float64_function
from . import _runtime
from ._files import load_onnx_file
from .metadata import Embedded, read_embedded
from .qdq import dequantized_weights
from .recertify import recertify as recertify_certificate
from .results import (
    FAILED,
    PASSED,
    SKIPPED,
    Check,
    Tolerance,
    VerificationFailed,
    VerificationReport,
)
from .signing import PublicKey
from .verify_w8a8 import is_w8a8, verify_w8a8

__all__ = ["verify_onnx", "NOT_AUTHENTICATED"]

def verify_onnx(path: str | os.PathLike[str], *, original: nn.Module | None = None,
                inputs: Tensor | None = None, compressed: nn.Module | None = None,
                tolerance: Tolerance | None = None, search_steps: int = 10,
                search_restarts: int = 2, seed: int = 0,
                public_key: str | os.PathLike[str] | None = None,
                recertify: bool = False) -> VerificationReport:
    """Run every check of the module docstring on the ONNX file at ``path``.

    ``inputs`` (batch first, the certificate's input shape; default: 8 random inputs of
    the domain, seeded) feed the runtime checks. ``public_key`` (a PEM file,
    ``certcompress keygen``'s ``.pub``) authenticates the file's signature.
    ``recertify`` (needs ``original``) recomputes the certificate's tiers from the
    original and the file's own weights (:mod:`.recertify`). Returns the
    report when no check failed; otherwise raises :class:`VerificationFailed` (a
    :class:`~certcompress.errors.VerificationError`) whose message names every failed
    check with the measured value and the limit.
    """
    if recertify and original is None:
        raise ConfigurationError("recertify needs the original model (original=..., "
                                 "--original): the certificate is recomputed from it and "
                                 "the file's weights")
    key = PublicKey(public_key) if public_key is not None else None
    return _verify_file(Path(path), str(path), original=original, inputs=inputs,
                        compressed=compressed, tolerance=tolerance or Tolerance(),
                        search_steps=search_steps, search_restarts=search_restarts, seed=seed,
                        public_key=key, recertify=recertify)


# ----------------------------------------------------------------------------- internals
class _Run:
    """The state of one verification: the checks so far and the measured values."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.values: dict[str, Any] = {}

    def add(self, name: str, ok: bool | None, detail: str, measured: float | None = None,
            limit: float | None = None) -> None:
        status = SKIPPED if ok is None else (PASSED if ok else FAILED)
        self.checks.append(Check(name, status, detail, measured, limit))


def _verify_file(path: Path, shown: str, *, original: nn.Module | None, inputs: Tensor | None,
                 compressed: nn.Module | None, tolerance: Tolerance, search_steps: int,
                 search_restarts: int, seed: int, public_key: PublicKey | None = None,
                 recertify: bool = False) -> VerificationReport:
    if search_steps < 0 or search_restarts < 1:
        raise ConfigurationError("search_steps must be >= 0 and search_restarts >= 1")
    model = load_onnx_file(path, shown)
    if is_w8a8(model):  # a W8A8 file: its certificate against its own int8 arithmetic
        return verify_w8a8(path, shown, model, original=original, inputs=inputs,
                           tolerance=tolerance, search_steps=search_steps,
                           search_restarts=search_restarts, seed=seed)
    emb = read_embedded(model, f"'{shown}'")
    cert = emb.certificate
    run = _Run()
    _check_checker(run, model)
    _check_metadata(run, emb, model)
    _check_digests(run, emb)
    _check_signature(run, emb, public_key)
    _check_binding(run, cert, emb.export_info, original, compressed)
    if recertify and original is not None:
        _check_recertify(run, cert, original, model, emb.export_info)
    listed = emb.export_info.get("quantized", [])
    quantized = tuple(q for q in (listed if isinstance(listed, list) else [])
                      if isinstance(q, dict))
    sess = _check_runtime(run, model, cert)
    if sess is not None:
        _check_quantized(run, model, compressed, quantized)
        _runtime_checks(run, sess, model, cert, original, compressed, inputs, tolerance,
                        search_steps, search_restarts, seed)
    else:
        for name in ("quantized-weights", "equivalence", "bound"):
            run.add(name, None, "not run: onnxruntime cannot run the file")
    report = VerificationReport(
        path=shown, checks=tuple(run.checks), certificate=cert, tolerance=tolerance,
        file_bytes=path.stat().st_size, opset=int(_opset(model)), quantized=quantized, **run.values)
    if not report.passed:
        parts = [f"check '{c.name}' failed: {c.detail}" for c in report.failed]
        raise VerificationFailed(f"verification of '{shown}' failed: " + "; ".join(parts),
                                 report)
    return report


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def _check_checker(run: _Run, model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        run.add("checker", False, f"onnx.checker (full_check) rejects the model: "
                                  f"{_first_line(exc)}")
        return
    run.add("checker", True, "onnx.checker full_check")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _dequantized_in_graph(model: onnx.ModelProto) -> set[str]:
    inits = {t.name for t in model.graph.initializer}
    return {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.output and all(i in inits for i in n.input if i)}


def _check_metadata(run: _Run, emb: Embedded, model: onnx.ModelProto) -> None:
    problems = list(emb.problems)
    info, cert = emb.export_info, emb.certificate
    listed = info.get("quantized")
    if not isinstance(listed, list) or not all(isinstance(q, dict) for q in listed):
        problems.append("the export information has no 'quantized' list")
    else:
        named = {str(q.get("name")) for q in listed if q.get("storage") != "float32"}
        graph = _dequantized_in_graph(model)
        if named != graph:
            problems.append(f"the 'quantized' list names {sorted(named)[:4]} as stored in "
                            f"integers, the graph dequantizes {sorted(graph)[:4]}")
    if info.get("certified_digest") != cert.compressed_digest:
        problems.append("the export information's certified digest is not the "
                        "certificate's compressed digest")
    if info.get("input_shape") != list(cert.input_shape):
        problems.append(f"the export information's input shape {info.get('input_shape')} "
                        f"is not the certificate's {list(cert.input_shape)}")
    if info.get("opset") != _opset(model):
        problems.append(f"the export information's opset {info.get('opset')} is not the "
                        f"file's {_opset(model)}")
    if not isinstance(info.get("exported_digest"), str):
        problems.append("the export information has no exported parameter digest")
    if problems:
        run.add("metadata", False, "; ".join(problems))
    else:
        run.add("metadata", True, f"the certcompress entries are complete and agree with "
                                  f"the graph ({len(listed or [])} quantized initializers)")


def _check_digests(run: _Run, emb: Embedded) -> None:
    problems = []
    pairs = (("the graph or its initializers changed since export", emb.stored_graph_sha256,
              emb.actual_graph_sha256),
             ("the embedded certificate changed since export",
              emb.stored_certificate_sha256, emb.actual_certificate_sha256),
             ("the certcompress metadata or the graph changed since export (content digest)",
              emb.stored_sha256, emb.actual_sha256))
    for what, stored, now in pairs:
        if stored != now:
            problems.append(f"{what} (sha256 stored {stored[:16] or 'none'}..., now "
                            f"{now[:16]}...)")
    if problems:
        run.add("digest", False, "; ".join(problems))
    else:
        run.add("digest", True, f"graph sha256 {emb.actual_graph_sha256[:16]}..., "
                                f"certificate sha256 {emb.actual_certificate_sha256[:16]}..., "
                                f"content sha256 {emb.actual_sha256[:16]}...")


def _check_recertify(run: _Run, cert: Certificate, original: nn.Module,
                     model: onnx.ModelProto, info: dict[str, Any]) -> None:
    try:
        ok, detail, bound = recertify_certificate(cert, original, model, info)
    except ValueError as exc:
        run.add("recertify", False, f"cannot recompute the certificate: {exc}")
        return
    except CertcompressError as exc:
        run.add("recertify", False, f"cannot recompute the certificate: {_first_line(exc)}")
        return
    run.add("recertify", ok, detail, cert.bound, bound)


NOT_AUTHENTICATED = "integrity only: not authenticated"


def _check_signature(run: _Run, emb: Embedded, key: PublicKey | None) -> None:
    if key is None:
        how = ("the file is signed; pass the signer's public key to authenticate it"
               if emb.signature is not None else
               "the file is unsigned; the digests catch accidental changes, not someone "
               "who recomputes them")
        run.add("signature", None, f"{NOT_AUTHENTICATED} ({how})")
        return
    ok, detail = key.check(emb.signature, emb.actual_sha256)
    run.add("signature", ok, detail)


def _check_binding(run: _Run, cert: Certificate, info: dict[str, Any],
                   original: nn.Module | None, compressed: nn.Module | None) -> None:
    problems, done = [], []
    if original is not None:
        if parameter_digest(original) != cert.original_digest:
            problems.append("the original model given is not the certificate's original "
                            "(parameter digests differ)")
        done.append("original")
    if compressed is not None:
        digest = parameter_digest(compressed)
        if digest not in (cert.compressed_digest, info.get("exported_digest")):
            problems.append("the compressed model given is neither the certified nor the "
                            "exported model (parameter digests differ)")
        done.append("compressed")
    if problems:
        run.add("binding", False, "; ".join(problems))
    elif done:
        run.add("binding", True, f"parameter digests of the {' and '.join(done)} model(s) "
                                 "match the certificate")
    else:
        run.add("binding", None, "not run: no torch model given")


def _check_runtime(run: _Run, model: onnx.ModelProto, cert: Certificate
                   ) -> Any:
    try:
        sess = _runtime.session(model)
    except Exception as exc:
        run.add("runtime", False, f"onnxruntime {_runtime.ort_version()} cannot load the "
                                  f"model: {_first_line(exc)}")
        return None
    ins = sess.get_inputs()
    if len(ins) != 1:
        run.add("runtime", False, f"the model has {len(ins)} inputs; certcompress verifies "
                                  "one-input models")
        return None
    dims = list(ins[0].shape)[1:]
    want = list(cert.input_shape[1:])
    if len(dims) != len(want) or any(isinstance(d, int) and d != w for d, w in zip(dims, want)):
        run.add("runtime", False, f"the model's input {ins[0].shape} does not fit the "
                                  f"certificate's input shape {list(cert.input_shape)}")
        return None
    return sess


def _check_quantized(run: _Run, model: onnx.ModelProto, compressed: nn.Module | None,
                     quantized: tuple[dict[str, Any], ...]) -> None:
    stored = [q for q in quantized if q.get("storage") != "float32"]
    if not stored:
        run.add("quantized-weights", None, "not run: no quantized initializers")
        return
    if compressed is None:
        run.add("quantized-weights", None, "not run: needs the compressed torch model")
        return
    try:
        deq = dequantized_weights(model)
    except Exception as exc:
        run.add("quantized-weights", False, f"onnxruntime cannot dequantize the weights: "
                                            f"{_first_line(exc)}")
        return
    state = compressed.state_dict()
    bad = []
    for q in stored:
        name = str(q.get("name"))
        ref, got = state.get(name), deq.get(name)
        if not isinstance(ref, Tensor) or got is None:
            bad.append(f"'{name}' missing")
            continue
        want = ref.detach().cpu().contiguous().numpy()
        if got.dtype != want.dtype or got.shape != want.shape or \
                got.tobytes() != want.tobytes():
            n = int(np.sum(got != want)) if got.shape == want.shape else got.size
            bad.append(f"'{name}' differs in {n} entries")
    if bad:
        run.add("quantized-weights", False, "dequantized weights are not the certified "
                                            "weights: " + ", ".join(bad[:5]))
    else:
        run.add("quantized-weights", True, f"{len(stored)} dequantized weight tensors equal "
                                           "the certified weights bit for bit")


def _domain_inputs(cert: Certificate, inputs: Tensor | None, seed: int) -> tuple[Tensor, str]:
    per = tuple(cert.input_shape[1:])
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        lo, hi = cert.input_box()
        x = lo + torch.rand((8,) + per, generator=gen, dtype=torch.float64) * (hi - lo)
        return x, "8 random inputs of the domain"
    x = torch.as_tensor(inputs).detach().to(torch.float64)
    if tuple(x.shape) == per:
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != per or x.shape[0] == 0:
        raise ConfigurationError(f"inputs of shape {tuple(x.shape)} do not fit the "
                                 f"certificate's input shape {cert.input_shape}")
    if not bool(torch.isfinite(x).all()):
        raise ConfigurationError("inputs contain NaN or infinite values")
    return x, "given"


def _surrogate(model: onnx.ModelProto, original: nn.Module | None,
               compressed: nn.Module | None) -> tuple[Callable[[Tensor], Tensor] | None, str]:
    if compressed is not None:
        return float64_function(compressed), "gradients of the compressed torch model"
    if original is None:
        return None, ""
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    try:
        weights.update(dequantized_weights(model))
    except Exception:
        return None, "onnxruntime's outputs held fixed at each step (gradients of f only)"
    state: dict[str, Tensor] = {}
    for name, t in [*original.named_parameters(), *original.named_buffers()]:
        if not t.is_floating_point():
            continue
        w = weights.get(name)
        if w is None or tuple(w.shape) != tuple(t.shape):
            return None, "onnxruntime's outputs held fixed at each step (gradients of f only)"
        state[name] = torch.from_numpy(np.array(w, dtype=np.float64))

    def g(x: Tensor) -> Tensor:
        return flatten_output(functional_call(original, state, (x.double(),), strict=False))

    return g, "gradients of the original architecture loaded with the file's weights"


def _runtime_checks(run: _Run, sess: Any, model: onnx.ModelProto, cert: Certificate,
                    original: nn.Module | None, compressed: nn.Module | None,
                    inputs: Tensor | None, tol: Tolerance, steps: int, restarts: int,
                    seed: int) -> None:
    x, source = _domain_inputs(cert, inputs, seed)
    ort_f = _runtime.runner(sess)
    try:
        y = ort_f(x)
    except Exception as exc:
        run.add("runtime", False, f"onnxruntime failed on the inputs: {_first_line(exc)}")
        run.add("equivalence", None, "not run: onnxruntime failed")
        run.add("bound", None, "not run: onnxruntime failed")
        return
    n_out = int(y.shape[1])
    if not bool(torch.isfinite(y).all()):
        run.add("runtime", False, "onnxruntime returned NaN or infinite outputs")
        run.add("equivalence", None, "not run: onnxruntime failed")
        run.add("bound", None, "not run: onnxruntime failed")
        return
    run.add("runtime", True, f"onnxruntime {_runtime.ort_version()} ran {x.shape[0]} "
                             f"inputs, {n_out} outputs each")
    scale = float(y.abs().sum(dim=1).max())
    tol_v = tol.value(scale, n_out)
    lo, hi = cert.input_box()
    slack = 1e-12 * max(cert.radius, 1e-300)
    inside = ((x >= lo - slack) & (x <= hi + slack)).reshape(x.shape[0], -1).all(dim=1)
    run.values.update(inputs=int(x.shape[0]), inputs_source=source,
                      inputs_outside_domain=int((~inside).sum()), outputs=n_out,
                      output_scale=scale, numerical_tolerance=tol_v)
    if compressed is not None:
        with torch.no_grad():
            yc = float64_function(compressed)(x)
        if yc.shape != y.shape:
            run.add("equivalence", False, f"outputs of shape {tuple(y.shape[1:])} vs the "
                                          f"compressed model's {tuple(yc.shape[1:])}")
        else:
            e = float((y - yc).abs().sum(dim=1).max())
            run.values["equivalence_max"] = e
            limit, why = tol_v, "tolerance"
            if _quantizes_activations(compressed):
                # onnxruntime's int8 kernels requantize activations themselves (their own
                # rounding of the scales and ties): a step apart from the torch
                # quantizers at some elements; both stay within the certificate, so
                # ||ort - f'|| <= ||ort - f|| + ||f - f'|| <= 2 bound
                limit, why = tol_v + 2.0 * cert.bound, "tolerance + 2 x bound (int8 kernels)"
            run.add("equivalence", e <= limit,
                    f"max ||ort(x) - f'(x)||_1 = {e:.4g} {'<=' if e <= limit else 'exceeds'} "
                    f"{why} {limit:.4g} on {x.shape[0]} inputs", e, limit)
    else:
        run.add("equivalence", None, "not run: needs the compressed torch model")
    if original is None:
        run.add("bound", None, "not run: needs the original torch model")
        return
    _bound_check(run, cert, original, model, compressed, x[inside], y[inside], ort_f, tol,
                 scale, n_out, steps, restarts, seed)


def _quantizes_activations(model: nn.Module) -> bool:
    return any(isinstance(m, ActivationQuantizer) and m.enabled for m in model.modules())


def _l1_max(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().sum(dim=1).max())


def _bound_check(run: _Run, cert: Certificate, original: nn.Module, model: onnx.ModelProto,
                 compressed: nn.Module | None, x: Tensor, y: Tensor,
                 ort_f: Callable[[Tensor], Tensor], tol: Tolerance, scale: float, n_out: int,
                 steps: int, restarts: int, seed: int) -> None:
    f = float64_function(original)
    f32_original = float32_function(original)
    bound = cert.bound
    f32 = cert.arithmetic == "float32"
    if f32:  # the certificate covers both models as executed in float32: no tolerance
        tol = Tolerance(rtol=0.0, atol=0.0)
    parts: list[str] = []
    worst: tuple[float, float] | None = None  # (measured deviation, its tolerance)
    if x.shape[0]:
        with torch.no_grad():
            fx = f(x)
        if fx.shape != y.shape:
            run.add("bound", False, f"the original's outputs have shape {tuple(fx.shape[1:])},"
                                    f" onnxruntime's {tuple(y.shape[1:])}")
            return
        dev = float((fx - y).abs().sum(dim=1).max())
        if f32:
            with torch.no_grad():
                dev = max(dev, _l1_max(f32_original(x), y))
        run.values["deviation_max"] = dev
        worst = (dev, tol.value(scale, n_out))
        parts.append(f"inputs: max ||f(x) - ort(x)||_1 = {dev:.4g}")
    if steps > 0:
        surrogate, how = _surrogate(model, original, compressed)

        def g(z: Tensor) -> Tensor:
            value = ort_f(z)
            if surrogate is None:
                return value
            s = surrogate(z)
            return s + (value - s).detach()

        starts = x[:restarts] if x.shape[0] else None
        lo, hi = cert.input_box()
        adv = adversarial_deviation(f, g, cert.input_shape, lo, hi,
                                    steps=steps, restarts=restarts, starts=starts, seed=seed)
        z = adv.argmax
        with torch.no_grad():
            yz = ort_f(z)
            dz = float((f(z) - yz).abs().sum(dim=1).max())
            if f32:
                dz = max(dz, _l1_max(f32_original(z), yz))
        tol_z = tol.value(max(scale, float(yz.abs().sum())), n_out)
        run.values.update(adversarial_max=dz, search=f"{adv.steps} steps x {adv.restarts} "
                          f"starts in {cert.domain}; {how}")
        parts.append(f"search: {dz:.4g}")
        if worst is None or dz - (bound + tol_z) > worst[0] - (bound + worst[1]):
            worst = (dz, tol_z)
    if worst is None:
        run.add("bound", None, "not run: no input inside the domain and no search")
        return
    measured, tol_w = worst
    ok = measured <= bound + tol_w  # the point with the largest excess decides
    excess = measured - (bound + tol_w)
    verdict = "within" if ok else f"EXCEEDS by {excess:.4g}"
    run.add("bound", ok, f"{'; '.join(parts)}; {verdict} the certified bound {bound:.4g} + "
                         f"tolerance {tol_w:.3g}", measured, bound + tol_w)
