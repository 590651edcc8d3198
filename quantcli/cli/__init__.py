"""The command line. :func:`main` is the console script: it installs the signal handling first, so that a
SIGTERM at any moment -- even while the heavy imports load, or while ONNX Runtime is inside one long run --
exits 130 within about GRACE_SECONDS, with no partial file and no traceback, however many signals arrive."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_SECONDS = 1.5  # after a signal, the longest a stuck native call may keep the process alive
_signalled: list[int] = []


def _terminate(signum, frame) -> None:
    """SIGTERM / SIGINT: unwind like Ctrl-C (exit 130, the file being written removed).  A second signal while
    that unwinding runs is ignored: it must not interrupt the clean-up (a traceback, exit 143)."""
    if _signalled:
        return
    _signalled.append(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):  # ignored from now on, also while the interpreter shuts down
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch(fd: int) -> None:
    """The C-level signal handler writes to ``fd`` at once, even while the main thread is inside ONNX Runtime
    (where Python handlers wait): ask the running inference to stop (RunOptions.terminate), and if the process
    has still not exited after GRACE_SECONDS (a long native call), remove the temporary file and exit 130."""
    while True:
        try:
            got = os.read(fd, 64)
        except OSError:
            return
        if not any(b in (signal.SIGTERM, signal.SIGINT) for b in got):
            continue
        session = sys.modules.get("quantcli.runtime.session")
        if session is not None:
            session.terminate_runs()
        time.sleep(GRACE_SECONDS)
        paths = sys.modules.get("quantcli.paths")
        if paths is not None:
            paths.remove_live_temps()
        os.write(2, b"quantcli: interrupted; the output being written was removed\n")
        os._exit(130)


def _install() -> None:
    """Handlers, the wakeup pipe, and the watcher thread -- started while SIGTERM/SIGINT are blocked, so the
    thread inherits the block: signals always land on the main thread (never on the watcher, which would let
    the main thread's handler run in the middle of a C extension's import)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _terminate)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(r,), name="quantcli-signals", daemon=True).start()


def main() -> None:
    # The C extensions must not be interrupted half-initialized (a KeyboardInterrupt inside onnxruntime's module
    # init surfaces as "ImportError: initialization failed"): hold SIGTERM and SIGINT while they load; a signal
    # that came meanwhile is delivered right after, at a clean point, and exits 130 like any other.
    held = {signal.SIGTERM, signal.SIGINT}
    can_hold = hasattr(signal, "pthread_sigmask")
    try:
        if can_hold:
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            _install()
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
    try:
        run_app()
    except KeyboardInterrupt:  # a signal between two handlers (e.g. right before run_app's own)
        sys.stderr.write("quantcli: interrupted\n")
        sys.exit(130)
    finally:  # the command is over (outputs complete or removed): a signal now must not kill the exit itself
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if _signalled:  # interrupted and cleaned up: leave now with 130, not through the interpreter's shutdown,
            _exit_now(130)  # where a rare late KeyboardInterrupt made CPython exit via SIGINT (-2) under load


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
