"""The certificate inside the ONNX file, and the digests that make changes evident.

Keys written into ``ModelProto.metadata_props`` (other keys are kept, never duplicated):

``certcompress.format``
    :data:`FORMAT`, the version of this layout.
``certcompress.certificate``
    The certificate JSON (:meth:`Certificate.to_json`, compact, keys sorted).
``certcompress.certificate_sha256``
    SHA-256 of the UTF-8 bytes of that JSON text.
``certcompress.graph_sha256``
    :func:`graph_digest`: SHA-256 over the ONNX initializers (by value) and the graph
    (nodes, inputs, outputs, ...), the opsets and the local functions. Model-level
    ``metadata_props`` (where these keys live) are excluded, nothing else is.
``certcompress.export``
    JSON describing the export: the exported torch model's parameter digest, the
    certified digest, opset, input shape, the quantized initializers (name, bits,
    storage type, axis), the tolerance used at export.
``certcompress.sha256``
    :func:`content_digest`: SHA-256 over the graph digest and every other
    ``certcompress.*`` entry (key and value) except itself and the signature, so no
    entry certcompress writes is outside a digest.
``certcompress.signature`` (optional)
    An Ed25519 signature of the content digest (:mod:`.signing`), JSON with the
    algorithm, the SHA-256 of the raw public key, and the signature in hex.

Every key above except the signature is expected; a missing one, an unknown
``certcompress.*`` key, or a key given twice fails verification.

A digest without a secret key makes accidental and naive changes evident (one changed
weight, node, bound or metadata entry); it does not authenticate the file against
someone who rewrites the digests too. For that, sign the file (``signing_key=``) and
verify with the public key, or re-check the certificate by recomputation
(``verify_onnx(recertify=True)``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import numpy_helper

from ..certificate import Certificate
from ..errors import CertificateError, VerificationError

__all__ = ["FORMAT", "KEY_FORMAT", "KEY_CERTIFICATE", "KEY_CERTIFICATE_SHA256",
           "KEY_GRAPH_SHA256", "KEY_EXPORT", "KEY_SHA256", "KEY_SIGNATURE", "EXPECTED_KEYS",
           "graph_digest", "content_digest", "text_digest", "merge_props", "embed", "seal",
           "Embedded", "read_embedded", "props_of"]

FORMAT = "certcompress.onnx/2"
KEY_FORMAT = "certcompress.format"
KEY_CERTIFICATE = "certcompress.certificate"
KEY_CERTIFICATE_SHA256 = "certcompress.certificate_sha256"
KEY_GRAPH_SHA256 = "certcompress.graph_sha256"
KEY_EXPORT = "certcompress.export"
KEY_SHA256 = "certcompress.sha256"
KEY_SIGNATURE = "certcompress.signature"
PREFIX = "certcompress."
EXPECTED_KEYS = (KEY_FORMAT, KEY_CERTIFICATE, KEY_CERTIFICATE_SHA256, KEY_GRAPH_SHA256,
                 KEY_EXPORT, KEY_SHA256)

_DIGEST_DOMAIN = b"certcompress.onnx-graph-digest/1\x00"
_CONTENT_DOMAIN = b"certcompress.onnx-content-digest/1\x00"


def _update(h: Any, *parts: bytes | str) -> None:
    """Length-prefixed parts, so no two different sequences hash alike."""
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise VerificationError(
            f"check 'digest' failed: initializer '{t.name}' is stored in an external data "
            "file; certcompress files are self-contained (one .onnx file)")
    return bytes(numpy_helper.to_array(t).tobytes())


def graph_digest(model: onnx.ModelProto) -> str:
    """SHA-256 (hex) over everything that decides what ``model`` computes.

    Initializers count by value (name, element type, dims and the decoded array bytes),
    so the same numbers stored as ``raw_data`` or as typed fields hash alike; the rest of
    the graph (nodes with their attributes, inputs, outputs, value infos, names, doc
    strings), the IR version, the opset imports and the local functions are hashed in
    protobuf's deterministic serialization. ``model.metadata_props`` is excluded.
    """
    h = hashlib.sha256(_DIGEST_DOMAIN)
    _update(h, str(model.ir_version))
    for op in sorted(model.opset_import, key=lambda o: (o.domain, o.version)):
        _update(h, f"opset {op.domain}:{op.version}")
    graph = model.graph
    rest = onnx.GraphProto()
    rest.CopyFrom(graph)
    rest.ClearField("initializer")
    rest.ClearField("sparse_initializer")
    _update(h, "graph", rest.SerializeToString(deterministic=True))
    for t in sorted(graph.initializer, key=lambda t: t.name):
        _update(h, "initializer", t.name, str(t.data_type), ",".join(map(str, t.dims)),
                _tensor_bytes(t))
    for s in sorted(graph.sparse_initializer, key=lambda s: s.values.name):
        _update(h, "sparse_initializer", s.SerializeToString(deterministic=True))
    for f in sorted(model.functions, key=lambda f: (f.domain, f.name, f.overload)):
        _update(h, "function", f.SerializeToString(deterministic=True))
    return h.hexdigest()


def text_digest(text: str) -> str:
    """SHA-256 (hex) of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_digest(model: onnx.ModelProto, graph_sha256: str | None = None) -> str:
    """SHA-256 (hex) over :func:`graph_digest` (recomputed, or ``graph_sha256`` when the
    caller has it) and every ``certcompress.*`` metadata entry, key and value, except
    ``certcompress.sha256`` and ``certcompress.signature``: what the signature signs."""
    h = hashlib.sha256(_CONTENT_DOMAIN)
    _update(h, "graph", graph_sha256 if graph_sha256 is not None else graph_digest(model))
    for entry in sorted(model.metadata_props, key=lambda e: (e.key, e.value)):
        if entry.key.startswith(PREFIX) and entry.key not in (KEY_SHA256, KEY_SIGNATURE):
            _update(h, "entry", entry.key, entry.value)
    return h.hexdigest()


