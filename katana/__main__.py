"""Allow ``python -m katana``; also the ``katana`` console script (``run``)."""

import signal


def run() -> int:
    # Until main() has installed its handlers, a SIGINT would raise KeyboardInterrupt inside
    # some import (a traceback, or SIGABRT inside a C extension's initialisation) and SIGTERM
    # would kill katana with no word: hold them; main() unblocks them once ready.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                              signal.SIGQUIT})
    from katana.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
