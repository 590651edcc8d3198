"""External data: models whose weights live in a file beside the model (past protobuf's 2 GB limit).

In memory, an external tensor keeps no bytes: its ``location`` is rewritten at load (:func:`attach`) to the
data file's absolute path without the leading ``/``, a path relative to the root.  So every copy of the model
(passes deepcopy freely: such a tensor is a few hundred bytes) still knows where its weights are:

* :func:`array` reads one tensor as a copy-on-write memory map (nothing is read until used, nothing written
  back), so no step holds all the weights at once;
* ONNX Runtime sessions built from the serialized model read them with ``/`` as their external-data folder
  (:func:`session_folder`);
* :func:`stage` writes a model with external data: every initializer of at least :data:`SIZE_THRESHOLD`
  bytes goes, in graph order, to one ``<model file name>.data`` beside the model at an offset aligned to
  :data:`ALIGN` (:data:`SMALL_ALIGN` below it) so ONNX Runtime can memory-map it, copied in chunks from the
  file it lives in, or from memory and then dropped from memory.  Model and data go to temporary names
  first; the caller checks that pair inside the ``with`` block, and at its end the data, then the model, are
  renamed into place.  The model names its data relative to itself.  Same model in, same bytes out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import QuantcliError
from . import paths
from .paths import atomic_output, destination

SIZE_THRESHOLD = 1024   # bytes: smaller initializers stay inside the model file (as onnx.save_model does)
ALIGN = 1 << 16         # offsets of tensors at least this large: the allocation granularity of mmap everywhere
SMALL_ALIGN = 16
CHUNK = 1 << 26         # bytes copied at a time from one data file to another
PROTOBUF_LIMIT = (1 << 31) - 1
FOLDER_OPTION = "session.model_external_initializers_file_folder_path"


def _entries(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_external(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Initializers of ``graph`` and of its subgraphs (tensor attributes are never external: see :func:`attach`)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from tensors(g)


def _attribute_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    for node in graph.node:
        for a in node.attribute:
            yield from ([a.t] if a.HasField("t") else []) + list(a.tensors)
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _attribute_tensors(g)


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in tensors(model.graph))


def nbytes(t: TensorProto) -> int:
    """Bytes of a tensor's data (stored, or what its dims and type take)."""
    if is_external(t):
        return int(_entries(t).get("length") or _dense_size(t))
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return _dense_size(t)


def _dense_size(t: TensorProto) -> int:
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(t.data_type)
    count = int(np.prod(t.dims)) if t.dims else 1
    if bits:
        return (count * bits + 7) // 8
    return count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(nbytes(t) for t in model.graph.initializer)


def attach(model: onnx.ModelProto, path: Path) -> None:
    """Point the external tensors of ``model`` (loaded from ``path`` without its data) at their files, checked:
    a missing, unreadable or too short file is a one-line error naming it."""
    for t in [t for t in tensors(model.graph) if is_external(t)]:
        _attach_one(t, path)
    for t in [t for t in _attribute_tensors(model.graph) if is_external(t)]:  # small: read into the model
        _attach_one(t, path)
        t.raw_data = read_bytes(t)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def _attach_one(t: TensorProto, path: Path) -> None:
    folder = path.parent
    info = _entries(t)
    loc = info.get("location", "")
    if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
        raise QuantcliError(f"{path}: tensor '{t.name}' has external data location '{loc}'; it must be a file "
                            "name relative to the model's folder")
    file = folder / loc
    if not file.is_file():
        raise QuantcliError(f"{path}: external data file '{loc}' for tensor '{t.name}' is missing")
    try:
        offset, length = int(info.get("offset") or 0), nbytes(t)
    except ValueError:
        raise QuantcliError(f"{path}: tensor '{t.name}' has an external data offset or length that is not a "
                            "number") from None
    size = file.stat().st_size
    if offset + length > size:
        raise QuantcliError(f"{file}: truncated external data file: tensor '{t.name}' needs bytes "
                            f"{offset}..{offset + length}, the file has {size}")
    _set_entries(t, str(file.resolve()).lstrip("/"), offset, length)


def _set_entries(t: TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=key, value=value)
    t.data_location = TensorProto.EXTERNAL


def file_of(t: TensorProto) -> Path:
    """The data file of an attached external tensor."""
    return Path("/") / _entries(t)["location"]


def data_files(model: onnx.ModelProto) -> list[Path]:
    return sorted({file_of(t) for t in tensors(model.graph) if is_external(t)})


def array(t: TensorProto) -> np.ndarray:
    """The tensor's values; an attached external tensor as a copy-on-write memory map of its file."""
    if not is_external(t):
        return onnx.numpy_helper.to_array(t)
    info = _entries(t)
    dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.BFLOAT16) or dtype.kind not in "fiub":
        inline = TensorProto()
        inline.CopyFrom(t)
        inline.raw_data = read_bytes(t)
        inline.data_location = TensorProto.DEFAULT
        del inline.external_data[:]
        return onnx.numpy_helper.to_array(inline)
    shape = tuple(t.dims)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.asarray(np.memmap(file_of(t), dtype=dtype.newbyteorder("<"), mode="c",
                                offset=int(info.get("offset") or 0), shape=shape))


