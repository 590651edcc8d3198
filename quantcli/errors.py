"""One error model for the whole tool.

* :class:`QuantcliError` -- a user mistake or bad input (missing file, wrong data, bad recipe).
  The CLI prints its one-line message and exits with :attr:`ExitCode.USAGE` (2).
* :class:`CheckFailed` -- the tool worked but an acceptance criterion did not hold
  (accuracy drop over ``--max-drop``...). Exit :attr:`ExitCode.CHECK_FAILED` (1).
* :class:`InternalError` -- a bug or an unexpected failure inside quantcli or ONNX Runtime
  (for example a produced model that fails validation). Exit :attr:`ExitCode.INTERNAL` (3).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    INTERNAL = 3
    INTERRUPTED = 130


class QuantcliError(Exception):
    """A user-facing error: bad input, bad option, missing file. Message is one line."""

    exit_code = ExitCode.USAGE


class CheckFailed(QuantcliError):
    """An acceptance criterion (e.g. ``--max-drop``) did not hold."""

    exit_code = ExitCode.CHECK_FAILED


class InternalError(Exception):
    """Something quantcli should have handled; reported as a bug."""

    exit_code = ExitCode.INTERNAL
