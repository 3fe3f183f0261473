"""Ed25519 keys and DSSE v1 envelopes around in-toto Statements.

The envelope is the standard shape (``payload``, ``payloadType``, ``signatures[{keyid,
sig}]``) and the keyid is securesystemslib's default for the key, so a third party can
verify any receipt with ``securesystemslib.dsse.Envelope.verify`` and the PEM from
``tracelake receipts pubkey``, without tracelake.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import SSlibKey

from pipeline.core.errors import SignatureError
from pipeline.core.hashing import canonical_json
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


def load_or_create_key(path: Path | None = None) -> Ed25519PrivateKey:
    path = path or default_key_path()
    if not path.exists():
        generate_key(path)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return loaded


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    loaded = serialization.load_pem_public_key(pem)
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


def verify_envelope(envelope: dict[str, Any], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Return the Statement if a signature by ``public_key`` verifies; raise otherwise.

    The payload is parsed only after the signature checks out.
    """
    try:
        payload = _b64decode(envelope["payload"])
        payload_type = envelope["payloadType"]
        signatures = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed envelope: {exc}") from exc
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            public_key.verify(_b64decode(signature["sig"]), message)
        except (InvalidSignature, KeyError, TypeError, ValueError):
            continue
        statement = json.loads(payload)
        if not isinstance(statement, dict):
            raise SignatureError("payload is not a JSON object")
        return statement
    raise SignatureError("no signature verifies with the given public key")


def decode_payload_unverified(envelope: dict[str, Any]) -> dict[str, Any]:
    """For display and cache look-ups only; never for trust decisions."""
    result = json.loads(_b64decode(envelope["payload"]))
    if not isinstance(result, dict):
        raise SignatureError("payload is not a JSON object")
    return result