def read_bytes(t: TensorProto) -> bytes:
    info = _entries(t)
    with open(file_of(t), "rb") as f:
        f.seek(int(info.get("offset") or 0))
        return f.read(nbytes(t))


def session_folder(model: onnx.ModelProto) -> str | None:
    """The external-data folder an ONNX Runtime session built from the serialized ``model`` needs (or None)."""
    return "/" if has_external(model) else None


def needs_external(model: onnx.ModelProto, *others: onnx.ModelProto) -> bool:
    """Whether ``model`` is written with external data: when it (or the model it was made from) has some, or
    when it would not fit in one protobuf."""
    return any(has_external(m) for m in (model, *others)) or model.ByteSize() > PROTOBUF_LIMIT


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose in-memory initializers of at least SIZE_THRESHOLD bytes are stubs (name, type and
    shape, no data), for checks that read the graph only (type inference), without copying the weights."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for t in model.graph.initializer:
        if is_external(t) or nbytes(t) < SIZE_THRESHOLD:
            light.graph.initializer.append(t)
            continue
        stub = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=TensorProto.EXTERNAL)
        stub.external_data.add(key="location", value="stub")
        light.graph.initializer.append(stub)
    return light


def _copy_fields(src, dst, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if (fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def check_output(out: str | os.PathLike, model: onnx.ModelProto, *inputs) -> None:
    """The data file written beside ``out`` must be a writable file path that is none of the inputs, nor the
    data files ``model`` (an input) reads: writing it would pull the weights from under the input model."""
    if str(out) == "-" or not destination(out).parent.is_dir():
        raise QuantcliError(f"{out}: a model with external data is written as two files (the model and "
                            f"{data_path('model.onnx').name.replace('model.onnx', '<model>')} beside it); "
                            "give a file path")
    dp = data_path(out)
    paths.check_output(dp, "external data")
    for f in data_files(model) + [Path(i) for i in inputs if i]:
        if dp.exists() and f.exists() and os.path.samefile(dp, f):
            raise QuantcliError(f"{dp}: convert would write the output's external data over {f}, which the "
                                f"input reads; choose another output name")


def data_path(out: str | os.PathLike) -> Path:
    """The external data file written beside ``out``."""
    dest = destination(out)
    return dest.with_name(dest.name + ".data")


class Staged:
    """A model and its data written to temporary files beside the destination (see :func:`stage`)."""

    def __init__(self, model: onnx.ModelProto, model_path: Path) -> None:
        self.model, self.model_path = model, model_path


@contextlib.contextmanager
def stage(model: onnx.ModelProto, out: str | os.PathLike) -> Iterator[Staged]:
    """Write ``model`` (changed in place: its large initializers become external) to temporary files beside
    ``out``, the model file naming its temporary data file, so the caller can load and check the pair as it
    is.  When the block ends without error the model names the final data file and both are renamed into
    place, the data first; otherwise both are removed."""
    final = data_path(out)
    with atomic_output(out) as model_tmp, atomic_output(final) as data_tmp:
        _write_data(model, data_tmp)
        model_tmp.write_bytes(model.SerializeToString(deterministic=True))
        yield Staged(model, model_tmp)
        for t in tensors(model.graph):
            if is_external(t):
                info = _entries(t)
                _set_entries(t, final.name, int(info["offset"]), int(info["length"]))
        model_tmp.write_bytes(model.SerializeToString(deterministic=True))


def _write_data(model: onnx.ModelProto, data_tmp: Path) -> None:
    """Every initializer of at least SIZE_THRESHOLD bytes to ``data_tmp``, in order, from its file or memory."""
    with open(data_tmp, "wb") as f:
        for t in tensors(model.graph):
            if t.data_type == TensorProto.STRING or (nbytes(t) < SIZE_THRESHOLD and not is_external(t)):
                continue
            pad = -f.tell() % (ALIGN if nbytes(t) >= ALIGN else SMALL_ALIGN)
            f.write(b"\0" * pad)
            offset = f.tell()
            if is_external(t):
                _copy(t, f)
            else:
                f.write(_raw(t))
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            _set_entries(t, data_tmp.name, offset, f.tell() - offset)


def _raw(t: TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t)).raw_data


def _copy(t: TensorProto, f) -> None:
    info = _entries(t)
    left = nbytes(t)
    with open(file_of(t), "rb") as src:
        src.seek(int(info.get("offset") or 0))
        while left > 0:
            block = src.read(min(CHUNK, left))
            if not block:
                raise QuantcliError(f"{file_of(t)}: truncated external data file (tensor '{t.name}')")
            f.write(block)
            left -= len(block)
