"""Which processes a command works on: the PIDs given, or ``all`` of a program's processes,
narrowed by ``--user`` and ``--exe``.

``all`` is read from /proc once, before the first process is touched; a process that exits
afterwards is counted as exited by the command (results.py), never a crash.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from katana.elf.buildid import read_build_id
from katana.errors import KatanaError, TargetError, UsageError
from katana.target import procfs


@dataclass(frozen=True)
class Selection:
    """``all``'s filters: ``uid`` (from --user) and ``exe`` (--exe: (st_dev, st_ino))."""

    uid: int | None = None
    exe: tuple[int, int] | None = None
    exe_path: str | None = None

    def describe(self) -> str:
        parts = []
        if self.uid is not None:
            parts.append(f"of uid {self.uid}")
        if self.exe_path is not None:
            parts.append(f"running {self.exe_path}")
        return " ".join(parts)


EVERY = Selection()  # no filter


def selection(user: str | None, exe: Path | None) -> Selection:
    uid = None
    if user is not None:
        try:
            uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        except KeyError:
            raise UsageError(f"no user {user!r} on this host", hint="give a user name or a "
                             "uid") from None
    ident = None
    if exe is not None:
        try:
            st = os.stat(exe)
        except OSError as e:
            raise UsageError(f"--exe {exe}: {e.strerror}", hint="give the path of the "
                             "executable the processes run") from None
        ident = (st.st_dev, st.st_ino)
    return Selection(uid, ident, str(exe) if exe is not None else None)


def process_uid(pid: int) -> int | None:
    """The real uid of a process (who started it), or None once it is gone."""
    try:
        return int(procfs.parse_status(pid)["Uid"].split()[0])
    except (TargetError, KeyError, IndexError, ValueError):
        return None


def _runs(pid: int, ident: tuple[int, int]) -> bool:
    try:
        st = os.stat(f"/proc/{pid}/exe")  # follows the link to the file itself
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


def process_ids() -> list[int]:
    """Every process of the host but katana itself, in PID order."""
    return sorted(int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid())


def program_of(pid: int) -> str:
    """The name of the executable a process runs ('' for a kernel thread or one we cannot read)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
    except OSError:
        return ""


def _selected(chosen: Selection) -> list[int]:
    """Every process that passes ``--user`` and ``--exe``."""
    return [pid for pid in process_ids()
            if (chosen.uid is None or process_uid(pid) == chosen.uid)
            and (chosen.exe is None or _runs(pid, chosen.exe))]


def all_pids(program: str, build_id: str, chosen: Selection = EVERY) -> list[int]:
    """Every process we can see that runs the program: by the executable's name, or by the
    build-id (a renamed copy); with ``--exe``, those running that file. Those of another
    build are kept, to be reported as skipped."""
    if chosen.exe is not None:
        return _selected(chosen)
    found = []
    for pid in _selected(chosen):
        try:
            if program_of(pid) == program or read_build_id(f"/proc/{pid}/exe") == build_id:
                found.append(pid)
        except (KatanaError, OSError):
            continue  # kernel threads, exited processes, other users' processes, non-ELF
    return found


def library_pids(names: set[str], chosen: Selection = EVERY) -> list[int]:
    """Every process we can see that maps a library of one of these file names (or sonames),
    whichever program it runs; apply skips those that map another build of it."""
    found = []
    for pid in _selected(chosen):
        try:
            text = procfs.maps_text(pid)
        except KatanaError:
            continue  # exited, or not ours to read
        # a library replaced on disk since it was loaded reads "libkv.so (deleted)"
        if any(line.rsplit("/", 1)[-1].removesuffix(" (deleted)") in names
               for line in text.splitlines() if "/" in line):
            found.append(pid)
    return found


def stopped_threads(pid: int) -> list[int]:
    """The threads of ``pid`` in a job-control stop (State ``T``: SIGSTOP, SIGTSTP, ``apply -s``).

    A thread a tracer holds is ``t`` and is refused as traced; a thread that exits while we read
    is no longer stopped."""
    try:
        tids = procfs.thread_ids(pid)
    except TargetError:
        return []
    return [tid for tid in tids if procfs.thread_state(pid, tid) == "T"]


def refuse_stopped(pid: int) -> None:
    """TargetError for a process stopped by a signal, before katana touches it.

    The engine runs system calls through one of the target's threads and needs it to run: a
    stopped thread never runs the call (the borrowing then gives it its registers back and
    fails, ``borrow.Borrower``), and check would promise what apply cannot do. So a stopped
    process is refused while it is untouched; ``kill -CONT`` it first."""
    stopped = stopped_threads(pid)
    if stopped:
        which = "is stopped" if pid in stopped else f"has {len(stopped)} stopped thread(s)"
        raise TargetError(f"process {pid} {which} (SIGSTOP, job control or apply -s): katana "
                          "works only on a running process", hint=f"continue it first: kill -CONT "
                          f"{pid}")


def given_pids(pids: list[str]) -> list[int]:
    try:
        return list(dict.fromkeys(int(p) for p in pids))  # each once, in the order given
    except ValueError:
        raise UsageError(f"not a process id: {' '.join(pids)}",
                         hint="give numbers, or 'all'") from None


def check_filters(pids: list[str], chosen: Selection) -> None:
    if pids != ["all"] and (chosen.uid is not None or chosen.exe is not None):
        raise UsageError("--user and --exe narrow 'all'; with process ids, give only the ids "
                         "you mean", hint="katana apply PATCH all --user svc")
