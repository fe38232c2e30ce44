"""A digest of a Patch Object's whole content, kept in its metadata.

The reader checks every offset, size and index, but a flipped bit inside code or data bytes is
still a well-formed PO: it would load, link, and crash the target. The digest covers every
byte the model holds, so such damage is a format error before anything reaches a process.
"""

from __future__ import annotations

import dataclasses
import hashlib

from katana.po.model import PatchObject


def content_digest(po: PatchObject) -> str:
    """sha256 over the sections, the symbols and the metadata (but its own digest field)."""
    h = hashlib.sha256()
    # repr of these dataclasses (str, int, bool, bytes, lists, dicts of them) is deterministic
    h.update(repr(dataclasses.replace(po.meta, digest="")).encode())
    h.update(repr(po.sections).encode())
    h.update(repr(po.symbols).encode())
    if po.meta.cfi:  # a field added later: absent, the digest is what it always was
        h.update(repr(sorted(po.meta.cfi.items())).encode())
    if po.meta.target is not None:  # also later: a program's PO keeps the digest it had
        h.update(repr(po.meta.target).encode())
    return h.hexdigest()
