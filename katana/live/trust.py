"""The signature policy of ``katana apply``: ``trustedKeys`` and ``requireSignature``, enforced.

``check_policy`` runs before anything looks at, attaches to or stops a process: a refused PO
never reaches one. It returns a ``Trust`` naming the sha256 of the bytes it checked; the apply
confirms that the bytes it then loads are those (the file may be replaced in between).

Policy (docs/configuration.md): unsigned is refused under ``requireSignature``; a signature that
does not match the PO's bytes is refused always (nobody signs a file in order to have it changed
afterwards); a valid signature by a key outside ``trustedKeys`` is refused under
``requireSignature`` and warned about otherwise.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from katana.errors import KeyFileError, SignatureError
from katana.po.reader import read_po_bytes
from katana.po.signature import (
    Signature,
    key_id,
    load_public_key,
    read_signature,
    short_id,
    sig_path,
    signature_valid,
)

Warn = Callable[[str], None]


def _stderr(text: str) -> None:
    print(f"katana: warning: {text}", file=sys.stderr)


@dataclass(frozen=True)
class Trust:
    """What the policy found out about one PO file."""

    po_sha256: str  # of the bytes that were checked
    signer: str | None  # key id; None: unsigned
    trusted: bool
    trusted_key: str | None = None  # the trustedKeys file whose key signed it

    def label(self) -> str:
        if self.signer is None:
            return "unsigned"
        return f"key {short_id(self.signer)} ({'trusted' if self.trusted else 'not trusted'})"

    def confirm(self, po_path: Path, sha256: str) -> None:
        """The PO that was loaded is the one that was checked."""
        if sha256 != self.po_sha256:
            raise SignatureError(f"{po_path} changed while katana was reading it; nothing was "
                                 "applied", hint="try again once the file is written whole")


def _resolve(entry: str, source: str | None) -> Path:
    """A trustedKeys entry, ``~`` expanded; relative to the file that listed it."""
    path = Path(entry).expanduser()
    if not path.is_absolute() and source and source != "default":
        path = Path(source).parent / path
    return path


def trusted_keys(config, warn: Warn = _stderr) -> dict[str, Path]:
    """key id -> file, for every key of ``trustedKeys``."""
    keys: dict[str, Path] = {}
    source = config.sources.get("trustedKeys")
    for entry in config.trusted_keys:
        path = _resolve(entry, source)
        try:
            keys[key_id(load_public_key(path))] = path
        except KeyFileError as e:
            raise KeyFileError(f"trustedKeys (set in {source}): {e.message}", hint=e.hint) \
                from None
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o022:  # whoever can write it can make their own key trusted
            warn(f"trusted key {path} is writable by others (mode {mode:04o}); chmod 644 {path}")
    return keys


def _names(keys: dict[str, Path]) -> str:
    if not keys:
        return "no trustedKeys are configured"
    return "trustedKeys: " + ", ".join(f"{p} = {short_id(k)}" for k, p in keys.items())


def _check_signed(po_path: Path, data: bytes, sig: Signature, config, warn: Warn) -> Trust:
    if not signature_valid(sig, data):
        raise SignatureError(
            f"{po_path} changed after it was signed by key {short_id(sig.key_id)}: "
            f"{sig_path(po_path).name} does not match its bytes; refused",
            hint="copy or regenerate the patch again, then sign it again")
    keys = trusted_keys(config, warn) if config.trusted_keys else {}
    sha = sig.po_sha256
    if sig.key_id in keys:
        return Trust(sha, sig.key_id, True, str(keys[sig.key_id]))
    if config.require_signature:
        raise SignatureError(f"{po_path} is signed by key {short_id(sig.key_id)}, which is not "
                             f"trusted ({_names(keys)}); refused",
                             hint="sign it with a trusted key, or add its .pub to trustedKeys")
    if keys:
        warn(f"{po_path} is signed by key {short_id(sig.key_id)}, which is not trusted; applied "
             "because requireSignature is off")
    return Trust(sha, sig.key_id, False)


def check_policy(po_path: Path, config, warn: Warn = _stderr) -> Trust:
    """Apply the signature policy to a PO file; raise SignatureError if it is refused."""
    import hashlib

    data = read_po_bytes(po_path)
    sig = read_signature(po_path)
    if sig is not None:
        return _check_signed(po_path, data, sig, config, warn)
    if config.require_signature:
        raise SignatureError(f"{po_path} is not signed (no {sig_path(po_path).name}) and "
                             "requireSignature is on; refused",
                             hint="sign it: katana sign PATCH --key NAME.key, with a key whose "
                                  ".pub is in trustedKeys")
    return Trust(hashlib.sha256(data).hexdigest(), None, False)


def describe(po_path: Path, config, extra_keys: dict[str, Path] | None = None,
             warn: Warn = _stderr) -> dict[str, object]:
    """What ``list`` and ``verify`` say about a PO's signature, without a policy: ``signed``,
    ``key_id``, ``valid``, ``trusted``, ``trusted_key`` (the file), ``error``."""
    out: dict[str, object] = {"signed": False, "key_id": None, "valid": None, "trusted": None,
                              "trusted_key": None, "error": None}
    try:
        sig = read_signature(po_path)
    except SignatureError as e:
        return {**out, "signed": True, "valid": False, "error": e.message}
    if sig is None:
        return out
    out.update(signed=True, key_id=sig.key_id,
               valid=signature_valid(sig, read_po_bytes(po_path)))
    keys = dict(extra_keys) if extra_keys is not None else trusted_keys(config, warn)
    match = keys.get(sig.key_id)
    out.update(trusted=bool(out["valid"]) and match is not None,
               trusted_key=str(match) if match else None)
    return out


def describe_text(info: dict[str, object]) -> str:
    """One line for ``katana list``."""
    if not info["signed"]:
        return "unsigned"
    if info["error"]:
        return f"DAMAGED: {info['error']}"
    key = f"key {short_id(str(info['key_id']))}"
    if not info["valid"]:
        return f"{key}, INVALID: the patch changed after it was signed"
    if info["trusted"]:
        return f"{key}, valid, trusted ({info['trusted_key']})"
    return f"{key}, valid, not trusted (not in trustedKeys)"
