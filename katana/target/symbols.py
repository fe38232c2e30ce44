"""Symbols of a running process, as runtime addresses: its executable and its shared libraries.

IFUNC symbols (``strlen``, ``memcpy``, ``strcasestr`` ... in glibc) name a resolver that picks an
implementation for this CPU; the address a patch needs is the implementation. Found, in order:
by calling the resolver in katana's own process when it maps the same library file (the same
answer: see ``resolve_ifunc_here``); in a GOT slot the dynamic linker already bound to it in the
target (any mapped object that calls it, ``resolve_ifunc_bound``); only then by calling the
resolver inside the target (``inject.call``, one thread stopped for a few microseconds), the one
way that also covers a symbol no object of the process uses yet. The first two run no code in
the target, so nothing can be left half-done there if katana dies.
"""

from __future__ import annotations

import os

from katana.elf.dynamic import bound_relocs
from katana.elf.symtab import STT_GNU_IFUNC, ElfSymbol, ExecutableSymbols, executable_symbols
from katana.errors import ApplyError, FormatError
from katana.target import inject, procfs
from katana.target.dynsym import DynSymbol, library_symbols
from katana.target.process import Process


class ProcessSymbols:
    """Look up symbols of process ``pid`` (or of an attached ``Process``) by runtime address.

    Executable lookups need no stopped process; resolving an IFUNC does (it runs the resolver in
    the target), so pass an attached ``Process`` when library symbols are wanted.
    """

    def __init__(self, target: Process | int) -> None:
        self.process = target if isinstance(target, Process) else None
        self.pid = target.pid if isinstance(target, Process) else target
        procfs.check_process(self.pid)
        self.exe_path = procfs.exe_path(self.pid)
        self.executable: ExecutableSymbols = executable_symbols(_exe_file(self.pid, self.exe_path))
        self.bias = procfs.load_bias(self.pid)
        self._libraries: list[procfs.Library] | None = None
        self._resolved: dict[int, int] = {}

    # -- the executable ----------------------------------------------------------------------

    def _address(self, sym: ElfSymbol) -> int:
        return sym.value if sym.absolute else sym.value + self.bias

    def find(self, name: str, file: str | None = None) -> tuple[int, int] | None:
        """(runtime address, size) of the executable's symbol, or None (see
        ``ExecutableSymbols.find`` for globals, locals and ``file``)."""
        sym = self.executable.find(name, file)
        if sym is None:
            return None
        address = self._address(sym)
        if sym.type == STT_GNU_IFUNC:
            address = self._resolve_ifunc(name, address)
        return address, sym.size

    def lookup(self, name: str, file: str | None = None) -> tuple[int, int]:
        """(runtime address, size) of the executable's symbol; ApplyError when missing."""
        found = self.find(name, file)
        if found is None:
            where = f" (local to {file})" if file else ""
            raise ApplyError(
                f"no symbol '{name}'{where} in {self.exe_path} (process {self.pid})",
                hint="the patch was made for another build of the program",
            )
        return found

    def function_at(self, address: int) -> tuple[str, int, int] | None:
        """(name, runtime start, size) of the executable's function that holds ``address``."""
        sym = self.executable.function_at(address - self.bias)
        if sym is None:
            return None
        return sym.name, self._address(sym), sym.size

    # -- shared libraries --------------------------------------------------------------------

    def libraries(self) -> list[procfs.Library]:
        """The loaded libraries in the dynamic linker's search order (approximately).

        ld.so maps each library below the previous one, so descending base address is load
        order, which is the breadth-first DT_NEEDED order it searches; ld.so itself, mapped
        first by the kernel, is searched after the libraries that need it.
        """
        if self._libraries is None:
            libs = sorted(procfs.libraries(self.pid), key=lambda lib: -lib.base)
            self._libraries = sorted(libs, key=lambda lib: _is_dynamic_linker(lib.path))
        return self._libraries

    def find_library(self, name: str) -> tuple[int, procfs.Library] | None:
        """(runtime address, library) of an exported library symbol, or None.

        ``name`` may carry a version, ``memcpy@GLIBC_2.2.5``; otherwise the default version
        (``memcpy@@GLIBC_2.14``) is taken. IFUNCs are resolved to their implementation.
        """
        base_name, _, version = name.partition("@")
        for lib in self.libraries():
            sym = library_symbols(lib.path).find(base_name, version.lstrip("@") or None)
            if sym is not None:
                return self._library_address(sym, lib), lib
        return None

    def lookup_library(self, name: str) -> int:
        """Runtime address of an exported library symbol; ApplyError when no library has it."""
        found = self.find_library(name)
        if found is None:
            raise ApplyError(
                f"no shared library loaded in process {self.pid} exports '{name}'",
                hint="the patch calls a function from a library the program does not load",
            )
        return found[0]

    def _library_address(self, sym: DynSymbol, lib: procfs.Library) -> int:
        address = sym.value + lib.bias
        if not sym.ifunc:
            return address
        if address not in self._resolved:
            here = resolve_ifunc_here(self.pid, lib, sym.value)
            if here is None:
                here = resolve_ifunc_bound(self.pid, lib, sym.name, self.libraries())
            if here is not None:
                self._resolved[address] = here
        return self._resolve_ifunc(sym.name, address)

    def _resolve_ifunc(self, name: str, resolver: int) -> int:
        if resolver not in self._resolved:
            if self.process is None or not self.process.seized:
                raise ApplyError(
                    f"'{name}' is an IFUNC: resolving it needs the process traced",
                    hint="look it up through an attached Process",
                )
            proc = self.process
            if proc.attached:
                self._resolved[resolver] = inject.call(proc, resolver)
            else:
                # One thread stopped for the call, the others run on.
                tid = proc.main_tid
                proc.stop_thread(tid)
                try:
                    self._resolved[resolver] = inject.call(proc, resolver, tid=tid)
                finally:
                    proc.resume_thread(tid)
        return self._resolved[resolver]


