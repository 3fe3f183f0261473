"""The public keys a lake root accepts signatures from.

A signature proves only who signed; which signers count is a decision, and it is taken
once, explicitly, never by finding a key next to the data. The first run in a root
records its signing key's public key in ``receipts/trusted-keys.pem`` (a PEM bundle a
user can read, diff and commit). From then on a run refuses to sign with any other key,
verification accepts only these keys (or the one given with ``--pubkey``), and adding a
key is an act of its own: ``tracelake keygen --rotate`` or ``tracelake receipts trust``.
Old keys stay, so runs signed before a rotation still verify.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pipeline.core.errors import SignatureError, TracelakeError
from pipeline.core.signing import generate_key, key_id, load_key, load_public_key, public_pem
from pipeline.core.store import LakeLayout, atomic_write_text

_PEM_BLOCK = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----", re.DOTALL
)
_HEADER = (
    "# Public keys whose signatures this tracelake root accepts (receipts verify, cache reuse).\n"
    "# Add one with `tracelake receipts trust PEM` or `tracelake keygen --rotate`; remove one\n"
    "# by deleting its block. Text outside the PEM blocks is ignored.\n"
)


class UntrustedKey(TracelakeError):
    """A run's signing key is not among the root's trusted keys."""


@dataclass(frozen=True)
class TrustedKeys:
    keys: tuple[Ed25519PublicKey, ...]
    source: str  # where they came from, for messages

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, Ed25519PublicKey) and key_id(key) in self.ids


def parse_bundle(data: bytes, source: str) -> list[Ed25519PublicKey]:
    keys = []
    for index, block in enumerate(_PEM_BLOCK.findall(data), start=1):
        try:
            keys.append(load_public_key(block + b"\n"))
        except SignatureError as exc:
            raise SignatureError(f"{source}: key #{index}: {exc}") from exc
    return keys


def load_trusted(layout: LakeLayout) -> TrustedKeys:
    """The root's trusted keys; none when the file does not exist (nothing verifies)."""
    path = layout.trusted_keys
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return TrustedKeys((), f"{path} (missing)")
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror}") from exc
    return TrustedKeys(tuple(parse_bundle(data, str(path))), str(path))


def pinned(pubkey_file: Path) -> TrustedKeys:
    """Only the key(s) in ``pubkey_file`` (``--pubkey``): for a third party that got the
    key out of band and must not trust what the root says."""
    try:
        data = pubkey_file.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {pubkey_file}: {exc.strerror}") from exc
    keys = parse_bundle(data, str(pubkey_file))
    if not keys:
        raise SignatureError(f"{pubkey_file} holds no PEM public key")
    return TrustedKeys(tuple(keys), str(pubkey_file))


def trust(layout: LakeLayout, public_key: Ed25519PublicKey, why: str) -> bool:
    """Add ``public_key`` to the root's trusted keys; False when it already was."""
    path = layout.trusted_keys
    current = load_trusted(layout)
    if public_key in current:
        return False
    existing = path.read_text() if path.exists() else _HEADER
    if not existing.endswith("\n"):
        existing += "\n"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    block = f"# keyid {key_id(public_key)} (added {stamp}: {why})\n{public_pem(public_key)}"
    atomic_write_text(path, existing + block)
    return True


def ensure_trusted_signer(layout: LakeLayout, public_key: Ed25519PublicKey) -> bool:
    """The first run in a root trusts its key (True); later runs must use a trusted key."""
    current = load_trusted(layout)
    if public_key in current:
        return False
    if current.keys or layout.trusted_keys.exists():
        raise UntrustedKey(
            f"the signing key {key_id(public_key)[:16]} is not trusted by this root "
            f"({layout.trusted_keys}); to switch keys run `tracelake keygen --rotate --root "
            f"{layout.root}`, or trust this key with `tracelake receipts trust PEM --root "
            f"{layout.root}` (PEM from `tracelake receipts pubkey`)"
        )
    return trust(layout, public_key, "first run in this root")


def rotate_key(path: Path, layout: LakeLayout) -> tuple[Ed25519PublicKey, Path | None]:
    """Replace the signing key at ``path`` with a new one trusted in ``layout``'s root.

    Nothing is lost on the way: the trusted keys are read (and must parse) first, the new
    key is made aside and trusted before it takes the old one's place, and the old key
    is kept beside it as ``<name>.<keyid>.retired`` (delete it once nothing needs it).
    Returns the new public key and where the old key went.
    """
    load_trusted(layout)  # a malformed file stops here, before anything changes
    staged = path.with_name(f".tmp-{path.name}-new")
    generate_key(staged, overwrite=True)
    try:
        new = load_key(staged).public_key()
        trust(layout, new, "rotated in with `tracelake keygen --rotate`")
        retired = None
        if path.exists():
            old_id = key_id(load_key(path).public_key())[:16]
            retired = path.with_name(f"{path.name}.{old_id}.retired")
            if not retired.exists():
                os.link(path, retired)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return new, retired
