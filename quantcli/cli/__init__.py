"""The command line. :func:`main` is the console script: it installs the signal handling first, so that a
SIGTERM at any moment -- even while the heavy imports load -- unwinds like Ctrl-C (exit 130, no partial file)."""

from __future__ import annotations

import signal
import sys


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # The C extensions must not be interrupted half-initialized (a KeyboardInterrupt inside onnxruntime's module
    # init surfaces as "ImportError: initialization failed"): hold SIGTERM and SIGINT while they load; a signal
    # that came meanwhile is delivered right after, at a clean point, and exits 130 like any other.
    held = {signal.SIGTERM, signal.SIGINT}
    can_hold = hasattr(signal, "pthread_sigmask")
    try:
        if can_hold:
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            import numpy  # noqa: F401  (loaded here, inside the held window)
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            from .app import run_app
        finally:
            if can_hold:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    except KeyboardInterrupt:
        sys.stderr.write("quantcli: interrupted\n")
        sys.exit(130)
    run_app()