def merge_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Set ``props`` in ``model.metadata_props``, keeping every other key (first
    occurrence wins for pre-existing duplicates, which are dropped).

    ``onnx.helper.set_model_props`` replaces the whole list; this merges."""
    merged: dict[str, str] = {}
    for entry in model.metadata_props:
        merged.setdefault(entry.key, entry.value)
    merged.update({str(k): str(v) for k, v in props.items()})
    onnx.helper.set_model_props(model, merged)


def embed(model: onnx.ModelProto, certificate: Certificate, export_info: Mapping[str, Any],
          signer: Any = None) -> dict[str, str]:
    """Write the certificate, its digest, the graph digest, ``export_info`` and the
    content digest into ``model``'s metadata (any earlier ``certcompress.*`` entry is
    dropped, other keys are kept), and the signature when ``signer`` (a
    :class:`~certcompress.export.signing.SigningKey`) is given; returns the keys
    written. Call it last: any later change of the graph changes the digests."""
    kept = {e.key: e.value for e in model.metadata_props if not e.key.startswith(PREFIX)}
    onnx.helper.set_model_props(model, kept)
    cert_json = certificate.to_json(indent=None)
    graph_sha = graph_digest(model)
    props = {
        KEY_FORMAT: FORMAT,
        KEY_CERTIFICATE: cert_json,
        KEY_CERTIFICATE_SHA256: text_digest(cert_json),
        KEY_EXPORT: json.dumps(dict(export_info), sort_keys=True, allow_nan=False),
        KEY_GRAPH_SHA256: graph_sha,
    }
    merge_props(model, props)
    props[KEY_SHA256] = content_digest(model, graph_sha)
    if signer is not None:
        props[KEY_SIGNATURE] = signer.sign(props[KEY_SHA256])
    merge_props(model, props)
    return props


def seal(model: onnx.ModelProto) -> None:
    """Recompute every digest of ``model`` from its current content, in place (what
    anyone who edits a file can do: the reason digests alone authenticate nothing).
    Leaves a signature, if any, as it is. For tests and tamper benchmarks."""
    props = props_of(model)
    graph_sha = graph_digest(model)
    update = {KEY_GRAPH_SHA256: graph_sha}
    if KEY_CERTIFICATE in props:
        update[KEY_CERTIFICATE_SHA256] = text_digest(props[KEY_CERTIFICATE])
    merge_props(model, update)
    merge_props(model, {KEY_SHA256: content_digest(model, graph_sha)})


@dataclass(frozen=True)
class Embedded:
    """What a certcompress ONNX file carries: the certificate, the digests as stored
    and as recomputed, the export information, the signature entry, and the problems
    of the metadata layout (missing, unknown or repeated keys, another format)."""

    certificate: Certificate
    certificate_json: str
    stored_certificate_sha256: str
    actual_certificate_sha256: str
    stored_graph_sha256: str
    actual_graph_sha256: str
    export_info: dict[str, Any]
    stored_sha256: str = ""
    actual_sha256: str = ""
    signature: str | None = None
    problems: tuple[str, ...] = ()


def props_of(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict (first occurrence of a key wins)."""
    out: dict[str, str] = {}
    for entry in model.metadata_props:
        out.setdefault(entry.key, entry.value)
    return out


