"""Ed25519 signatures of Patch Objects: key files, the detached ``PATCH.sig``, sign and check.

A signature lives next to its PO, in ``PATCH.sig`` (docs/po-format.md, "Signatures"): the PO's
bytes stay exactly what the writer made, so its sha256 (which records and "already applied"
checks use) does not change when it is signed, and a version-1 reader needs nothing new.

``cryptography`` is imported only inside the functions that sign or check: every katana command
imports this module's callers, and most of them never touch a key.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from katana.errors import KeyFileError, SignatureError

SIG_SUFFIX = ".sig"
SIG_FORMAT = 1
ALGORITHM = "ed25519"
# Domain separation: a signature made for a PO can never be replayed as one over something else
# that the same key signs (the message is this prefix, then every byte of the PO).
_DOMAIN = b"katana-po-signature-v1\x00"
SHORT_ID = 16  # hex digits of a key id shown to people (64 bits: enough to tell keys apart)


def key_id(raw_public: bytes) -> str:
    """A key's fingerprint: sha256 of its 32 raw public-key bytes, in hex."""
    return hashlib.sha256(raw_public).hexdigest()


def short_id(full: str) -> str:
    return full[:SHORT_ID]


def sig_path(po_path: str | Path) -> Path:
    """Where the signature of ``po_path`` lives: ``PATCH.sig`` (``x.po`` -> ``x.po.sig``)."""
    p = Path(po_path)
    return p.with_name(p.name + SIG_SUFFIX)


@dataclass(frozen=True)
class Signature:
    """The content of a ``PATCH.sig``: which key signed which PO bytes."""

    key_id: str
    public_key: bytes  # raw 32 bytes; key_id is its sha256, so the file cannot lie about it
    po_sha256: str
    signature: bytes

    def encode(self) -> bytes:
        body = {"katana_signature": SIG_FORMAT, "algorithm": ALGORITHM, "key_id": self.key_id,
                "public_key": self.public_key.hex(), "po_sha256": self.po_sha256,
                "signature": self.signature.hex()}
        return (json.dumps(body, indent=1) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes, name: str) -> Signature:
        def bad(why: str) -> SignatureError:
            return SignatureError(f"{name}: not a katana signature ({why})",
                                  hint="sign the patch again: katana sign PATCH --key KEY")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise bad("not JSON") from None
        if not isinstance(body, dict) or body.get("katana_signature") != SIG_FORMAT:
            raise bad(f"format {body.get('katana_signature') if isinstance(body, dict) else '?'}")
        if body.get("algorithm") != ALGORITHM:
            raise bad(f"algorithm {body.get('algorithm')!r}, expected {ALGORITHM}")
        try:
            sig = cls(str(body["key_id"]), bytes.fromhex(body["public_key"]),
                      str(body["po_sha256"]), bytes.fromhex(body["signature"]))
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"field {e}") from None
        if len(sig.public_key) != 32 or len(sig.signature) != 64:
            raise bad("wrong key or signature length")
        if key_id(sig.public_key) != sig.key_id:
            raise bad("key_id is not the public key's fingerprint")
        return sig


# --- key files --------------------------------------------------------------------------------

def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist",
                           hint="make a key pair with: katana keygen NAME") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a directory, not a key file") from None
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None


def check_private_mode(path: Path) -> None:
    """Refuse a private key others may read or write, as ssh does: it may have leaked already,
    and a signature made with it proves nothing about who made it."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(f"private key {path} is accessible by others (mode {mode:04o})",
                           hint=f"chmod 600 {path} (or make a new key pair if it may have "
                                "leaked)")


def load_private_key(path: str | Path):
    """The Ed25519 private key of a ``NAME.key`` file (PKCS#8 PEM, unencrypted)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    raw = _read_key_file(path, "private key")
    try:
        key = load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        hint = "that is a public key: give NAME.key" if b"PUBLIC KEY" in raw else \
            "give the NAME.key that katana keygen wrote"
        raise KeyFileError(f"{path} is not an unencrypted PEM private key",
                           hint=hint) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    check_private_mode(path)
    return key


def load_public_key(path: str | Path) -> bytes:
    """The 32 raw bytes of the Ed25519 public key in a ``NAME.pub`` file (PEM)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )

    path = Path(path)
    raw = _read_key_file(path, "public key")
    try:
        key = load_pem_public_key(raw)
    except (ValueError, TypeError):
        hint = "that is a private key: give NAME.pub" if b"PRIVATE KEY" in raw else \
            "give the NAME.pub that katana keygen wrote"
        raise KeyFileError(f"{path} is not a PEM public key", hint=hint) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole, with ``mode`` from its first instant, never replacing a file.

    The bytes go to a temporary file opened with O_EXCL and ``mode`` (the umask can only take
    bits away), which is then hard-linked to its name: link(2) fails if the name exists, so an
    existing key is never overwritten, and nobody ever sees a half-written key.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def generate_key_pair(name: str | Path) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` (0644); return both paths and the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    base = Path(name)
    private, public = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for path in (private, public):
        if os.path.lexists(path):
            raise KeyFileError(f"{path} exists already; katana keygen never replaces a key",
                               hint="choose another NAME, or remove the old pair first")
    if not base.parent.is_dir():
        raise KeyFileError(f"directory {base.parent} does not exist")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    pub = key.public_key()
    try:
        _create_exclusive(private, pem, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot write {private}: {e.strerror}; nothing replaced") from None
    try:
        _create_exclusive(public, pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
                          0o644)
    except OSError as e:
        os.unlink(private)  # half a pair is no use: leave nothing behind
        raise KeyFileError(f"cannot write {public}: {e.strerror}; nothing replaced") from None
    return private, public, key_id(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))


# --- signing and checking ---------------------------------------------------------------------

def sign_bytes(data: bytes, key_path: str | Path) -> Signature:
    """Sign every byte of a PO with the private key in ``key_path``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = load_private_key(key_path)
    raw_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Signature(key_id(raw_public), raw_public, hashlib.sha256(data).hexdigest(),
                     key.sign(_DOMAIN + data))


def write_signature(po_path: str | Path, signature: Signature) -> Path:
    """Write ``PATCH.sig`` next to the PO, atomically (a reader sees the old one or the new)."""
    import tempfile

    target = sig_path(po_path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(signature.encode())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def read_signature(po_path: str | Path) -> Signature | None:
    """The signature next to a PO, or None when it has none."""
    path = sig_path(po_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SignatureError(f"cannot read the signature {path}: {e.strerror}") from None
    return Signature.decode(raw, str(path))


def signature_valid(signature: Signature, data: bytes) -> bool:
    """Whether ``signature`` was made over exactly ``data`` by the key it names."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if hashlib.sha256(data).hexdigest() != signature.po_sha256:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(signature.public_key).verify(signature.signature,
                                                                        _DOMAIN + data)
    except InvalidSignature:
        return False
    return True
