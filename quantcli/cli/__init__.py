"""The command line. :func:`main` is the console script: it installs the signal handling first, so that a
SIGTERM at any moment -- even while the heavy imports load -- unwinds like Ctrl-C (exit 130, no partial file)."""

from __future__ import annotations

import signal
import sys


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from .app import run_app
    except KeyboardInterrupt:
        sys.stderr.write("quantcli: interrupted\n")
        sys.exit(130)
    run_app()
