"""Ed25519 signatures over an artifact's canonical manifest (needs the `signing` extra: cryptography).

`edgeiad export --sign KEY` signs; `Detector.load(..., trusted_keys=[...])` refuses artifacts that are unsigned
or signed by another key. The manifest holds every file's sha256, so the signature covers the whole artifact.
Keys are PEM files, e.g. `openssl genpkey -algorithm ed25519 -out key.pem` and
`openssl pkey -in key.pem -pubout -out key.pub`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import ArtifactError, ConfigError, DataNotFoundError, require

ALGORITHM = "ed25519"
REEXPORT = "re-export it with `edgeiad export --sign KEY` or re-sign it with `edgeiad sign`"


def _serialization(package: str):
    require("cryptography", "signing", package=package)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def _pem(item: str | os.PathLike | bytes, what: str) -> bytes:
    if isinstance(item, bytes):
        return item
    path = Path(item)
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path} (pass a PEM file)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror or exc})") from None


def load_private_key(item: str | os.PathLike | bytes, package: str = "edgeiad"):
    """An Ed25519 private key from a PEM file (or PEM bytes); ConfigError naming the problem otherwise."""
    serialization, ed25519 = _serialization(package)
    try:
        key = serialization.load_pem_private_key(_pem(item, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {item!s:.200} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"signing key {item!s:.200} is not an Ed25519 key: create one with openssl genpkey")
    return key


def load_public_key(item, package: str = "edgeiad-runtime"):
    """An Ed25519 public key from a PEM file, PEM bytes or a key object."""
    serialization, ed25519 = _serialization(package)
    if isinstance(item, ed25519.Ed25519PublicKey):
        return item
    try:
        key = serialization.load_pem_public_key(_pem(item, "trusted key"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"trusted key {item!s:.200} is not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"trusted key {item!s:.200} is not an Ed25519 public key")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key (first 16 hex digits of the sha256 of its raw bytes)."""
    serialization, _ = _serialization("edgeiad-runtime")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(body: bytes, key_item) -> dict:
    """The signature block for canonical manifest bytes."""
    key = load_private_key(key_item)
    value = base64.b64encode(key.sign(body)).decode("ascii")
    return {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "value": value}


def verify_signature(body: bytes, signature: dict | None, trusted_keys: Sequence, path: Path) -> None:
    """Refuse unless `signature` is a valid Ed25519 signature of `body` by one of `trusted_keys`."""
    keys = [load_public_key(item) for item in trusted_keys]
    from cryptography.exceptions import InvalidSignature  # importable now: load_public_key checked the extra

    if not signature:
        raise ArtifactError(f"{path} is not signed but trusted keys were given: {REEXPORT}")
    if signature.get("algorithm") != ALGORITHM:
        raise ArtifactError(f"{path} is signed with {signature.get('algorithm')!r}, not {ALGORITHM}: {REEXPORT}")
    try:
        value = base64.b64decode(signature.get("value", ""), validate=True)
    except ValueError:
        raise ArtifactError(f"{path} has a malformed signature: {REEXPORT}") from None
    for key in keys:
        try:
            key.verify(value, body)
            return
        except InvalidSignature:
            continue
    raise ArtifactError(
        f"{path} is not signed by any trusted key (signed by key {signature.get('key_id', '?')}; tampered, or "
        "signed by another key): refuse to load it"
    )
