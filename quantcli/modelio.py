"""Reading and writing ONNX models and other outputs safely.

* Every load turns the usual failures (missing file, not a protobuf, fails the checker, external data
  missing or truncated) into a one-line :class:`~quantcli.errors.QuantcliError` naming the file.
* External data stays in its file (:mod:`quantcli.external`): the model in memory holds the graph and the
  small tensors, and each weight is read when a step needs it.
* Writes (re-exported from :mod:`quantcli.paths`, which owns output-path safety) go to a temporary file
  in the destination folder and are renamed into place only when complete.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import onnx

from . import external
from .errors import QuantcliError
from .paths import atomic_output, check_output_path, write_bytes_atomic, write_text_atomic  # noqa: F401

SUPPORTED_OPSET_MIN = 10  # QuantizeLinear/DequantizeLinear exist from opset 10
SUPPORTED_OPSET_MAX = 23
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}  # what ONNX Runtime's CPU provider runs


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike, model: onnx.ModelProto) -> str:
    """sha256 of a model file; for a model with external data (``model``, loaded from ``path``), of the model file
    and then each data file it reads, so that changed weights change it (read once per command: cached while the
    files' sizes and times stay the same)."""
    files = [Path(path)] + external.data_files(model)
    if len(files) == 1:
        return file_sha256(path)
    return _files_sha256(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=8)
def _files_sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
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
    external.attach(model, p)
    _name_dynamic_dims(model)
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
        try:  # a model with external data is checked from its file, where the checker finds the data
            onnx.checker.check_model(str(p) if external.has_external(model) else model)
        except Exception as exc:
            raise QuantcliError(f"{p}: fails the ONNX checker: {_first_line(exc)}") from None
    return model


def _name_dynamic_dims(model: onnx.ModelProto) -> None:
    """Exporters spell a dynamic input/output dim as dim_value -1 or 0 (Paddle2ONNX: -1); ONNX Runtime takes
    0 as a fixed size of 0, so the whole model would refuse every batch.  Name such dims (dim_param) instead."""
    for vi in list(model.graph.input) + list(model.graph.output):
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = f"{vi.name}_dim{i}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


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
