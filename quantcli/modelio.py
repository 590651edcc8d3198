"""Reading and writing ONNX models and other outputs safely.

* Every load turns the usual failures (missing file, not a protobuf, fails the checker, external data
  missing) into a one-line :class:`~quantcli.errors.QuantcliError` naming the file.
* Every write goes to a temporary file in the destination folder and is renamed into place only when
  complete, so an interrupted or failed run never leaves a half-written output, and refuses to overwrite
  one of the run's inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import onnx

from .errors import QuantcliError

SUPPORTED_OPSET_MIN = 10  # QuantizeLinear/DequantizeLinear exist from opset 10
SUPPORTED_OPSET_MAX = 23
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}  # what ONNX Runtime's CPU provider runs


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data; raise QuantcliError with a clear message on failure."""
    p = Path(path)
    if not p.exists():
        raise QuantcliError(f"{p}: no such file")
    if p.is_dir():
        raise QuantcliError(f"{p}: is a folder, expected an .onnx model file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise QuantcliError(f"{p}: not a valid ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise QuantcliError(f"{p}: not a valid ONNX model (no graph or no nodes)")
    _load_external(model, p)
    opset = model_opset(model)
    if opset < SUPPORTED_OPSET_MIN:
        raise QuantcliError(
            f"{p}: opset {opset} is too old; quantcli needs opset {SUPPORTED_OPSET_MIN}+ "
            "(upgrade with onnx.version_converter)"
        )
    if opset > SUPPORTED_OPSET_MAX:
        raise QuantcliError(f"{p}: opset {opset} is newer than quantcli supports (max {SUPPORTED_OPSET_MAX})")
    custom = sorted({(n.domain, n.op_type) for n in model.graph.node if n.domain not in KNOWN_DOMAINS})
    if custom:
        domain, op = custom[0]
        raise QuantcliError(f"{p}: uses custom op '{op}' of domain '{domain}' ({len(custom)} custom op type(s)); "
                            "ONNX Runtime cannot run it without that op's library, so it cannot be calibrated "
                            "or validated")
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise QuantcliError(f"{p}: fails the ONNX checker: {_first_line(exc)}") from None
    return model


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    if not tensors:
        return
    for t in tensors:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if not (path.parent / loc).exists():
            raise QuantcliError(f"{path}: external data file '{loc}' for tensor '{t.name}' is missing")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise QuantcliError(f"{path}: cannot read external data: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def check_output_path(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Validate an output path before any work: folder exists and is writable, not one of the inputs."""
    o = Path(out)
    for i in inputs:
        if i is not None and Path(i).exists() and o.exists() and os.path.samefile(o, i):
            raise QuantcliError(f"{o}: output path is the same as the input; choose another output file")
        if i is not None and o.resolve() == Path(i).resolve():
            raise QuantcliError(f"{o}: output path is the same as the input; choose another output file")
    parent = o.parent if str(o.parent) else Path(".")
    if not parent.exists():
        raise QuantcliError(f"{o}: output folder '{parent}' does not exist")
    if not parent.is_dir():
        raise QuantcliError(f"{o}: '{parent}' is not a folder")
    if not os.access(parent, os.W_OK):
        raise QuantcliError(f"{o}: output folder '{parent}' is not writable")
    if o.is_dir():
        raise QuantcliError(f"{o}: is a folder, expected a file path")
    return o


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent if str(dest.parent) else ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def serialize_model(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization (protobuf map fields sorted)."""
    return model.SerializeToString(deterministic=True)


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size of a model file plus the external data files it references."""
    p = Path(path)
    size = p.stat().st_size
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:
        return size
    from onnx.external_data_helper import uses_external_data

    seen = set()
    for t in m.graph.initializer:
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if loc and loc not in seen and (p.parent / loc).exists():
                seen.add(loc)
                size += (p.parent / loc).stat().st_size
    return size
