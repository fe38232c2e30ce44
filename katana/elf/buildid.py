"""The GNU build-id of an ELF file: the identity of one build of a program.

``ld --build-id=sha1`` stores a hash of the linked output in an ``NT_GNU_BUILD_ID`` note. Katana
keys snapshots and patches by it, and at apply time compares it with ``/proc/PID/exe``, so the
reader touches only the program headers and the notes, never symbols or DWARF.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from katana.errors import FormatError

_ELF_MAGIC = b"\x7fELF"


def read_build_id(path: str | PathLike[str]) -> str | None:
    """Return the GNU build-id of the ELF file at ``path`` as lowercase hex, or None if it has none.

    Raises FormatError (naming the path) when the file cannot be read or is not ELF.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != _ELF_MAGIC:
                raise FormatError(f"{path}: not an ELF file")
            f.seek(0)
            for note in _iter_notes(ELFFile(f)):
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    # pyelftools already renders this note's descriptor as hex
                    return str(note["n_desc"]).lower()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from e
    except (ELFError, ValueError) as e:
        raise FormatError(f"{path}: damaged ELF file ({e})") from e
    return None


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
