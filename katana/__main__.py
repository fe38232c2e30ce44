"""Allow ``python -m katana``; also the ``katana`` console script (``run``)."""

import os
import signal
import sys


def run() -> int:
    # Until main() has installed its handlers, a SIGINT would raise KeyboardInterrupt inside
    # some import (a traceback, or SIGABRT inside a C extension's initialisation) and SIGTERM
    # would kill katana with no word: hold them; main() unblocks them once ready.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                              signal.SIGQUIT})
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
