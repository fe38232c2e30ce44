"""Records of applied patches, kept inside the target itself.

Each patch region starts with a header and a JSON record of what was done (sites overwritten with
their original bytes, addresses of new code and data, build-ids). Keeping it in the target means
``status``, ``revert`` and the next stacked patch work from any shell, need no state file, and the
record dies with the process. Reading records needs no ptrace stop: ``/proc/PID/maps`` names the
anonymous mappings, the first bytes of each say whether it is ours.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from katana.errors import TargetError

MAGIC = b"KATANA\x00\x01"
# A reverted patch leaves its record behind (its code is unmapped), under another magic: so that
# `status` can say who reverted what, while every reader of applied patches, old katanas
# included, sees no patch there.
REVERTED_MAGIC = b"KATREV\x00\x01"
# magic, JSON length, audit JSON length. The audit (who applied it) came later, in its own JSON
# after the record's, its length in a field that used to be 0: a katana that predates it reads
# the record as before, and a record without an audit reads as one whose audit is unknown.
HEADER = struct.Struct("<8sII")


def key(name: str, file: str | None) -> str:
    """How a record names a symbol: ``store.c::lookup`` for a local, ``::main`` for a global."""
    return f"{file or ''}::{name}"


@dataclass
class Site:
    """Bytes katana overwrote in the target, with what was there before."""

    address: int
    original: bytes
    new: bytes

    def to_json(self) -> dict:
        return {"address": self.address, "original": self.original.hex(), "new": self.new.hex()}

    @classmethod
    def from_json(cls, d: dict) -> Site:
        return cls(int(d["address"]), bytes.fromhex(d["original"]), bytes.fromhex(d["new"]))


@dataclass
class Audit:
    """Who applied a patch, when, from which file, and who signed it (docs/configuration.md)."""

    uid: int
    user: str
    time: str  # UTC, ISO 8601
    po_path: str
    po_sha256: str
    signer: str  # key id, or "unsigned"
    trusted: bool  # the signer's key was one of trustedKeys

    @classmethod
    def from_json(cls, d: dict) -> Audit:
        return cls(int(d["uid"]), str(d["user"]), str(d["time"]), str(d["po_path"]),
                   str(d["po_sha256"]), str(d["signer"]), bool(d["trusted"]))


@dataclass
class Record:
    program: str
    from_label: str
    to_label: str
    from_build_id: str
    to_build_id: str
    po_sha256: str
    region: tuple[int, int]
    applied_at: float
    functions: dict[str, list[int]] = field(default_factory=dict)  # key -> [address, size]
    symbols: dict[str, int] = field(default_factory=dict)  # TO identities -> address
    sites: list[Site] = field(default_factory=list)  # redirects and re-pointed references
    variables: list[dict] = field(default_factory=list)
    extra_regions: list[tuple[int, int]] = field(default_factory=list)
    # variable key -> [[site, R_X86_64 type, field size, offset in the variable, in code?]]
    refs: dict[str, list[list]] = field(default_factory=dict)
    revertible: bool = True
    # [[runtime address of a code section, its CFI (katana.elf.ehframe)]]: for later unwinds
    cfi: list[list] = field(default_factory=list)
    audit: Audit | None = None  # None: applied by a katana that kept no audit
    reverted: Audit | None = None  # who reverted it (a record under REVERTED_MAGIC only)
    # The object patched: "program" (``program`` is its name), or "library" (``program`` is
    # the library's file name, libkv.so, and ``soname`` its DT_SONAME). Kept in the audit JSON,
    # which a katana that predates libraries never reads: it still reads these records.
    kind: str = "program"
    soname: str | None = None

    def encode(self, magic: bytes = MAGIC) -> bytes:
        body = dict(self.__dict__)
        body["sites"] = [s.to_json() for s in self.sites]
        audit, reverted = body.pop("audit"), body.pop("reverted")
        kind, soname = body.pop("kind"), body.pop("soname")
        raw = json.dumps(body, sort_keys=True).encode()
        extra = b""
        if audit or reverted or kind != "program":
            more = {"apply": audit.__dict__ if audit else None,
                    "revert": reverted.__dict__ if reverted else None}
            if kind != "program":
                more["object"] = {"kind": kind, "soname": soname}
            extra = json.dumps(more, sort_keys=True).encode()
        return HEADER.pack(magic, len(raw), len(extra)) + raw + extra

    @classmethod
    def decode(cls, header: bytes, read_rest, magic: bytes = MAGIC) -> Record | None:
        """A record from a region's first bytes, or None when the region is not katana's (or
        its magic is not ``magic``)."""
        if len(header) < HEADER.size:
            return None
        found, length, audit_length = HEADER.unpack_from(header)
        if found != magic:
            return None
        try:
            body = json.loads(read_rest(HEADER.size, length))
            body["sites"] = [Site.from_json(s) for s in body["sites"]]
            body["region"] = tuple(body["region"])
            body["extra_regions"] = [tuple(r) for r in body.get("extra_regions", [])]
            for name in ("audit", "reverted", "kind", "soname"):  # only in the audit JSON
                body.pop(name, None)
            if audit_length:
                extra = json.loads(read_rest(HEADER.size + length, audit_length))
                for name, key in (("audit", "apply"), ("reverted", "revert")):
                    if extra.get(key) is not None:
                        body[name] = Audit.from_json(extra[key])
                if extra.get("object") is not None:
                    body["kind"] = str(extra["object"]["kind"])
                    body["soname"] = extra["object"].get("soname")
            return cls(**body)
        except (ValueError, KeyError, TypeError) as e:
            raise TargetError(f"a katana record in the target is damaged ({e})") from e


def effective_build_id(records: list[Record], own: str) -> str:
    """The build an object behaves as now: the TO of its newest live patch, else ``own`` (the
    build-id of its file)."""
    return records[-1].to_build_id if records else own


def object_key(record: Record) -> tuple[str, str]:
    """Which object of the process a record patches. A process has one program, whatever name
    its POs gave it (``kvd``, ``build/kvd``); its libraries are told apart by file name."""
    return (record.kind, "" if record.kind == "program" else record.program.rsplit("/", 1)[-1])


def by_object(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    """The records of each patched object, in the order of its first patch, each oldest first."""
    objects: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        objects.setdefault(object_key(r), []).append(r)
    return objects


def _switched_on(mem, record: Record, later: list[Record]) -> bool:
    """Whether the patch took effect: the record is written before the jumps (commit.py), so
    a katana killed in between leaves a record none of whose sites holds its new bytes. A
    site a later patch overwrote counts when that patch found this one's bytes there."""
    if not record.sites:
        return True
    overwritten = {(t.address, t.original) for r in later for t in r.sites}
    for site in record.sites:
        if (site.address, site.new) in overwritten:
            return True
        try:
            mem.seek(site.address)
            if mem.read(len(site.new)) == site.new:
                return True
        except OSError:
            continue
    return False


