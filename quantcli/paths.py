"""Where a command reads and writes: every path checked once, before any work, and written safely.

Rules (:func:`check_io` applies them to all inputs and outputs of a command at its start):

* every input exists; a model, artifact, recipe or labels input is a file (data may be a folder);
* every output differs from every input and from every other output, compared by resolved path *and* by
  ``(st_dev, st_ino)``, so a hard link or a symlink to an input is caught;
* an output's folder exists and is writable, the output is not a folder, and its name fits the file
  system's NAME_MAX;
* ``-`` is stdout, for reports only (:data:`REPORTS`);
* a symlink is written through: the atomic write happens next to its target and the link stays a link;
* a character device or a FIFO (``/dev/null``, ``/dev/stdout``) is written through (opened and written),
  never replaced; any other non-regular file (socket, block device) is refused.

Writes (:func:`write_bytes_atomic`) go to a temporary file next to the destination, get the mode the umask
gives (not mkstemp's 0600), and are renamed into place only when complete.  A full disk or another OS
failure becomes a one-line :class:`~quantcli.errors.QuantcliError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .errors import QuantcliError

STDOUT = "-"
REPORTS = ("--json", "--junit", "--markdown")  # the outputs that may be "-" (stdout)
FOLDER_INPUTS = ("data", "evaluation data", "calibration data")  # inputs that may be folders
_TMP_SUFFIX = ".tmp"
_TMP_RANDOM = 8  # characters tempfile adds

_umask = os.umask(0)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask

_live_temps: set[Path] = set()  # temporary files being written (removed by the signal backstop)

def is_stdout(path) -> bool:
    return path is not None and str(path) == STDOUT


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return None  # devices and FIFOs: /dev/stdin and /dev/stdout may be one terminal, which is fine
    return st.st_dev, st.st_ino


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_input(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise QuantcliError(f"{p}: no such file ({what})")
    if p.is_dir() and what not in FOLDER_INPUTS:
        raise QuantcliError(f"{p}: is a folder, expected a {what} file")
    return p


def destination(path) -> Path:
    """Where writing ``path`` really writes: a symlink's target (followed to the end), else the path itself."""
    p = Path(path)
    return p.resolve() if p.is_symlink() else p


def check_output(path, what: str = "output") -> Path:
    """One output on its own: folder exists and is writable, not a folder, a name that fits, a writable kind."""
    o = Path(path)
    dest = destination(o)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        raise QuantcliError(f"{o}: output folder '{parent}' does not exist")
    if not parent.is_dir():
        raise QuantcliError(f"{o}: '{parent}' is not a folder")
    if dest.is_dir():
        raise QuantcliError(f"{o}: is a folder, expected a file path ({what})")
    if dest.exists():
        mode = dest.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            if not os.access(dest, os.W_OK):
                raise QuantcliError(f"{o}: not writable ({what})")
            return o
        if not stat.S_ISREG(mode):
            raise QuantcliError(f"{o}: is not a regular file, a character device or a FIFO; refusing to "
                                f"replace it ({what})")
    if len(os.fsencode(dest.name)) > _name_max(parent):
        raise QuantcliError(f"{o}: file name too long ({len(os.fsencode(dest.name))} bytes, the file system "
                            f"allows {_name_max(parent)})")
    if not os.access(parent, os.W_OK):
        raise QuantcliError(f"{o}: output folder '{parent}' is not writable")
    return o


def check_io(inputs: Mapping[str, object] | Iterable[tuple[str, object]],
             outputs: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """Check all inputs and outputs of one command before it does any work (see the module's rules).

    ``inputs`` / ``outputs``: (what, path) pairs; a None path is skipped.  ``what`` names the path in messages
    (``"model"``, ``"data"``, ``"--json"``...)."""
    ins = [(w, Path(p)) for w, p in (inputs.items() if isinstance(inputs, Mapping) else inputs) if p is not None]
    outs = [(w, p) for w, p in (outputs.items() if isinstance(outputs, Mapping) else outputs) if p is not None]
    for what, p in ins:
        check_input(p, what)
    if sum(is_stdout(p) for _, p in outs) > 1:
        raise QuantcliError("only one output can be '-' (stdout)")
    seen: list[tuple[str, Path, Path, tuple[int, int] | None]] = []
    for what, p in ins:
        seen.append((what, p, p.resolve(), _identity(p)))
    n_inputs = len(seen)
    for what, raw in outs:
        if is_stdout(raw):
            if what not in REPORTS:
                raise QuantcliError(f"{what} -: only a report ({', '.join(REPORTS)}) can go to stdout; "
                                    "give a file path")
            continue
        o = check_output(raw, what)
        real, ident = o.resolve(), _identity(o)
        for k, (w2, p2, real2, ident2) in enumerate(seen):
            if real == real2 or (ident is not None and ident == ident2):
                kind = "input" if k < n_inputs else "output"
                raise QuantcliError(f"{o}: the {what} output is the same file as the {w2} {kind} {p2}; "
                                    "choose another file")
        seen.append((what, o, real, ident))


def check_output_path(out, *inputs) -> Path:
    """Validate one output path against some inputs (the Python API's check; commands use :func:`check_io`)."""
    check_io([(f"input {k + 1}", i) for k, i in enumerate(inputs) if i is not None and Path(i).exists() and not Path(i).is_dir()],
             [("output", out)])
    return Path(out)


def os_error(dest, exc: OSError) -> QuantcliError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and str(dest) == "stdout":
        return QuantcliError("stdout: no space left on the device it points to (the environment, not the inputs)")
    if exc.errno == errno.EPIPE:
        return QuantcliError(f"{dest}: the reading end of the pipe closed before quantcli finished writing")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuantcliError(f"{dest}: no space left on the device (the disk is full, not a problem with the "
                             "inputs); free some space and run again; nothing was written")
    if exc.errno == errno.ENAMETOOLONG:
        return QuantcliError(f"{dest}: file name too long for this file system")
    return QuantcliError(f"{dest}: cannot write: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (or its symlink target); rename it into place only if the block
    succeeds.  The temporary name is shortened so it fits NAME_MAX whenever the destination's name does."""
    dest = destination(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    room = _name_max(parent) - 2 - len(_TMP_SUFFIX) - _TMP_RANDOM  # ".{stem}.{random}.tmp"
    stem = os.fsdecode(os.fsencode(dest.name)[:max(room, 1)])
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=_TMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise os_error(dest, exc) from None
    tmp_path = Path(tmp)
    _live_temps.add(tmp_path)
    try:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        yield tmp_path
        os.replace(tmp_path, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise os_error(dest, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        _live_temps.discard(tmp_path)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path``: stdout for ``-``, through for devices/FIFOs, else atomically (see module)."""
    if is_stdout(path):
        write_stdout(data)
        return
    dest = destination(path)
    if dest.exists() and not stat.S_ISREG(dest.stat().st_mode):
        try:
            with open(dest, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise os_error(path, exc) from None
        return
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_stdout(data: bytes) -> None:
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except OSError as exc:
        raise os_error("stdout", exc) from None


def remove_live_temps() -> None:
    """Remove the temporary files being written (for an exit that cannot unwind)."""
    for p in list(_live_temps):
        with contextlib.suppress(OSError):
            p.unlink()