_OWN_LIBRARIES: list[procfs.Library] | None = None


def resolve_ifunc_here(pid: int, lib: procfs.Library, value: int) -> int | None:
    """The implementation an IFUNC of ``lib`` resolves to in process ``pid``, computed by calling
    the resolver in katana's own process, or None when that cannot stand for the target's.

    glibc's x86-64 resolvers take no argument and choose from the CPU features ld.so recorded
    at start-up (dl-irel.h: elf_ifunc_invoke), so the same library file on the same CPU, with
    the same GLIBC_TUNABLES, gives the same implementation at the same offset. No thread of the
    target has to run a resolver, so nothing is left half-done if katana dies.
    """
    import ctypes

    global _OWN_LIBRARIES
    if _OWN_LIBRARIES is None:
        _OWN_LIBRARIES = procfs.libraries(os.getpid())
    try:
        theirs = os.stat(lib.path)
        ours = next((mine for mine in _OWN_LIBRARIES
                     if os.path.samestat(os.stat(mine.path), theirs)), None)
        if ours is None or _tunables(pid) != _tunables(os.getpid()):
            return None
    except OSError:
        return None
    impl = ctypes.CFUNCTYPE(ctypes.c_void_p)(ours.bias + value)()
    if impl is None or not any(m.executable and m.contains(impl) for m in ours.mappings):
        return None
    return impl - ours.bias + lib.bias


def resolve_ifunc_bound(pid: int, lib: procfs.Library, name: str,
                        libraries: list[procfs.Library]) -> int | None:
    """The implementation of the IFUNC ``name`` of ``lib``, read from a GOT slot the dynamic
    linker bound to it in process ``pid`` (the executable's or another library's: a JUMP_SLOT
    or GLOB_DAT against ``name``), or None. A lazily bound slot not yet called still points
    into its own object's PLT, not into ``lib``'s code: it does not count."""
    objects = [(f"/proc/{pid}/exe", procfs.load_bias(pid))] + \
        [(other.path, other.bias) for other in libraries if other.path != lib.path]
    try:
        mem = open(f"/proc/{pid}/mem", "rb")
    except OSError:
        return None
    with mem:
        for path, bias in objects:
            try:
                relocs = bound_relocs(path)
            except FormatError:
                continue
            for r in relocs:
                if r.symbol != name:
                    continue
                try:
                    mem.seek(r.offset + bias)
                    value = int.from_bytes(mem.read(8), "little")
                except (OSError, ValueError):
                    continue
                if any(m.executable and m.contains(value) for m in lib.mappings):
                    return value
    return None


def _tunables(pid: int) -> bytes | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = f.read().split(b"\0")
    return next((e for e in env if e.startswith(b"GLIBC_TUNABLES=")), None)


def _exe_file(pid: int, path: str) -> str:
    """The executable's path when it still names the running file (nicer in messages), else
    /proc/PID/exe, which reaches the running file even after it was replaced or deleted."""
    proc_exe = f"/proc/{pid}/exe"
    try:
        same = os.path.samefile(path, proc_exe)
    except OSError:
        same = False
    return path if same else proc_exe


def _is_dynamic_linker(path: str) -> bool:
    return os.path.basename(path).startswith("ld-linux")
