"""The ELF vocabulary of a Patch Object: constants of the System V gABI and the x86-64 psABI,
the table layouts ``struct`` packs, the PO's own section kinds and names, and every R_X86_64
relocation type with the size of the field it writes.

The writer builds a PO with these and the reader checks one against them; keeping a single copy
means the two cannot drift apart on a number.
"""

from __future__ import annotations

import struct
import typing

# -- System V gABI and x86-64 psABI ------------------------------------------------------------

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
ET_REL = 1
EM_X86_64 = 62

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_NAMES = {SHT_NULL: "SHT_NULL", SHT_PROGBITS: "SHT_PROGBITS", SHT_SYMTAB: "SHT_SYMTAB",
             SHT_STRTAB: "SHT_STRTAB", SHT_RELA: "SHT_RELA", SHT_NOBITS: "SHT_NOBITS"}

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_INFO_LINK = 0x40

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00  # from here on section indices are special (and e_shnum is extended)

STB_LOCAL = 0
STB_GLOBAL = 1
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
SYMBOL_KINDS = {STT_FUNC: "func", STT_OBJECT: "object", STT_NOTYPE: "notype",
                STT_SECTION: "section"}
STT_BY_KIND = {kind: stt for stt, kind in SYMBOL_KINDS.items()}

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
RELA = struct.Struct("<QQq")  # Elf64_Rela: r_offset, r_info = sym << 32 | type, r_addend

# Section kind of the model <-> (sh_type, sh_flags): the flags a linker would give such a section
SECTION_KINDS = {
    "text": (SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR),
    "rodata": (SHT_PROGBITS, SHF_ALLOC),
    "data": (SHT_PROGBITS, SHF_ALLOC | SHF_WRITE),
    "bss": (SHT_NOBITS, SHF_ALLOC | SHF_WRITE),
}
KIND_BY_FLAGS = {spec: kind for kind, spec in SECTION_KINDS.items()}

# The PO's own sections (flags 0, not loaded as code or data): the metadata JSON, and the byte
# strings it points into (docs/po-format.md, section 6)
META_SECTION = ".katana.meta"
OLDCODE_SECTION = ".katana.oldcode"


# -- relocations ---------------------------------------------------------------------------------


class RelocType(typing.NamedTuple):
    """One relocation type of the psABI, as the reader checks and the engine applies it."""

    name: str
    size: int  # bytes of the field the relocation writes at r_offset
    static: bool  # may appear in a relocatable file (False: made by the static linker only)


# Every relocation type of the x86-64 psABI (1.0, plus the APX CODE_4/5/6 types binutils 2.43
# knows). 39 and 40 were R_X86_64_PC32_BND/PLT32_BND (MPX), withdrawn: they stay unknown.
RELOC_TYPES: dict[int, RelocType] = {
    0: RelocType("R_X86_64_NONE", 0, True),
    1: RelocType("R_X86_64_64", 8, True),
    2: RelocType("R_X86_64_PC32", 4, True),
    3: RelocType("R_X86_64_GOT32", 4, True),
    4: RelocType("R_X86_64_PLT32", 4, True),
    5: RelocType("R_X86_64_COPY", 0, False),
    6: RelocType("R_X86_64_GLOB_DAT", 8, False),
    7: RelocType("R_X86_64_JUMP_SLOT", 8, False),
    8: RelocType("R_X86_64_RELATIVE", 8, False),
    9: RelocType("R_X86_64_GOTPCREL", 4, True),
    10: RelocType("R_X86_64_32", 4, True),
    11: RelocType("R_X86_64_32S", 4, True),
    12: RelocType("R_X86_64_16", 2, True),
    13: RelocType("R_X86_64_PC16", 2, True),
    14: RelocType("R_X86_64_8", 1, True),
    15: RelocType("R_X86_64_PC8", 1, True),
    16: RelocType("R_X86_64_DTPMOD64", 8, False),
    17: RelocType("R_X86_64_DTPOFF64", 8, True),  # GCC emits it in .debug_info for TLS
    18: RelocType("R_X86_64_TPOFF64", 8, True),  # as `.quad x@tpoff` makes
    19: RelocType("R_X86_64_TLSGD", 4, True),
    20: RelocType("R_X86_64_TLSLD", 4, True),
    21: RelocType("R_X86_64_DTPOFF32", 4, True),
    22: RelocType("R_X86_64_GOTTPOFF", 4, True),
    23: RelocType("R_X86_64_TPOFF32", 4, True),
    24: RelocType("R_X86_64_PC64", 8, True),
    25: RelocType("R_X86_64_GOTOFF64", 8, True),
    26: RelocType("R_X86_64_GOTPC32", 4, True),
    27: RelocType("R_X86_64_GOT64", 8, True),
    28: RelocType("R_X86_64_GOTPCREL64", 8, True),
    29: RelocType("R_X86_64_GOTPC64", 8, True),
    30: RelocType("R_X86_64_GOTPLT64", 8, True),
    31: RelocType("R_X86_64_PLTOFF64", 8, True),
    32: RelocType("R_X86_64_SIZE32", 4, True),
    33: RelocType("R_X86_64_SIZE64", 8, True),
    34: RelocType("R_X86_64_GOTPC32_TLSDESC", 4, True),
    35: RelocType("R_X86_64_TLSDESC_CALL", 0, True),  # a marker on the call: writes nothing
    36: RelocType("R_X86_64_TLSDESC", 16, False),
    37: RelocType("R_X86_64_IRELATIVE", 8, False),
    38: RelocType("R_X86_64_RELATIVE64", 8, False),
    41: RelocType("R_X86_64_GOTPCRELX", 4, True),
    42: RelocType("R_X86_64_REX_GOTPCRELX", 4, True),
    43: RelocType("R_X86_64_CODE_4_GOTPCRELX", 4, True),
    44: RelocType("R_X86_64_CODE_4_GOTTPOFF", 4, True),
    45: RelocType("R_X86_64_CODE_4_GOTPC32_TLSDESC", 4, True),
    46: RelocType("R_X86_64_CODE_5_GOTPCRELX", 4, True),
    47: RelocType("R_X86_64_CODE_5_GOTTPOFF", 4, True),
    48: RelocType("R_X86_64_CODE_5_GOTPC32_TLSDESC", 4, True),
    49: RelocType("R_X86_64_CODE_6_GOTPCRELX", 4, True),
    50: RelocType("R_X86_64_CODE_6_GOTTPOFF", 4, True),
    51: RelocType("R_X86_64_CODE_6_GOTPC32_TLSDESC", 4, True),
}
RELOC_BY_NAME = {t.name: number for number, t in RELOC_TYPES.items()}