def read_records(pid: int, maps: list | None = None, magic: bytes = MAGIC) -> list[Record]:
    """Every patch applied to a process, oldest first (``maps``: its mappings, if at hand;
    with REVERTED_MAGIC: every patch reverted, what their records keep)."""
    from katana.target.procfs import check_process, read_maps

    check_process(pid)  # a zombie, a thread id or a kernel thread is named as such
    records = []
    # a record starts the first (read-write) part of an anonymous mapping katana made
    maps = [(m.start, m.end) for m in (read_maps(pid) if maps is None else maps)
            if not m.path and m.writable]
    try:
        mem = open(f"/proc/{pid}/mem", "rb")
    except OSError as e:
        raise TargetError(f"cannot read the memory of process {pid}: {e.strerror}",
                          hint="run as root (or with CAP_SYS_PTRACE)") from e
    with mem:
        for lo, _hi in maps:
            try:
                mem.seek(lo)
                header = mem.read(HEADER.size)
            except OSError:
                continue

            def read_rest(offset: int, length: int, base: int = lo, end: int = _hi) -> bytes:
                # a record lies inside its mapping: a marker that says otherwise is not one of
                # ours (or is damaged), and must not cost a read of gigabytes
                if base + offset + length > end:
                    raise ValueError(f"record at {base:#x} runs past its mapping")
                try:
                    mem.seek(base + offset)
                    return mem.read(length)
                except OSError as e:
                    raise ValueError(f"record at {base:#x} unreadable ({e.strerror})") from e

            record = Record.decode(header, read_rest, magic)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.applied_at)
        if magic != MAGIC:
            return records  # a reverted patch's sites hold their old bytes again
        return [r for i, r in enumerate(records) if _switched_on(mem, r, records[i + 1:])]
