"""The GNU build-id of an ELF file: the identity of one build of a program.

``ld --build-id=sha1`` stores a hash of the linked output in an ``NT_GNU_BUILD_ID`` note. Katana
keys snapshots and patches by it, and at apply time compares it with ``/proc/PID/exe``, so the
reader touches only the program headers and the notes, never symbols or DWARF.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from os import PathLike

from katana.errors import FormatError

# typing.TYPE_CHECKING without importing typing (2 ms at start-up; katana status needs this
# module and nothing else that imports typing)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

_ELF_MAGIC = b"\x7fELF"


def read_build_id(path: str | PathLike[str]) -> str | None:
    """Return the GNU build-id of the ELF file at ``path`` as lowercase hex, or None if it has none.

    Raises FormatError (naming the path) when the file cannot be read or is not ELF.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != _ELF_MAGIC:
                raise FormatError(f"{path}: not an ELF file")
            found = _from_segments(f, head)
            if found is not None:
                return found or None
            from elftools.elf.elffile import ELFFile

            f.seek(0)
            for note in _iter_notes(ELFFile(f)):
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    # pyelftools already renders this note's descriptor as hex
                    return str(note["n_desc"]).lower()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from e
    except ValueError as e:
        raise FormatError(f"{path}: damaged ELF file ({e})") from e
    except Exception as e:
        if type(e).__name__ in ("ELFError", "ELFParseError"):
            raise FormatError(f"{path}: damaged ELF file ({e})") from e
        raise
    return None


NT_GNU_BUILD_ID = 3
PT_NOTE = 4


def _from_segments(f, head: bytes) -> str | None:
    """The build-id from the PT_NOTE segments of a little-endian ELF64 file, read with struct
    (importing pyelftools costs ~40 ms, most of ``katana status``); "" when the file has
    segments but no build-id, None when it has no segments (a relocatable object)."""
    if len(head) < 64 or head[4] != 2 or head[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if not phnum:
        return None
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type != PT_NOTE:
            continue
        offset, = struct.unpack_from("<Q", table, i * phentsize + 8)
        size, = struct.unpack_from("<Q", table, i * phentsize + 32)
        f.seek(offset)
        notes, at = f.read(size), 0
        while at + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, at)
            name_at = at + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            if ntype == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
                return notes[desc_at:desc_at + descsz].hex()
            at = desc_at + ((descsz + 3) & ~3)
    return ""


def _iter_notes(elf: ELFFile) -> Iterator[dict]:
    # A linked file carries the note in a PT_NOTE segment: reading program headers is cheaper than
    # the section table, and still works when section headers were stripped. Relocatable objects
    # have no segments, only SHT_NOTE sections.
    if elf.num_segments():
        for segment in elf.iter_segments("PT_NOTE"):
            yield from segment.iter_notes()
    else:
        for section in elf.iter_sections("SHT_NOTE"):
            yield from section.iter_notes()
