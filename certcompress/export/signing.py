"""Ed25519 signatures over certcompress ONNX files (the optional ``cryptography`` package).

A file's digests (:mod:`.metadata`) make accidental changes evident, but anyone who
edits a file can recompute them. A signature made with a private key authenticates
the file to whoever holds the matching public key:

- :func:`generate_signing_key` writes a private key (PEM, PKCS#8, mode 0600) and its
  public key (PEM, ``OUT.pub``);
- ``export_onnx(..., signing_key=PRIVATE)`` signs the file's content digest
  (:func:`~certcompress.export.metadata.content_digest`: the canonical graph, every
  initializer by value, and every ``certcompress.*`` metadata entry) and stores the
  signature in ``certcompress.signature``;
- ``verify_onnx(..., public_key=PUBLIC)`` (``certcompress verify --public-key``) fails on
  any change of what the digest covers, and on a file signed by another key or unsigned.

Install the package with ``pip install certcompress[sign]`` (or ``pip install
cryptography``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import ConfigurationError

__all__ = ["generate_signing_key", "SigningKey", "PublicKey", "ALGORITHM"]

ALGORITHM = "ed25519"
_DOMAIN = b"certcompress.onnx-signature/1\x00"
_INSTALL = "install it with pip install 'certcompress[sign]' (or pip install cryptography)"


def _crypto() -> Any:
    # cryptography is an optional dependency (certcompress[sign]): imported on use.
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError:
        raise ConfigurationError(f"signing needs the 'cryptography' package; {_INSTALL}"
                                 ) from None
    return serialization, ed25519, InvalidSignature


def _raw_public(key: Any) -> bytes:
    serialization, _, _ = _crypto()
    data: bytes = key.public_bytes(serialization.Encoding.Raw,
                                   serialization.PublicFormat.Raw)
    return data


def _message(content_digest: str) -> bytes:
    return _DOMAIN + content_digest.encode("ascii")


def _read_pem(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigurationError(f"{what} '{path}' does not exist" if not path.exists()
                                 else f"{what} '{path}' is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{what} '{path}' cannot be read: {exc.strerror or exc}"
                                 ) from None


class SigningKey:
    """An Ed25519 private key read from a PEM file (unencrypted PKCS#8)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        serialization, ed25519, _ = _crypto()
        self.path = Path(path)
        data = _read_pem(self.path, "signing key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"signing key '{self.path}' is not an unencrypted PEM private key "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); create "
                "one with certcompress keygen OUT") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigurationError(f"signing key '{self.path}' is a "
                                     f"{type(key).__name__}, not an Ed25519 key; create one "
                                     "with certcompress keygen OUT")
        self._key = key
        self.key_id = hashlib.sha256(_raw_public(key.public_key())).hexdigest()

    def public_key(self) -> PublicKey:
        """The matching :class:`PublicKey` (shown as this key's path)."""
        pub = PublicKey.__new__(PublicKey)
        pub.path, pub._key, pub.key_id = self.path, self._key.public_key(), self.key_id
        return pub

    def sign(self, content_digest: str) -> str:
        """The ``certcompress.signature`` entry (JSON) for ``content_digest``."""
        signature = self._key.sign(_message(content_digest))
        return json.dumps({"algorithm": ALGORITHM, "public_key_sha256": self.key_id,
                           "signature": signature.hex()}, sort_keys=True)


class PublicKey:
    """An Ed25519 public key read from a PEM file (``certcompress keygen``'s ``.pub``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        serialization, ed25519, _ = _crypto()
        self.path = Path(path)
        data = _read_pem(self.path, "public key")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            hint = (" (this is a private key: pass its .pub file)"
                    if b"PRIVATE KEY" in data else "")
            raise ConfigurationError(
                f"public key '{self.path}' is not a PEM public key{hint} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigurationError(f"public key '{self.path}' is a {type(key).__name__}, "
                                     "not an Ed25519 key")
        self._key = key
        self.key_id = hashlib.sha256(_raw_public(key)).hexdigest()

    def check(self, entry: str | None, content_digest: str) -> tuple[bool, str]:
        """``(ok, detail)`` for the stored ``certcompress.signature`` ``entry``."""
        if entry is None:
            return False, (f"the file is not signed; public key {self.key_id[:16]}... "
                           "cannot authenticate it")
        try:
            sig = json.loads(entry)
            if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
                raise ValueError(f"algorithm is not {ALGORITHM}")
            raw = bytes.fromhex(str(sig["signature"]))
        except (ValueError, KeyError) as exc:
            return False, f"the signature entry is malformed ({exc})"
        if sig.get("public_key_sha256") != self.key_id:
            return False, (f"signed by another key (sha256 "
                           f"{str(sig.get('public_key_sha256'))[:16]}...), not by "
                           f"'{self.path}' ({self.key_id[:16]}...)")
        invalid = _crypto()[2]
        try:
            self._key.verify(raw, _message(content_digest))
        except invalid:
            return False, ("the Ed25519 signature does not match the file's content: the "
                           "graph, its weights or the certcompress metadata changed since "
                           "signing")
        return True, (f"Ed25519 signature by key {self.key_id[:16]}... ('{self.path}') "
                      "covers the graph, every initializer and every certcompress entry")


def generate_signing_key(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``out`` (PEM, mode 0600) and its public key to
    ``out + ".pub"``; returns both paths. Refuses to overwrite an existing file."""
    serialization, ed25519, _ = _crypto()
    private = Path(out)
    public = private.with_name(private.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise ConfigurationError(f"'{p}' already exists; certcompress never overwrites a "
                                     "key: remove it or choose another name")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(public) as tmp:
        tmp.write_bytes(pub)
    with atomic_path(private) as tmp:
        os.chmod(tmp, 0o600)  # before the key is written: never readable by others
        tmp.write_bytes(pem)
    return private, public
