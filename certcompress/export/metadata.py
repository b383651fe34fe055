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
    quantized initializers (name, bits, storage type, axis), the tolerance used at export.

A digest without a secret key makes accidental and naive changes evident (one changed
weight, node or bound); it does not authenticate the file against someone who rewrites
the digests too. Sign the file with an external tool for authenticity.
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
           "KEY_GRAPH_SHA256", "KEY_EXPORT", "graph_digest", "text_digest", "merge_props",
           "embed", "Embedded", "read_embedded"]

FORMAT = "certcompress.onnx/1"
KEY_FORMAT = "certcompress.format"
KEY_CERTIFICATE = "certcompress.certificate"
KEY_CERTIFICATE_SHA256 = "certcompress.certificate_sha256"
KEY_GRAPH_SHA256 = "certcompress.graph_sha256"
KEY_EXPORT = "certcompress.export"

_DIGEST_DOMAIN = b"certcompress.onnx-graph-digest/1\x00"


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


def merge_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Set ``props`` in ``model.metadata_props``, keeping every other key (first
    occurrence wins for pre-existing duplicates, which are dropped).

    ``onnx.helper.set_model_props`` replaces the whole list; this merges."""
    merged: dict[str, str] = {}
    for entry in model.metadata_props:
        merged.setdefault(entry.key, entry.value)
    merged.update({str(k): str(v) for k, v in props.items()})
    onnx.helper.set_model_props(model, merged)


def embed(model: onnx.ModelProto, certificate: Certificate, export_info: Mapping[str, Any]
          ) -> dict[str, str]:
    """Write the certificate, its digest, the graph digest and ``export_info`` into
    ``model``'s metadata (merged); returns the keys written. Call it last: any later
    change of the graph changes :func:`graph_digest`."""
    cert_json = certificate.to_json(indent=None)
    props = {
        KEY_FORMAT: FORMAT,
        KEY_CERTIFICATE: cert_json,
        KEY_CERTIFICATE_SHA256: text_digest(cert_json),
        KEY_EXPORT: json.dumps(dict(export_info), sort_keys=True, allow_nan=False),
        KEY_GRAPH_SHA256: graph_digest(model),
    }
    merge_props(model, props)
    return props


@dataclass(frozen=True)
class Embedded:
    """What a certcompress ONNX file carries: the certificate, the digests as stored
    and as recomputed, and the export information."""

    certificate: Certificate
    certificate_json: str
    stored_certificate_sha256: str
    actual_certificate_sha256: str
    stored_graph_sha256: str
    actual_graph_sha256: str
    export_info: dict[str, Any]


def props_of(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict (first occurrence of a key wins)."""
    out: dict[str, str] = {}
    for entry in model.metadata_props:
        out.setdefault(entry.key, entry.value)
    return out


def read_embedded(model: onnx.ModelProto, where: str = "the model") -> Embedded:
    """Read the embedded certificate and digests; raises :class:`VerificationError`
    (check ``certificate``) when they are missing or malformed."""
    props = props_of(model)
    if KEY_CERTIFICATE not in props:
        raise VerificationError(
            f"check 'certificate' failed: {where} has no embedded certificate (metadata key "
            f"'{KEY_CERTIFICATE}' is absent); export it with certcompress export / "
            "cc.export_onnx")
    missing = [k for k in (KEY_CERTIFICATE_SHA256, KEY_GRAPH_SHA256) if k not in props]
    if missing:
        raise VerificationError(f"check 'digest' failed: {where} lacks the digest key(s) "
                                f"{', '.join(missing)}")
    text = props[KEY_CERTIFICATE]
    try:
        cert = Certificate.from_json(text)
    except CertificateError as exc:
        raise VerificationError(f"check 'certificate' failed: the embedded certificate of "
                                f"{where} is malformed: {exc}") from None
    try:
        info = json.loads(props.get(KEY_EXPORT, "{}"))
    except json.JSONDecodeError as exc:
        raise VerificationError(f"check 'certificate' failed: metadata '{KEY_EXPORT}' of "
                                f"{where} is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise VerificationError(f"check 'certificate' failed: metadata '{KEY_EXPORT}' of "
                                f"{where} is not a JSON object")
    return Embedded(certificate=cert, certificate_json=text,
                    stored_certificate_sha256=props[KEY_CERTIFICATE_SHA256],
                    actual_certificate_sha256=text_digest(text),
                    stored_graph_sha256=props[KEY_GRAPH_SHA256],
                    actual_graph_sha256=graph_digest(model), export_info=info)
