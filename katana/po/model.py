"""The in-memory model of a Patch Object (PO).

This is the contract between the generator (which fills it), the PO writer/reader (which turn it
into an ELF file and back, see ``docs/po-format.md``) and the apply engine (which loads it).

A PO is a small relocatable program: ``sections`` hold the new and changed code and data,
``relocs`` inside each section say how to link them, and ``symbols`` are either defined by the PO
(``section`` is an index) or external (``section`` is None): an existing function or variable of the
running program, found by identity (``name`` plus ``object`` for a local symbol), or a symbol of a
loaded shared library (``object`` None, not found in the program). ``meta`` says what the patch
does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FORMAT_VERSION = 1

SectionKind = Literal["text", "rodata", "data", "bss"]
SymbolKind = Literal["func", "object", "notype", "section"]


@dataclass
class Reloc:
    offset: int  # where the field is, from the start of its section
    type: int  # R_X86_64_* number, as in the x86-64 psABI
    symbol: int  # index into PatchObject.symbols
    addend: int


@dataclass
class Section:
    name: str  # ".text.handle_get", ".rodata.str1.1", ...: the name it had in the new object
    kind: SectionKind
    data: bytes  # b"" for bss
    size: int  # len(data), except for bss
    align: int
    relocs: list[Reloc] = field(default_factory=list)


@dataclass
class Symbol:
    name: str
    kind: SymbolKind
    section: int | None  # index into PatchObject.sections; None: external, resolved at apply
    value: int = 0  # offset in its section (defined symbols only)
    size: int = 0
    local: bool = False  # a local (static) symbol of its object, not a global one
    # STT_FILE name (the source file's basename, as the object's and the executable's .symtab spell
    # it) of the object that owns a local symbol: how an executable's locals are told apart
    file: str | None = None
    new_name: str | None = None  # the name in the TO version, where it differs (static locals)
    # an external function whose *address* is taken (not called): it must resolve to the entry
    # in the executable, which function pointers the program holds already point at, so that
    # pointer comparisons keep working and no pointer into a patch outlives a revert
    entry: bool = False


@dataclass
class FieldOp:
    """One step of a type transformation: how a part of the old value becomes part of the new.

    kind "copy": copy ``size`` bytes from ``src`` (old offset) to ``dst`` (new offset).
    kind "struct": the sub-object at ``src`` is transformed by ``types[type]`` into ``dst``.
    kind "array": ``count`` elements, old stride ``src_stride``, new stride ``dst_stride``, each
                  transformed by ``types[type]`` (or copied, ``size`` bytes each, when type is
                  None).
    kind "pointer": an 8-byte pointer at ``src``; its pointee (of old type ``types[type]``) moves
                    to new storage, transformed, and the pointer at ``dst`` points to it.
    Bytes of the new value that no op writes are zero.
    """

    kind: Literal["copy", "struct", "array", "pointer"]
    src: int
    dst: int
    size: int = 0
    type: str | None = None
    count: int = 0
    src_stride: int = 0
    dst_stride: int = 0


@dataclass
class TypeTransform:
    name: str  # "struct entry" as C spells it
    old_size: int
    new_size: int
    ops: list[FieldOp] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)  # human-readable mapping, for `katana list`


@dataclass
class FunctionPatch:
    name: str  # name in the TO version
    object: str  # object path, relative to the tree
    status: Literal["changed", "added"]
    symbol: int  # PO symbol of the new code
    old_size: int  # 0 when added
    new_size: int
    local: bool = False
    file: str | None = None  # STT_FILE name, for a local function
    old_name: str | None = None  # name in the FROM version where it differs (clone numbers)
    old_code: bytes = b""  # the FROM executable's bytes of the function (verified before redirect)


@dataclass
class VariablePatch:
    name: str
    object: str
    # added: new storage with the initial value; transformed: live value moved into new storage by
    # types[type]; kept: the initial value changed, the live value is kept (a warning says so)
    status: Literal["added", "transformed", "kept"]
    symbol: int | None  # PO symbol of the new storage (None for "kept")
    old_size: int
    new_size: int
    type: str | None = None  # key into meta.types for "transformed"
    local: bool = False
    file: str | None = None  # STT_FILE name, for a local variable
    old_name: str | None = None  # name in the FROM version where it differs (static locals)


@dataclass
class PatchTarget:
    """The object a patch is for, when it is a shared library (a program's PO has none)."""

    kind: Literal["program", "library"]
    soname: str | None = None  # the library's DT_SONAME


@dataclass
class FunctionRef:
    name: str  # as the FROM executable spells it
    file: str | None = None  # STT_FILE name, for a local function
    local: bool = False


@dataclass
class Meta:
    program: str
    from_label: str
    to_label: str
    from_build_id: str  # hex GNU build-id of the FROM executable
    to_build_id: str  # hex GNU build-id of the TO executable
    generator: str = ""
    format_version: int = FORMAT_VERSION
    functions: list[FunctionPatch] = field(default_factory=list)
    variables: list[VariablePatch] = field(default_factory=list)
    types: dict[str, TypeTransform] = field(default_factory=dict)
    safety: list[FunctionRef] = field(default_factory=list)  # must be on no stack when applied
    warnings: list[str] = field(default_factory=list)
    pie: bool = True
    digest: str = ""  # katana.po.digest.content_digest of the PO: set by the writer
    # code section index (as a string) -> its call frame information (katana.elf.ehframe), so
    # that a later safe point can unwind through this patch's code once it is loaded
    # (left out of repr, which the content digest of POs written before it was made from; the
    # digest covers it on its own)
    cfi: dict[str, str] = field(default_factory=dict, repr=False)
    # the object patched, for a shared library; None: the program (every PO written before
    # libraries could be patched). Out of repr for the same reason as cfi.
    target: PatchTarget | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """"program" or "library": what from_build_id is the build-id of."""
        return self.target.kind if self.target is not None else "program"

    @property
    def soname(self) -> str | None:
        return self.target.soname if self.target is not None else None


@dataclass
class PatchObject:
    meta: Meta
    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)