def _layout_problems(model: onnx.ModelProto, props: Mapping[str, str]) -> list[str]:
    keys = [e.key for e in model.metadata_props if e.key.startswith(PREFIX)]
    problems = []
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        problems.append(f"metadata key(s) {', '.join(repeated)} occur more than once")
    missing = [k for k in EXPECTED_KEYS if k not in props]
    if missing:
        problems.append(f"expected metadata key(s) {', '.join(missing)} are missing")
    unknown = sorted({k for k in keys if k not in EXPECTED_KEYS and k != KEY_SIGNATURE})
    if unknown:
        problems.append(f"unknown metadata key(s) {', '.join(unknown)} (certcompress writes "
                        f"only {', '.join(EXPECTED_KEYS)} and {KEY_SIGNATURE})")
    fmt = props.get(KEY_FORMAT)
    if fmt is not None and fmt != FORMAT:
        problems.append(f"metadata '{KEY_FORMAT}' is {fmt[:40]!r}, this certcompress reads "
                        f"{FORMAT!r} (re-export the model with this version)")
    return problems


def read_embedded(model: onnx.ModelProto, where: str = "the model") -> Embedded:
    """Read the embedded certificate and digests; raises :class:`VerificationError`
    (check ``certificate``) when the certificate is missing or malformed. Other layout
    problems are listed in :attr:`Embedded.problems` (verification fails on them)."""
    props = props_of(model)
    if KEY_CERTIFICATE not in props:
        raise VerificationError(
            f"check 'certificate' failed: {where} has no embedded certificate (metadata key "
            f"'{KEY_CERTIFICATE}' is absent); export it with certcompress export / "
            "cc.export_onnx")
    text = props[KEY_CERTIFICATE]
    try:
        cert = Certificate.from_json(text)
    except CertificateError as exc:
        raise VerificationError(f"check 'certificate' failed: the embedded certificate of "
                                f"{where} is malformed: {exc}") from None
    problems = _layout_problems(model, props)
    info: Any = {}
    if KEY_EXPORT in props:
        try:
            info = json.loads(props[KEY_EXPORT])
        except json.JSONDecodeError as exc:
            problems.append(f"metadata '{KEY_EXPORT}' is not JSON ({exc})")
        if not isinstance(info, dict):
            problems.append(f"metadata '{KEY_EXPORT}' is not a JSON object")
            info = {}
    graph_sha = graph_digest(model)
    return Embedded(certificate=cert, certificate_json=text,
                    stored_certificate_sha256=props.get(KEY_CERTIFICATE_SHA256, ""),
                    actual_certificate_sha256=text_digest(text),
                    stored_graph_sha256=props.get(KEY_GRAPH_SHA256, ""),
                    actual_graph_sha256=graph_sha, export_info=info,
                    stored_sha256=props.get(KEY_SHA256, ""),
                    actual_sha256=content_digest(model, graph_sha),
                    signature=props.get(KEY_SIGNATURE), problems=tuple(problems))
