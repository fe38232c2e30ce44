"""The Patch Object file format: round trip, readelf's verdict, determinism, and a fuzzed reader
that must answer every damaged file with FormatError."""

import copy
import hashlib
import io
import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from katana.errors import FormatError, GenerateError
from katana.po import (
    RELOC_BY_NAME,
    FieldOp,
    FunctionPatch,
    FunctionRef,
    Meta,
    PatchObject,
    PatchTarget,
    Reloc,
    Section,
    Symbol,
    TypeTransform,
    VariablePatch,
    load_po,
    po_bytes,
    read_po,
    write_po,
)
from katana.po import writer as po_writer
from katana.po.reader import EHDR, SHDR

RICH_C = r"""
#include <stdio.h>
struct entry { int a; long b; };
static int counter;
int limit = 5;
const char *names[] = { "alpha", "beta" };
static const int table[4] = { 1, 2, 3, 4 };
struct entry entries[2] = { { 1, 2 }, { 3, 4 } };
extern int helper(int);

__attribute__((noinline)) static int bump(int x)
{
    counter += x;
    return counter;
}

int handle(int x)
{
    printf("handle %d %s\n", x, names[x & 1]);
    return bump(x) + helper(table[x & 3]) + limit + (int)entries[x & 1].b;
}
"""

KINDS = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_SECTION": "section",
         "STT_NOTYPE": "notype"}


def _section_kind(sec):
    if sec["sh_type"] == "SHT_NOBITS":
        return "bss"
    if sec["sh_flags"] & 0x4:
        return "text"
    return "data" if sec["sh_flags"] & 0x1 else "rodata"


