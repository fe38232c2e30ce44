"""One outcome per process for ``apply``, ``check`` and ``revert``, and their summary.

The words are docs/json.md's ``result`` values. A refusal that concerns only one process of a
list (another build, already patched, exited meanwhile) is counted and the list goes on; the
command's exit code is that of the last real failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from katana.errors import (
    AlreadyAppliedError,
    BusyError,
    KatanaError,
    MismatchError,
    TargetError,
)
from katana.target import procfs

ORDER = ("applied", "ready", "reverted", "unchanged", "skipped", "failed", "exited")
# how the summary line names each count, and whether it is always shown
_WORDS = {"applied": "patched", "ready": "ready", "reverted": "reverted",
          "unchanged": "unchanged", "skipped": "skipped", "failed": "failed", "exited": "exited"}


@dataclass
class Outcome:
    pid: int
    result: str
    code: int
    message: str
    extra: dict = field(default_factory=dict)
    error: KatanaError | None = None  # what a single-target command raises again

    def to_json(self) -> dict:
        return {"pid": self.pid, "result": self.result, "code": self.code,
                "message": self.message, **self.extra}


def exited(pid: int) -> bool:
    """Whether the process is gone (or a zombie): what it did, not what katana did to it. A
    kernel thread or a thread id is no process to patch, but has not exited."""
    try:
        state = procfs.parse_status(pid).get("State", "")
    except TargetError:
        return not procfs.pid_exists(pid)
    return state.startswith(("Z", "X"))


def alive_at_start(targets: list[int], every: bool) -> set[int]:
    """The targets that were processes when the command began. ``all`` found each in /proc;
    a PID given that is no live process then did not exit meanwhile: it is a wrong PID, and
    fails (never ``exited``, which is not counted as a failure)."""
    if every:
        return set(targets)
    return {pid for pid in targets if not exited(pid)}


def outcome_of(pid: int, error: BaseException, was_alive: bool = True) -> Outcome | None:
    """The outcome a refusal means for one process; None for a bug (raise it again).
    ``was_alive``: whether it was a process when the command began (else it cannot have
    exited meanwhile)."""
    if not isinstance(error, KatanaError):
        if not exited(pid):
            return None  # an OSError or worse on a live process: a bug, not a refusal
        error = TargetError(f"process {pid} exited while katana worked on it")
    if isinstance(error, TargetError) and was_alive and exited(pid):
        result = "exited"
    elif isinstance(error, AlreadyAppliedError):
        result = "unchanged"
    elif isinstance(error, MismatchError):
        result = "skipped"
    else:
        result = "failed"
    extra = {"busy": list(error.busy)} if isinstance(error, BusyError) else {}
    return Outcome(pid, result, error.exit_code, error.message, extra, error)


def attempt(pid: int, work: Callable[[], Outcome], was_alive: bool = True) -> Outcome:
    """Run one process's work; a refusal or the process's death becomes its outcome."""
    try:
        return work()
    except Exception as e:  # noqa: BLE001 -- outcome_of tells a bug from a refusal
        found = outcome_of(pid, e, was_alive)
        if found is None:
            raise
        return found


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    def summary(self, keys: tuple[str, ...]) -> dict[str, int]:
        """--json's ``summary``: a count for each of ``keys`` (zero included), and the total."""
        return {**{r: self.count(r) for r in keys}, "total": len(self.outcomes)}

    def line(self, shown: tuple[str, ...], total: int | None = None) -> str:
        """``3 patched, 1 skipped, 0 failed (of 4)``: the counts always shown, then any other
        that is not zero (``1 exited``)."""
        counts = {r: self.count(r) for r in ORDER if r in shown or self.count(r)}
        parts = [f"{counts[r]} {_WORDS[r]}" for r in ORDER if r in counts]
        return f"{', '.join(parts)} (of {total if total is not None else len(self.outcomes)})"

    def failure(self) -> str | None:
        """For --json's ``error`` when some processes failed: how many, and the last reason."""
        failed = [o for o in self.outcomes if o.result == "failed"]
        if not failed:
            return None
        return f"{len(failed)} of {len(self.outcomes)} process(es) failed; " \
               f"{failed[-1].pid}: {failed[-1].message}"

    def exit_code(self) -> int:
        failed = [o.code for o in self.outcomes if o.result == "failed"]
        return failed[-1] if failed else 0

    def to_json(self) -> list[dict]:
        return [o.to_json() for o in self.outcomes]

    def report_to(self, report, counted: tuple[str, ...], single: bool) -> None:
        """Fill the --json ``report`` (if any) with the results and the summary."""
        if report is None:
            return
        report.fields.pop("results", None)  # after the PO's fields, as docs/json.md shows
        report.update(results=self.to_json(), summary=self.summary(counted))
        # one PID given: its own error is the command's (no "1 of 1 failed")
        report.failure = None if single else self.failure()

    def finish(self, single: bool, shown: tuple[str, ...], say) -> int:
        """The command's end: one PID given raises its own error; a list prints the summary
        line and exits with the last real failure's code."""
        if single:
            only = self.outcomes[0]
            if only.error is not None:
                raise only.error
            return 0
        say(0, f"katana: {self.line(shown)}")
        return self.exit_code()


def tell(outcome: Outcome) -> None:
    """The stderr line of a process that was not done, in a list: ``4242: skipped: ...``."""
    if outcome.result in ("skipped", "unchanged", "failed", "exited"):
        print(f"katana: {outcome.pid}: {outcome.result}: {outcome.message}", file=sys.stderr)
