"""The PO viewer: text and JSON listings of hand-built Patch Object models with real x86-64 code."""

import json
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from katana.po.model import (
    FieldOp,
    FunctionPatch,
    FunctionRef,
    Meta,
    PatchObject,
    Reloc,
    Section,
    Symbol,
    TypeTransform,
    VariablePatch,
)
from katana.view import render_json, render_text

OLD_C = r"""
int counter;
__attribute__((noinline)) int compute(int x) { counter++; return x + 1; }
int main(void) { return compute(1); }
"""

NEW_C = r"""
#include <stdio.h>
int counter;
__attribute__((noinline)) static int helper(int x) { return x * 3 + 1; }
__attribute__((noinline)) int compute(int x)
{
    counter++;
    puts("hello from the new code");
    return helper(x) + 2;
}
int main(void) { return compute(1); }
"""

FROM_ID = "1f" * 20
TO_ID = "2e" * 20


def gcc(tmp_path: Path, name: str, source: str, *args: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / (name + (".o" if "-c" in args else ""))
    subprocess.run(["gcc", "-O1", "-ffunction-sections", "-fdata-sections", *args,
                    "-o", out, src], check=True, capture_output=True, timeout=60)
    return out


def linked_function(exe: Path, name: str) -> bytes:
    """The bytes of ``name`` as linked into an executable (what FunctionPatch.old_code holds)."""
    with open(exe, "rb") as f:
        elf = ELFFile(f)
        symbol = elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        text = elf.get_section_by_name(".text")
        start = symbol["st_value"] - text["sh_addr"]
        return text.data()[start : start + symbol["st_size"]]


def po_from_object(obj: Path, functions: list[str]) -> tuple[PatchObject, dict[str, int]]:
    """A PatchObject holding ``.text.<f>`` of each function and the object's ``.rodata*``
    sections, with their relocations; a target outside them is an external symbol."""
    po = PatchObject(meta=Meta(program="demo", from_label="v0", to_label="v1",
                               from_build_id=FROM_ID, to_build_id=TO_ID, generator="test 1.0"))
    symbol_of: dict[str, int] = {}  # symbol name (section name for a section symbol) -> index

    def add_symbol(key, symbol):
        if key not in symbol_of:
            symbol_of[key] = len(po.symbols)
            po.symbols.append(symbol)
        return symbol_of[key]

    with open(obj, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        wanted = [f".text.{name}" for name in functions]
        wanted += [s.name for s in elf.iter_sections() if s.name.startswith(".rodata")]
        po_index = {}
        for name in wanted:
            section = elf.get_section_by_name(name)
            po_index[elf.get_section_index(name)] = len(po.sections)
            kind = "text" if name.startswith(".text") else "rodata"
            po.sections.append(Section(name, kind, section.data(), section.data_size, 1))
        for name in functions:
            symbol = symtab.get_symbol_by_name(name)[0]
            local = symbol["st_info"]["bind"] == "STB_LOCAL"
            add_symbol(name, Symbol(name, "func", po_index[symbol["st_shndx"]], 0,
                                    symbol["st_size"], local=local))
        for name in wanted:
            rela = elf.get_section_by_name(".rela" + name)
            for rel in rela.iter_relocations() if rela else ():
                target = symtab.get_symbol(rel["r_info_sym"])
                shndx = target["st_shndx"]
                if target["st_info"]["type"] == "STT_SECTION":
                    index = add_symbol(elf.get_section(shndx).name,
                                       Symbol("", "section", po_index[shndx]))
                elif shndx in po_index:
                    index = add_symbol(target.name, Symbol(target.name, "notype", po_index[shndx],
                                                           target["st_value"], local=True))
                else:
                    index = add_symbol(target.name, Symbol(target.name, "func", None))
                po.sections[po_index[elf.get_section_index(name)]].relocs.append(
                    Reloc(rel["r_offset"], rel["r_info_type"], index, rel["r_addend"]))
    return po, symbol_of


@pytest.fixture(scope="module")
def code_po(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("view")
    old_exe = gcc(tmp_path, "old", OLD_C)
    new_obj = gcc(tmp_path, "new", NEW_C, "-c")
    po, symbol_of = po_from_object(new_obj, ["helper", "compute"])
    old_code = linked_function(old_exe, "compute")
    meta = po.meta
    meta.functions = [
        FunctionPatch("compute", "src/compute.o", "changed", symbol_of["compute"], len(old_code),
                      po.symbols[symbol_of["compute"]].size, old_code=old_code),
        FunctionPatch("helper", "src/compute.o", "added", symbol_of["helper"], 0,
                      po.symbols[symbol_of["helper"]].size, local=True, file="new.c"),
    ]
    meta.safety = [FunctionRef("compute"), FunctionRef("helper", "new.c", True)]
    return po


@pytest.fixture
def data_po():
    """A PO with no code but every kind of variable, a nested type and warnings."""
    entry = TypeTransform(
        "struct entry", 16, 24,
        [FieldOp("copy", 0, 0, 8), FieldOp("copy", 8, 16, 8)],
        ["key    @0 -> @0  (8 bytes)", "hits   new @8, zero-filled",
         "value  @8 -> @16 (8 bytes)"])
    table = TypeTransform("struct table", 168, 248,
                          [FieldOp("array", 0, 0, type="struct entry", count=10, src_stride=16,
                                   dst_stride=24), FieldOp("copy", 160, 240, 8)],
                          ["entries[10]  @0 -> @0, each struct entry", "count  @160 -> @240"])
    meta = Meta(
        program="kvstore", from_label="release-1.0", to_label="release-1.1",
        from_build_id=FROM_ID, to_build_id=TO_ID, pie=False,
        variables=[
            VariablePatch("total_hits", "src/store.o", "added", 0, 0, 8),
            VariablePatch("db", "src/store.o", "transformed", 1, 168, 248, type="struct table"),
            VariablePatch("limit", "src/config.o", "kept", None, 4, 4),
            VariablePatch("a_static_variable_with_a_really_long_name_indeed", "src/x.o", "added",
                          2, 0, 4, local=True, file="x.c"),
        ],
        types={"struct table": table, "struct entry": entry},
        warnings=["initial value of 'limit' (src/config.o) changed from 5 to 6; the running "
                  "process keeps its live value, so the new initial value never takes effect",
                  "object src/old.o is gone in release-1.1"])
    return PatchObject(meta=meta)


# --- text -------------------------------------------------------------------------------------

def test_header_and_functions(code_po):
    text = render_text(code_po)
    assert "Patch for demo: v0 -> v1" in text
    assert f"v0   build-id {FROM_ID}" in text and f"v1   build-id {TO_ID}" in text
    assert "generated by test 1.0" in text
    assert "  functions   1 replaced, 1 added\n  variables   0 added, 0 transformed, 0 kept" in text
    compute = code_po.meta.functions[0]
    assert "Functions replaced (1)" in text
    row = next(line for line in text.splitlines() if line.startswith("  compute "))
    assert row.split() == ["compute", str(compute.old_size), "->", str(compute.new_size),
                           "src/compute.o"]
    assert "Functions added (1)" in text
    row = next(line for line in text.splitlines() if line.startswith("  helper"))
    assert row.split() == ["helper", "[static]", str(code_po.meta.functions[1].new_size),
                           "src/compute.o"]
    assert "Safety set (2)" in text and "helper (new.c)" in text
    assert "WARNING" not in text and "\x1b[" not in text
    assert "Code (" not in text  # no disassembly unless asked


def test_fits_80_columns(code_po, data_po):
    for po in (code_po, data_po):
        for text in (render_text(po), render_text(po, disasm=True)):
            too_long = [line for line in text.splitlines() if len(line) > 80]
            assert too_long == []


def test_variables_types_and_warnings(data_po):
    text = render_text(data_po)
    lines = text.splitlines()
    assert "executable  non-PIE (fixed addresses)" in text
    assert "Variables added (2)" in text
    assert any(line.split() == ["total_hits", "8", "src/store.o"] for line in lines)
    # a name too long for its column gets a line of its own; the row continues aligned below
    index = lines.index("  a_static_variable_with_a_really_long_name_indeed [static]")
    assert lines[index + 1].split() == ["4", "src/x.o"]
    assert "Variables transformed (1)" in text
    assert any(line.split() == ["db", "168", "->", "248", "struct", "table", "src/store.o"]
               for line in lines)
    assert "struct table: 168 -> 248 bytes" in text
    assert "entries[10]  @0 -> @0, each struct entry" in text
    assert "struct entry: 16 -> 24 bytes" in text  # the nested type is shown too
    assert "hits   new @8, zero-filled" in text
    assert "Variables kept (1): initial value changed, live value kept" in text
    assert any(line.split() == ["limit", "4", "src/config.o"] for line in lines)
    # warnings: counted in the header, then each one marked at the end
    assert "  warnings    2, listed at the end" in lines
    assert "WARNINGS (2)" in text
    warning_lines = [line for line in lines if line.startswith("  ! WARNING: ")]
    assert len(warning_lines) == 2
    assert "initial value of 'limit'" in warning_lines[0]
    assert text.rstrip().endswith("object src/old.o is gone in release-1.1")
    assert "No function or variable changes" not in text


def test_color_only_when_asked(data_po):
    assert "\x1b[" not in render_text(data_po)
    colored = render_text(data_po, color=True)
    assert "\x1b[1;33m  ! WARNING: initial value" in colored


def test_empty_patch():
    po = PatchObject(meta=Meta("p", "a", "b", FROM_ID, TO_ID))
    text = render_text(po, disasm=True)
    assert "No function or variable changes" in text
    assert "functions   0 replaced, 0 added" in text


# --- disassembly ------------------------------------------------------------------------------

def code_block(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start + 1 : end]


def sides(block: list[str]) -> tuple[list[str], list[str]]:
    """The old and the new column of a side-by-side block, split where its header puts 'new:'."""
    column = block[0].index("new:")
    return [line[2 : column - 3] for line in block[1:]], [line[column:] for line in block[1:]]


def test_disassembly_side_by_side(code_po):
    text = render_text(code_po, disasm=True)
    assert "Code (x86-64, Intel syntax" in text
    block = code_block(text, "compute (src/compute.o): ")
    assert block[0].split() == ["old:", "FROM", "executable", "new:", "patch", "object"]
    olds, news = sides(block)
    # the old compute ends `lea eax, [rdi + 1]; ret`; the new one calls puts and helper
    assert any("lea" in old and "rdi + 1" in old for old in olds)
    assert any("ret" in old for old in olds) and any("ret" in new for new in news)
    assert any(new.split()[1:2] == ["call"] for new in news)
    assert not any("call" in old for old in olds)


def test_relocations_are_annotated(code_po):
    text = render_text(code_po, disasm=True)
    block = code_block(text, "compute (src/compute.o): ")
    news = sides(block)[1]
    notes = [new.strip() for new in news if "->" in new]
    assert "-> puts-0x4  R_X86_64_PLT32" in notes
    # GCC calls a static function through its section symbol: shown by the section's name
    assert "-> .text.helper-0x4  R_X86_64_PC32" in notes
    assert "-> .LC0-0x4  R_X86_64_PC32" in notes  # the string literal
    assert "-> counter-0x5  R_X86_64_PC32" in notes  # `add dword ptr [rip], 1`: imm8 after it
    # each note sits right under the instruction that holds the relocated field
    for index, new in enumerate(news):
        if "-> puts" in new:
            assert new.index("->") == news[index - 1].index("call")


def test_added_function_shows_new_code_only(code_po):
    text = render_text(code_po, disasm=True)
    block = code_block(text, "helper [static] (src/compute.o): added")
    assert block and all(not line.startswith("  old") for line in block)
    assert any(line.split()[1:2] == ["lea"] for line in block)  # x * 3 + 1
    assert block[-1].split()[1] == "ret"


def test_undecodable_bytes_and_damaged_symbols():
    po = PatchObject(meta=Meta("p", "a", "b", FROM_ID, TO_ID))
    # nop; (06: invalid in 64-bit mode); mov eax, [rip + 0] -> a static of the running program
    code = bytes([0x90, 0x06, 0x8b, 0x05, 0, 0, 0, 0, 0xc3])
    po.sections.append(Section(".text.f", "text", code, len(code), 16,
                               [Reloc(0, 2, 99, 0), Reloc(4, 2, 1, -4)]))
    po.symbols += [Symbol("f", "func", 0, 0, len(code)),
                   Symbol("limit", "object", None, local=True, file="config.c")]
    po.meta.functions = [FunctionPatch("f", "f.o", "changed", 0, 1, len(code)),
                         FunctionPatch("g", "f.o", "added", 7, 0, 3)]
    text = render_text(po, disasm=True)
    block = code_block(text, "f (f.o): ")
    assert block[0].startswith("  old: (code not in the patch)")
    news = sides(block)[1]
    assert [new.strip() for new in news] == [
        "0  nop", "-> <bad symbol 99>  R_X86_64_PC32", "1  .byte 0x06",
        # a note too long for the column wraps under itself
        "2  mov eax, dword ptr [rip]", "-> config.c:limit-0x4", "R_X86_64_PC32", "8  ret"]
    assert news[5].index("R_X86") == news[4].index("->") + 3
    assert render_json(po)["functions"][1]["section"] is None
    assert "g (f.o): added, 3 bytes" in text  # a function without code is listed, not a crash


# --- JSON -------------------------------------------------------------------------------------

def test_json(code_po, data_po):
    data = render_json(code_po)
    assert json.loads(json.dumps(data)) == data
    assert data["from"] == {"label": "v0", "build_id": FROM_ID}
    assert data["summary"]["functions_replaced"] == 1
    compute = data["functions"][0]
    assert compute["name"] == "compute" and compute["section"] == ".text.compute"
    assert "old_code" not in compute
    targets = {(r["target"], r["type"]) for r in compute["relocations"]}
    assert ("puts", "R_X86_64_PLT32") in targets and (".text.helper", "R_X86_64_PC32") in targets
    assert all(r["offset"] < compute["new_size"] for r in compute["relocations"])
    assert "data" not in data["sections"][0]

    with_code = render_json(code_po, code=True)
    json.dumps(with_code)
    old_code = code_po.meta.functions[0].old_code
    assert bytes.fromhex(with_code["functions"][0]["old_code"]) == old_code
    assert with_code["functions"][0]["new_code"] == code_po.sections[1].data.hex()

    data = render_json(data_po)
    assert json.loads(json.dumps(data)) == data
    assert data["summary"] == {"functions_replaced": 0, "functions_added": 0,
                               "variables_added": 2, "variables_transformed": 1,
                               "variables_kept": 1, "warnings": 2}
    assert data["types"]["struct table"]["ops"][0]["kind"] == "array"
    assert data["variables"][1]["type"] == "struct table"
    assert len(data["warnings"]) == 2
    assert set(render_json(code_po)) == set(data)  # the same keys for every patch