def _model_from_object(path):
    """Sections, symbols and relocations of a gcc object, as the generator would carry them."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        wanted = [i for i, s in enumerate(elf.iter_sections())
                  if s["sh_type"] in ("SHT_PROGBITS", "SHT_NOBITS") and s["sh_flags"] & 0x2
                  and s.name.startswith((".text", ".rodata", ".data", ".bss"))]
        sec_index = {elf_i: n for n, elf_i in enumerate(wanted)}
        sections = []
        for elf_i in wanted:
            s = elf.get_section(elf_i)
            kind = _section_kind(s)
            sections.append(Section(s.name, kind, b"" if kind == "bss" else s.data(),
                                    s["sh_size"], s["sh_addralign"]))
        symtab = elf.get_section_by_name(".symtab")
        sym_index = {}
        symbols = []
        for n, sym in enumerate(symtab.iter_symbols()):
            shndx = sym["st_shndx"]
            kind = KINDS.get(sym["st_info"]["type"])
            if kind is None or n == 0 or (shndx != "SHN_UNDEF" and shndx not in sec_index):
                continue
            local = sym["st_info"]["bind"] == "STB_LOCAL"
            name = sym.name or elf.get_section(shndx).name
            sym_index[n] = len(symbols)
            symbols.append(Symbol(name, kind, sec_index.get(shndx), sym["st_value"],
                                  sym["st_size"], local, "rich.c" if local else None))
        for rela in elf.iter_sections():
            if isinstance(rela, RelocationSection) and rela["sh_info"] in sec_index:
                sections[sec_index[rela["sh_info"]]].relocs = [
                    Reloc(r["r_offset"], r["r_info_type"], sym_index[r["r_info_sym"]],
                          r["r_addend"]) for r in rela.iter_relocations()]
    return sections, symbols


def _types():
    return {
        "struct inner": TypeTransform("struct inner", 8, 12, [
            FieldOp("copy", 0, 0, 4), FieldOp("copy", 4, 8, 4)], ["a -> a", "b -> b", "+ c"]),
        "struct node@rich.c": TypeTransform("struct node", 40, 56, [
            FieldOp("copy", 0, 0, 4),
            FieldOp("struct", 8, 8, type="struct inner"),
            FieldOp("array", 16, 24, type="struct inner", count=2, src_stride=8, dst_stride=12),
            FieldOp("pointer", 32, 48, type="struct node@rich.c"),  # a cycle through a pointer
        ], ["id -> id", "in -> in", "arr[2] -> arr[2]", "next -> next"]),
        "int[4]": TypeTransform("int[4]", 16, 32, [
            FieldOp("array", 0, 0, 4, count=4, src_stride=4, dst_stride=8)], ["int -> long"]),
    }


def _rich_model(sections, symbols):
    sections = copy.deepcopy(sections)
    symbols = copy.deepcopy(symbols)
    by_name = {s.name: i for i, s in enumerate(symbols)}
    data = next(i for i, s in enumerate(sections) if s.name == ".data.limit")
    # relocation types gcc did not use here, on a data section of our own
    sections.append(Section(".data.extra", "data", bytes(range(32)), 32, 16, [
        Reloc(0, RELOC_BY_NAME["R_X86_64_32S"], by_name["limit"], -8),
        Reloc(4, RELOC_BY_NAME["R_X86_64_GOTPCREL"], by_name["helper"], -4),
        Reloc(8, RELOC_BY_NAME["R_X86_64_PC64"], by_name["bump"], 0),
        Reloc(16, RELOC_BY_NAME["R_X86_64_16"], by_name["handle"], 2),
        Reloc(31, RELOC_BY_NAME["R_X86_64_8"], by_name["handle"], 1),
    ]))
    symbols.append(Symbol("counter", "object", None, 0, 4, True, "main.c", "counter.1"))
    symbols.append(Symbol("strcasestr", "notype", None))
    symbols.append(Symbol("fresh", "object", data, 0, 4))
    meta = Meta(
        program="rich", from_label="v0", to_label="v1", from_build_id="00ff" * 5,
        to_build_id="abcd" * 5, generator="katana test",
        functions=[
            FunctionPatch("handle", "src/rich.o", "changed", by_name["handle"], 48, 64,
                          old_code=b"\x55\x48\x89\xe5\x90\xc3"),
            FunctionPatch("bump", "src/rich.o", "added", by_name["bump"], 0, 16, True,
                          "rich.c", "bump.isra.0", b""),
            FunctionPatch("handle2", "src/rich.o", "changed", by_name["handle"], 3, 3,
                          old_code=b"\xc3\xcc\xcc"),
        ],
        variables=[
            VariablePatch("fresh", "src/rich.o", "added", len(symbols) - 1, 0, 4),
            VariablePatch("entries", "src/rich.o", "transformed", by_name["entries"], 40, 56,
                          "struct node@rich.c", False, None, None),
            VariablePatch("counter", "src/rich.o", "kept", None, 4, 4, None, True, "rich.c",
                          "counter.0"),
        ],
        types=_types(),
        safety=[FunctionRef("handle"), FunctionRef("bump", "rich.c", True)],
        warnings=["limit: initial value changed (5 -> 6); the live value is kept", "ünïcödé ✓"],
        pie=False,
    )
    return PatchObject(meta, sections, symbols)


@pytest.fixture(scope="module")
def rich_object(tmp_path_factory):
    d = tmp_path_factory.mktemp("po")
    src = d / "rich.c"
    src.write_text(RICH_C)
    obj = d / "rich.o"
    subprocess.run(["gcc", "-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c",
                    str(src), "-o", str(obj)], check=True)
    return obj


@pytest.fixture(scope="module")
def rich(rich_object):
    return _rich_model(*_model_from_object(rich_object))


@pytest.fixture(scope="module")
def rich_bytes(rich):
    return po_bytes(rich)


# -- round trip, readelf, determinism ---------------------------------------------------------


def test_round_trip_is_exact(rich, rich_bytes):
    kinds = {s.kind for s in rich.sections}
    assert kinds == {"text", "rodata", "data", "bss"}
    types = {r.type for s in rich.sections for r in s.relocs}
    assert len(types) >= 6
    assert read_po(rich_bytes) == rich


def test_round_trip_through_a_file(rich, tmp_path):
    path = tmp_path / "p.po"
    write_po(rich, path)
    assert load_po(path) == rich
    assert [p.name for p in tmp_path.iterdir()] == ["p.po"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_empty_model_round_trips():
    po = PatchObject(Meta("p", "a", "b", "", ""))
    assert read_po(po_bytes(po)) == po


def _readelf(path, *args):
    res = subprocess.run(["readelf", *args, "-W", str(path)], capture_output=True, text=True)
    return res.returncode, res.stdout + res.stderr


def test_readelf_reads_it_without_complaint(rich, rich_bytes, tmp_path):
    path = tmp_path / "p.po"
    path.write_bytes(rich_bytes)
    rc, out = _readelf(path, "-a")
    assert rc == 0
    complaints = [ln for ln in out.splitlines() if "warning" in ln.lower() or "error" in ln.lower()]
    assert complaints == []
    assert "REL (Relocatable file)" in out and "Advanced Micro Devices X86-64" in out
    for sec in rich.sections:
        assert sec.name in out
        if sec.relocs:
            assert f"Relocation section '.rela{sec.name}'" in out
    for name in (".katana.meta", ".katana.oldcode", ".symtab", ".strtab", ".shstrtab"):
        assert name in out
    assert "R_X86_64_PLT32" in out and "R_X86_64_32S" in out and "R_X86_64_PC64" in out
    assert " handle" in out and " strcasestr" in out


def _relocs_by_readelf(path, section):
    """(offset, type, symbol name, addend) of one relocation section, as readelf prints them."""
    _, out = _readelf(path, "-r")
    rows, inside = [], False
    for line in out.splitlines():
        if line.startswith("Relocation section"):
            inside = f"'.rela{section}'" in line
        elif inside and line[:1] in "0123456789abcdef" and line.strip():
            fields = line.split()
            name_addend = " ".join(fields[4:])
            rows.append((int(fields[0], 16), fields[2], name_addend))
    return rows


def test_relocations_match_the_compiled_object(rich_object, rich_bytes, tmp_path):
    path = tmp_path / "p.po"
    path.write_bytes(rich_bytes)
    ours = _relocs_by_readelf(path, ".text.handle")
    assert len(ours) >= 5
    assert ours == _relocs_by_readelf(rich_object, ".text.handle")


def test_same_model_same_bytes(rich, rich_bytes):
    assert po_bytes(copy.deepcopy(rich)) == rich_bytes


def test_bytes_do_not_depend_on_hash_seed(rich_bytes, rich_object):
    script = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]); import test_po_format as t; "
        "m = t._rich_model(*t._model_from_object(sys.argv[2])); "
        "print(hashlib.sha256(t.po_bytes(m)).hexdigest())"
    )
    digests = set()
    for seed in ("1", "2"):
        res = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent),
                              str(rich_object)], capture_output=True, text=True, timeout=60,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True)
        digests.add(res.stdout.strip())
    assert digests == {hashlib.sha256(rich_bytes).hexdigest()}


# -- the writer refuses models it cannot write faithfully -------------------------------------


def _text(po):
    return next(s for s in po.sections if s.name == ".text.handle")


def _damaged(rich, change):
    po = copy.deepcopy(rich)
    change(po)
    return po


WRITER_REFUSALS = {
    "size differs from data": lambda po: setattr(_text(po), "size", 9999),
    "bss with bytes": lambda po: setattr(
        next(s for s in po.sections if s.kind == "bss"), "data", b"x"),
    "reloc symbol out of range": lambda po: _text(po).relocs.append(Reloc(0, 2, 999, 0)),
    "unknown reloc type": lambda po: _text(po).relocs.append(Reloc(0, 39, 0, 0)),
    "reloc past the end": lambda po: _text(po).relocs.append(
        Reloc(_text(po).size - 2, 2, 0, 0)),
    "addend too large": lambda po: _text(po).relocs.append(Reloc(0, 2, 0, 1 << 63)),
    "NUL in a name": lambda po: setattr(po.symbols[0], "name", "a\0b"),
    "unknown section kind": lambda po: setattr(_text(po), "kind", "tls"),
    "function of an external symbol": lambda po: setattr(
        po.meta.functions[0], "symbol", po.symbols.index(
            next(s for s in po.symbols if s.name == "strcasestr"))),
    "op outside its type": lambda po: setattr(
        po.meta.types["struct inner"].ops[0], "dst", 10),
    "missing type": lambda po: setattr(po.meta.variables[1], "type", "struct nope"),
    "type by value cycle": lambda po: po.meta.types["struct inner"].ops.append(
        FieldOp("struct", 0, 0, type="struct inner")),
    "newer format": lambda po: setattr(po.meta, "format_version", 99),
    "float in meta": lambda po: setattr(po.meta.functions[0], "old_size", 1.5),
}


@pytest.mark.parametrize("case", WRITER_REFUSALS)
def test_writer_refuses_what_it_cannot_write(rich, case):
    with pytest.raises(GenerateError):
        po_bytes(_damaged(rich, WRITER_REFUSALS[case]))


def test_write_to_a_missing_directory_is_a_clear_error(rich, tmp_path):
    with pytest.raises(GenerateError, match="cannot write Patch Object"):
        write_po(rich, tmp_path / "nowhere" / "p.po")


# -- the reader: each check fires, with a message that says what ------------------------------

# Models the writer refuses, laid out without its read-back: the reader must name the damage.
READER_CHECKS = {
    "reloc past the end": (lambda po: _text(po).relocs.append(
        Reloc(_text(po).size - 3, RELOC_BY_NAME["R_X86_64_PC32"], 0, 0)),
        "lies outside its section"),
    "unknown reloc type": (lambda po: _text(po).relocs.append(Reloc(0, 40, 0, 0)),
                           "unknown type 40"),
    "dynamic reloc type": (lambda po: _text(po).relocs.append(
        Reloc(0, RELOC_BY_NAME["R_X86_64_JUMP_SLOT"], 0, 0)), "dynamic relocation"),
    "symbol outside its section": (lambda po: setattr(po.symbols[-1], "value", 1 << 20),
                                   "lies outside its section"),
    "undamaged": (lambda po: None, None),  # the control: laid out unchanged, it reads back
    "version": (lambda po: setattr(po.meta, "format_version", 2), "newer than this katana"),
    "type cycle": (lambda po: po.meta.types["int[4]"].ops.append(
        FieldOp("array", 0, 0, type="int[4]", count=0)), "contains itself"),
    "pointer op without type": (lambda po: po.meta.types["int[4]"].ops.append(
        FieldOp("pointer", 0, 0)), "needs a type"),
    "transformed without type": (lambda po: setattr(po.meta.variables[1], "type", None),
                                 "names no entry of types"),
    "copy past the new size": (lambda po: po.meta.types["int[4]"].ops.append(
        FieldOp("copy", 0, 30, 4)), "reaches outside"),
    "added without storage": (lambda po: setattr(po.meta.variables[0], "symbol", None),
                              "not a symbol the PO defines"),
    "big align": (lambda po: setattr(_text(po), "align", 8192), "exceeds 4096"),
    "bad align": (lambda po: setattr(_text(po), "align", 24), "not a power of two"),
}


@pytest.mark.parametrize("case", READER_CHECKS)
def test_reader_names_the_damage(rich, case):
    change, message = READER_CHECKS[case]
    data = po_writer._build(_damaged(rich, change))
    if message is None:
        assert read_po(data, "x.po") == _damaged(rich, change)
        return
    with pytest.raises(FormatError, match=message) as err:
        read_po(data, "x.po")
    assert str(err.value).startswith("x.po: ")
    assert err.value.exit_code == 7 and err.value.hint


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read Patch Object"):
        load_po(tmp_path / "none.po")
    with pytest.raises(FormatError, match="cannot read Patch Object"):
        load_po(tmp_path)


def test_not_elf_at_all(tmp_path):
    for data in (b"", b"hello", b"\x7fELF" + bytes(60), RICH_C.encode()):
        with pytest.raises(FormatError):
            read_po(data)


# -- fuzzing: damage of every kind gives FormatError, never another exception -----------------


def _outcome(data):
    """'error' for FormatError, 'ok' for a model; anything else escapes and fails the test."""
    try:
        read_po(data, "fuzz.po")
    except FormatError:
        return "error"
    return "ok"


def _shdrs(data):
    _, _, _, _, _, _, shoff, _, _, _, _, _, shnum, _ = EHDR.unpack_from(data)
    return shoff, shnum


def _meta_slot(data):
    """(header offset, content offset, size) of .katana.meta."""
    shoff, shnum = _shdrs(data)
    for i in range(shnum):
        hdr = shoff + i * SHDR.size
        fields = SHDR.unpack_from(data, hdr)
        if data[fields[4]:fields[4] + fields[5]].startswith(b'{"program"'):
            return hdr, fields[4], fields[5]
    raise AssertionError("no .katana.meta")


def _with_meta(data, text):
    """The PO with .katana.meta replaced by ``text`` (appended at the end of the file)."""
    hdr, _, _ = _meta_slot(data)
    out = bytearray(data)
    struct.pack_into("<QQ", out, hdr + 24, len(data), len(text))
    return bytes(out) + text


def test_truncations(rich_bytes):
    outcomes = [_outcome(rich_bytes[:n]) for n in range(0, len(rich_bytes))]
    assert outcomes == ["error"] * len(rich_bytes)


def test_bit_flips(rich_bytes):
    rng = random.Random(20240607)
    outcomes = []
    for _ in range(1500):
        data = bytearray(rich_bytes)
        for _ in range(rng.choice((1, 1, 2, 8))):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        outcomes.append(_outcome(bytes(data)))
    assert outcomes.count("error") > 500  # most flips land in checked bytes


BAD_WORDS = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1)


def _put(data, offset, size, value):
    out = bytearray(data)
    out[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
    return bytes(out)


def _field_slots(layout, base):
    """(offset, size) of every field of one packed struct at ``base``."""
    slots, offset = [], base
    for count, code in re.findall(r"(\d*)([a-zA-Z])", layout.format):
        size = struct.calcsize("<" + count + code)
        slots.append((offset, size))
        offset += size
    assert offset - base == layout.size
    return slots


def test_header_and_section_header_fields(rich_bytes):
    shoff, shnum = _shdrs(rich_bytes)
    slots = [s for s in _field_slots(EHDR, 0) if s[1] < 16]  # e_ident is flipped byte-wise below
    slots += [(i, 1) for i in range(16)]
    for i in range(shnum):
        slots += _field_slots(SHDR, shoff + i * SHDR.size)
    outcomes = []
    for offset, size in slots:
        current = int.from_bytes(rich_bytes[offset:offset + size], "little")
        for value in {*BAD_WORDS, current + 1, current - 1, len(rich_bytes),
                      len(rich_bytes) - 1}:
            outcomes.append(_outcome(_put(rich_bytes, offset, size, value)))
    assert len(outcomes) > 1000 and outcomes.count("error") > len(outcomes) // 2


SYMBOL_FIELDS = struct.Struct("<IBBHQQ")  # Elf64_Sym
RELA_FIELDS = struct.Struct("<QIIq")  # Elf64_Rela, with r_info as its type and symbol halves


def _table_slots(data):
    """Field slots of every entry of .symtab and of every .rela section."""
    shoff, shnum = _shdrs(data)
    slots = []
    for i in range(shnum):
        fields = SHDR.unpack_from(data, shoff + i * SHDR.size)
        if fields[1] in (2, 4):  # SHT_SYMTAB, SHT_RELA
            layout = SYMBOL_FIELDS if fields[1] == 2 else RELA_FIELDS
            for base in range(fields[4], fields[4] + fields[5], layout.size):
                slots += _field_slots(layout, base)
    return slots


def test_symbol_and_relocation_fields(rich_bytes):
    outcomes = []
    for offset, size in _table_slots(rich_bytes):
        current = int.from_bytes(rich_bytes[offset:offset + size], "little")
        for value in {*BAD_WORDS, current + 1, current - 1}:
            outcomes.append(_outcome(_put(rich_bytes, offset, size, value)))
    assert len(outcomes) > 1000 and outcomes.count("error") > len(outcomes) // 2


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    yield path


def _set(obj, path, value):
    obj = copy.deepcopy(obj)
    if not path:
        return value
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def _meta_of(data):
    _, offset, size = _meta_slot(data)
    return json.loads(data[offset:offset + size])


def test_every_metadata_field_damaged(rich_bytes):
    meta = _meta_of(rich_bytes)
    values = (None, -1, 1 << 64, "x", [], {}, 1.5, True, 10**6)
    outcomes = []
    for path in _leaves(meta):
        for value in values:
            text = json.dumps(_set(meta, path, value)).encode()
            outcomes.append(_outcome(_with_meta(rich_bytes, text)))
    assert len(outcomes) > 1000 and outcomes.count("error") > len(outcomes) * 3 // 4


def test_metadata_keys_removed_and_added(rich_bytes):
    meta = _meta_of(rich_bytes)
    for path in _leaves(meta):
        # every key is required, but for the names of types, which nothing may reference, and
        # the code's CFI (absent in POs written before it; a section without it is not unwound)
        if path and isinstance(path[-1], str) and path[:-1] != ("types",) and \
                path[0] != "cfi":
            parent = copy.deepcopy(meta)
            target = parent
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
            assert _outcome(_with_meta(rich_bytes, json.dumps(parent).encode())) == "error"
            if isinstance(target, dict) and "extra" not in target:
                target[path[-1]] = None
                target["extra"] = 1
                assert _outcome(_with_meta(rich_bytes, json.dumps(parent).encode())) == "error"


RAW_JSON = [
    b"", b"null", b"[]", b"{}", b'{"format_version": "1"}', b'{"format_version": 0}',
    b'{"format_version": 1.0}', b'{"format_version": true}', b"\xff\xfe{}", b"{" * 10,
    b"[" * 200000, b'{"format_version": 1, "format_version": 1}', b'{"a": NaN}',
    b'{"format_version": 1, "program": "\\ud800"}', b'{"format_version": 1, "x": 1' + b"9" * 5000
    + b"}",
]


def test_raw_json_damage(rich_bytes):
    meta_text = json.dumps(_meta_of(rich_bytes)).encode()
    cases = RAW_JSON + [meta_text[:n] for n in range(0, len(meta_text), 7)]
    cases.append(meta_text.replace(b'"program": "rich"', b'"program": "\\ud800"'))
    cases.append(meta_text.replace(b'"format_version": 1', b'"format_version": 1, "pie": 1'))
    for text in cases:
        assert _outcome(_with_meta(rich_bytes, text)) == "error", text[:60]


def test_newer_format_version_says_which_it_reads(rich_bytes):
    meta = _meta_of(rich_bytes)
    meta["format_version"] = 2
    meta["something_new"] = {"unknown": "shape"}
    with pytest.raises(FormatError, match="version 2 is newer .* reads \\(version 1\\)") as err:
        read_po(_with_meta(rich_bytes, json.dumps(meta).encode()))
    assert "upgrade" in err.value.hint


def test_old_code_refs_checked(rich, rich_bytes):
    meta = _meta_of(rich_bytes)
    assert meta["functions"][0]["old_code"] == {"offset": 0, "size": 6}
    assert read_po(_with_meta(rich_bytes, json.dumps(meta).encode())) == rich
    meta["functions"][2]["old_code"]["size"] = 4
    with pytest.raises(FormatError, match="outside .katana.oldcode"):
        read_po(_with_meta(rich_bytes, json.dumps(meta).encode()))


def test_long_chains_of_types_do_not_exhaust_the_stack(rich_bytes):
    meta = _meta_of(rich_bytes)
    n = 5000
    meta["types"] = {f"t{i}": {"name": f"struct t{i}", "old_size": 8, "new_size": 8, "fields": [],
                               "ops": [{"kind": "struct", "src": 0, "dst": 0, "size": 0,
                                        "type": f"t{i + 1}" if i + 1 < n else None, "count": 0,
                                        "src_stride": 0, "dst_stride": 0}]}
                     for i in range(n)}
    meta["types"][f"t{n - 1}"]["ops"] = []
    meta["variables"][1]["type"] = "t0"
    # every check ran to the end without a RecursionError: only the digest (of the original
    # content) is left to disagree with the edited metadata
    with pytest.raises(FormatError, match="digest"):
        read_po(_with_meta(rich_bytes, json.dumps(meta).encode()))
    meta["types"][f"t{n - 1}"]["ops"] = [dict(meta["types"]["t0"]["ops"][0], type="t0")]
    with pytest.raises(FormatError, match="contains itself by value"):
        read_po(_with_meta(rich_bytes, json.dumps(meta).encode()))


def test_every_flipped_code_or_data_byte_is_caught(rich_bytes):
    """Damage inside code or data bytes leaves a well-formed ELF: the digest must catch it, or
    a damaged patch would load and crash its target."""
    elf = ELFFile(io.BytesIO(rich_bytes))
    spans = [(s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()
             if s["sh_type"] == "SHT_PROGBITS" and s.name.startswith((".text", ".rodata", ".data"))]
    assert spans
    for offset, size in spans:
        for i in range(offset, offset + size):
            damaged = bytearray(rich_bytes)
            damaged[i] ^= 0x01
            with pytest.raises(FormatError):
                read_po(bytes(damaged))


def test_metadata_without_cfi_reads(rich_bytes):
    """A PO written before the code's CFI was kept still reads (its code is simply not
    unwound through); a cfi entry naming no code section is an error."""
    meta = _meta_of(rich_bytes)
    old = copy.deepcopy(meta)
    old.pop("cfi", None)
    assert _outcome(_with_meta(rich_bytes, json.dumps(old).encode())) != "error"
    bad = copy.deepcopy(meta)
    bad["cfi"] = {"9999": "00"}
    assert _outcome(_with_meta(rich_bytes, json.dumps(bad).encode())) == "error"


def test_a_library_target_round_trips_and_a_program_po_is_unchanged(rich, rich_bytes):
    """A library's PO records its object (target); a program's PO has no target key, so its
    bytes and digest are what they were before the field existed."""
    assert "target" not in _meta_of(rich_bytes)
    library = copy.deepcopy(rich)
    library.meta.target = PatchTarget("library", "libkv.so")
    raw = po_bytes(library)
    assert _meta_of(raw)["target"] == {"kind": "library", "soname": "libkv.so"}
    back = read_po(raw)
    assert (back.meta.kind, back.meta.soname) == ("library", "libkv.so")
    assert read_po(rich_bytes).meta.kind == "program"
    assert back.meta.digest != read_po(rich_bytes).meta.digest
    meta = _meta_of(raw)
    meta["target"]["soname"] = "libother.so"  # the digest covers it
    assert _outcome(_with_meta(raw, json.dumps(meta).encode())) == "error"
