"""OpenSSF model signing (the ``model-signing`` package) for model artifacts.

A third party who loads an adapter should be able to check it with the ecosystem's own
tool, without tracelake: ``model_signing verify key ADAPTER --signature ADAPTER.sig
--public_key ADAPTER.pub.pem``. model-signing's key method takes elliptic-curve keys
only, and the lake signs with Ed25519. So the model-signing key is a P-256 key derived
from the lake's signing key (HKDF-SHA256 under a fixed label): one secret to keep, the
same custody. ``tracelake receipts pubkey --model-signing`` prints its public half.

The signature (a Sigstore bundle, as model-signing writes it) sits beside the exported
copy of the artifact, and the run statement signs both like any export file.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.core.errors import IntegrityError

LABEL = b"tracelake openssf-model-signing p256 v1"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def model_signing_key(key: Ed25519PrivateKey) -> ec.EllipticCurvePrivateKey:
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    # 48 bytes reduced mod n-1: the bias is below 2^-128 (FIPS 186-5 A.2.1).
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=LABEL).derive(raw)
    return ec.derive_private_key(int.from_bytes(okm, "big") % (P256_ORDER - 1) + 1, ec.SECP256R1())


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return model_signing_key(key).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_model(folder: Path, signature: Path, key: Ed25519PrivateKey) -> None:
    """Writes model-signing's signature of every file in ``folder`` to ``signature``."""
    from model_signing import hashing, signing

    sign_config: Any = signing.Config  # untyped in the package
    hash_config: Any = hashing.Config
    # model-signing reads the key from a file: it is written encrypted under a password
    # that lives only in this process, so a file a killed run leaves behind is useless.
    password = secrets.token_bytes(32)  # model-signing hands it to cryptography, which takes bytes
    private = model_signing_key(key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password))
    with tempfile.TemporaryDirectory(prefix="tracelake-model-signing-") as scratch:
        key_file = Path(scratch) / "key.pem"
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private)
        (sign_config().use_elliptic_key_signer(private_key=key_file, password=password)
         .set_hashing_config(hash_config().set_ignored_paths(paths=[], ignore_git_paths=False))
         .sign(folder, signature))


def verify_model(folder: Path, signature: Path, public_key: Path) -> None:
    """model-signing's own verification; raises IntegrityError on any mismatch."""
    from model_signing import hashing, verifying

    verify_config: Any = verifying.Config  # untyped in the package
    hash_config: Any = hashing.Config
    try:
        (verify_config().use_elliptic_key_verifier(public_key=public_key)
         .set_hashing_config(hash_config().set_ignored_paths(paths=[], ignore_git_paths=False))
         .verify(folder, signature))
    except ValueError as exc:
        raise IntegrityError(f"model signature of {folder}: {exc}") from None
