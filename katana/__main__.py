"""Allow ``python -m katana``; also the ``katana`` console script (``run``)."""

# First of all, before any import written in Python (``signal`` itself imports enum): until
# main() has installed its handlers, a SIGINT would raise KeyboardInterrupt inside some import
# (a traceback, or SIGABRT inside a C extension's initialisation) and SIGTERM would kill katana
# with no word: hold them; main() unblocks them once ready. _signal is the C module, already
# loaded by the interpreter.
import _signal

_signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP,
                                            _signal.SIGQUIT})

import os  # noqa: E402
import sys  # noqa: E402


def run() -> int:
    # (held again: run() may be called by an embedding program after main() let them go)
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM,
                                                _signal.SIGHUP, _signal.SIGQUIT})
    if {"apply", "check", "revert", "-p"} & set(sys.argv[1:]):
        # Ahead of the target's threads before katana's own imports, which are most of its CPU
        # time (see katana.cli._outrank_target; root only, ignored otherwise).
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -15)
        except OSError:
            pass
    from katana.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
