"""Ed25519 keys and DSSE v1 envelopes around in-toto Statements.

The envelope is the standard shape (``payload``, ``payloadType``, ``signatures[{keyid,
sig}]``) and the keyid is securesystemslib's default for the key, so a third party can
verify any receipt with ``securesystemslib.dsse.Envelope.verify`` and the PEM from
``tracelake receipts pubkey``, without tracelake.

Only a run (and ``tracelake keygen``) ever creates a private key; everything that
checks signatures takes public keys (see ``pipeline.core.trust``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import SSlibKey

from pipeline.core.errors import NotFound, SignatureError
from pipeline.core.hashing import CacheMac, canonical_json
from pipeline.core.store import atomic_write_bytes
from schemas.receipt import DSSE_PAYLOAD_TYPE

KEY_ENV = "TRACELAKE_SIGNING_KEY"


def default_key_path() -> Path:
    """``$TRACELAKE_SIGNING_KEY``, else ``$XDG_CONFIG_HOME/tracelake/signing-key.pem``."""
    explicit = os.environ.get(KEY_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "tracelake" / "signing-key.pem"


def generate_key(path: Path, overwrite: bool = False) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, pem, mode=0o600)
    return path


def load_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The signing key at ``path`` (default: ``default_key_path()``); never creates one."""
    path = path or default_key_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"no signing key at {path} (`tracelake keygen` makes one)") from exc
    except OSError as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM private key without a password") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return loaded


def load_or_create_key(path: Path | None = None) -> Ed25519PrivateKey:
    """For runs only: the first run on a machine makes its key."""
    path = path or default_key_path()
    if not path.exists():
        generate_key(path)
    return load_key(path)


def cache_mac(private_key: Ed25519PrivateKey) -> CacheMac:
    """The derived-cache MAC of this signing key (see ``CacheMac``)."""
    return CacheMac.derive(private_key.private_bytes_raw())


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError("not a PEM public key") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise SignatureError("public key is not Ed25519")
    return loaded


def key_id(public_key: Ed25519PublicKey) -> str:
    """securesystemslib's default keyid, so standard tooling matches signatures to keys."""
    keyid: str = SSlibKey.from_crypto(public_key).keyid
    return keyid


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    type_bytes = payload_type.encode("utf-8")
    return b" ".join(
        [b"DSSEv1", str(len(type_bytes)).encode(), type_bytes, str(len(payload)).encode(), payload]
    )


def sign_statement(statement: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    payload = canonical_json(statement)
    signature = private_key.sign(pae(DSSE_PAYLOAD_TYPE, payload))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": DSSE_PAYLOAD_TYPE,
        "signatures": [
            {
                "keyid": key_id(private_key.public_key()),
                "sig": base64.b64encode(signature).decode("ascii"),
            }
        ],
    }


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def verify_envelope(
    envelope: dict[str, Any], public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey]
) -> tuple[dict[str, Any], str]:
    """(Statement, keyid of the key that signed it) if a signature by one of
    ``public_keys`` verifies; SignatureError otherwise. The payload is parsed only
    after a signature checks out."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    if not keys:
        raise SignatureError("no trusted public key to check the signature with")
    try:
        payload = _b64decode(envelope["payload"])
        payload_type = envelope["payloadType"]
        signatures = envelope["signatures"]
        if not isinstance(payload_type, str) or not isinstance(signatures, list):
            raise TypeError("payloadType must be a string and signatures a list")
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed envelope: {exc}") from exc
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise SignatureError(f"payloadType is {payload_type!r}, not {DSSE_PAYLOAD_TYPE!r}")
    message = pae(payload_type, payload)
    for signature in signatures:
        for key in keys:
            try:
                key.verify(_b64decode(signature["sig"]), message)
            except (InvalidSignature, KeyError, TypeError, ValueError):
                continue
            try:
                statement = json.loads(payload)
            except ValueError as exc:
                raise SignatureError("signed payload is not JSON") from exc
            if not isinstance(statement, dict):
                raise SignatureError("payload is not a JSON object")
            return statement, key_id(key)
    raise SignatureError("no signature verifies with a trusted key")


def decode_payload_unverified(envelope: dict[str, Any]) -> dict[str, Any]:
    """For showing a run that does not verify; never for trust decisions."""
    try:
        result = json.loads(_b64decode(envelope["payload"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed envelope: {exc}") from exc
    if not isinstance(result, dict):
        raise SignatureError("payload is not a JSON object")
    return result


def signer_ids(envelope: dict[str, Any]) -> list[str]:
    """The keyids an envelope claims (unverified: for messages only)."""
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        return []
    return [str(s.get("keyid")) for s in signatures if isinstance(s, dict)]
