"""x86-64 relocation types, as the psABI numbers and names them (table "Relocation Types").

One place for the numbers the generator compares, the loader applies and the re-aiming of
references reads; ``katana.po.elfdefs`` keeps the full table (names, field sizes) a PO reader
validates against.
"""

from __future__ import annotations

R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_GOT32 = 3
R_X86_64_PLT32 = 4
R_X86_64_GOTPCREL = 9
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_GOTTPOFF = 22  # initial exec: a GOT slot holds the thread-pointer offset
R_X86_64_TPOFF32 = 23  # local exec: the field holds the thread-pointer offset
R_X86_64_PC64 = 24
# general and local dynamic, and TLS descriptors: the variable's address comes from a call
# (__tls_get_addr, or the descriptor's resolver) with the module id the dynamic linker chose
R_X86_64_TLSGD = 19
R_X86_64_TLSLD = 20
R_X86_64_DTPOFF32 = 21
R_X86_64_GOTPC32_TLSDESC = 34
R_X86_64_TLSDESC_CALL = 35
TLS_DYNAMIC = {R_X86_64_TLSGD, R_X86_64_TLSLD, R_X86_64_DTPOFF32, R_X86_64_GOTPC32_TLSDESC,
               R_X86_64_TLSDESC_CALL}
# what katana links: a tls_index pair {module id, offset} for __tls_get_addr, and the offset of
# a variable in its module's block; TLS descriptors (-mtls-dialect=gnu2) it does not
TLS_INDEX = {R_X86_64_TLSGD, R_X86_64_TLSLD}
TLS_DESCRIPTORS = TLS_DYNAMIC - TLS_INDEX - {R_X86_64_DTPOFF32}
R_X86_64_GOTPCRELX = 41
R_X86_64_REX_GOTPCRELX = 42

# fields the CPU reads relative to the end of their instruction
PC_RELATIVE = {R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_GOTPCREL, R_X86_64_GOTPCRELX,
               R_X86_64_REX_GOTPCRELX}


def field_size(rtype: int) -> int:
    """Bytes of the relocated field: 8 for the 64-bit types, 4 for the others katana handles."""
    return 8 if rtype in (R_X86_64_64, R_X86_64_PC64) else 4
