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
HEADER = struct.Struct("<8sII")  # magic, JSON length, reserved


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

    def encode(self) -> bytes:
        body = dict(self.__dict__)
        body["sites"] = [s.to_json() for s in self.sites]
        raw = json.dumps(body, sort_keys=True).encode()
        return HEADER.pack(MAGIC, len(raw), 0) + raw

    @classmethod
    def decode(cls, header: bytes, read_rest) -> Record | None:
        """A record from a region's first bytes, or None when the region is not katana's."""
        if len(header) < HEADER.size:
            return None
        magic, length, _ = HEADER.unpack_from(header)
        if magic != MAGIC:
            return None
        try:
            body = json.loads(read_rest(HEADER.size, length))
            body["sites"] = [Site.from_json(s) for s in body["sites"]]
            body["region"] = tuple(body["region"])
            body["extra_regions"] = [tuple(r) for r in body.get("extra_regions", [])]
            return cls(**body)
        except (ValueError, KeyError, TypeError) as e:
            raise TargetError(f"a katana record in the target is damaged ({e})") from e


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


def read_records(pid: int, maps: list | None = None) -> list[Record]:
    """Every patch applied to a process, oldest first (``maps``: its mappings, if at hand)."""
    from katana.engine.procfs import check_process, read_maps

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

            def read_rest(offset: int, length: int, base: int = lo) -> bytes:
                mem.seek(base + offset)
                return mem.read(length)

            record = Record.decode(header, read_rest)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.applied_at)
        return [r for i, r in enumerate(records) if _switched_on(mem, r, records[i + 1:])]
