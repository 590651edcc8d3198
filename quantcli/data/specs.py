"""The model's inputs as data sources see them: name, dtype, shape (fixed or symbolic dims), the vocabulary of an
embedding an integer input indexes, the longest length a position table allows, and the class count."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from .. import external


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int = fixed dim (>= 1), str = symbolic name, None = unknown
    vocab: int | None = None  # integer ids indexing an embedding of this many rows
    max_len: tuple[tuple[int, int], ...] = ()  # (axis, longest length): a position table sliced to this axis
    scalar: bool = False  # declared rank 0 (e.g. silero-vad's `sr`): one value per sample, fed as a 0-d array

    @property
    def batch_dim(self) -> int | None:
        """Fixed size of the first axis, or None when it is dynamic."""
        if not self.shape:
            return None
        d = self.shape[0]
        return d if isinstance(d, int) else None


def vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer graph inputs used directly as the indices of a Gather on a constant table (an embedding):
    input name -> the table's size along the gathered axis (valid ids are in [-size, size))."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = inits[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                size = int(dims[axis])
                out[node.input[1]] = min(size, out.get(node.input[1], size))
    return out


def class_count(model: onnx.ModelProto) -> int | None:
    """Classes of the first output (its elements per sample), when every non-batch dim is fixed."""
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) < 2 or not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    return int(np.prod([d.dim_value for d in dims[1:]]))


def max_lengths(model: onnx.ModelProto) -> dict[str, dict[int, int]]:
    """Input axes whose length slices a constant table (position embeddings): ``Slice(table, starts,
    Shape(input, start=k, end=k+1), axes)`` -> {input: {k: rows of the table along the sliced axis}}."""
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {vi.name for vi in model.graph.input}
    shape_of: dict[str, tuple[str, int]] = {}  # tensor -> (input, axis) it holds the length of
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in graph_inputs:
            att = {a.name: a.i for a in node.attribute}
            if "start" in att and att.get("end", att["start"] + 1) == att["start"] + 1:
                shape_of[node.output[0]] = (node.input[0], att["start"])
    out: dict[str, dict[int, int]] = {}
    for node in model.graph.node:
        if node.op_type != "Slice" or len(node.input) < 3 or node.input[0] not in inits \
                or node.input[2] not in shape_of:
            continue
        dims = tuple(inits[node.input[0]].dims)
        axis = 0
        if len(node.input) > 3 and node.input[3] in inits:
            axes = external.array(inits[node.input[3]]).ravel()
            if axes.size != 1:
                continue
            axis = int(axes[0])
        if dims and -len(dims) <= axis < len(dims):
            name, k = shape_of[node.input[2]]
            out.setdefault(name, {})[k] = min(int(dims[axis]), out.get(name, {}).get(k, int(dims[axis])))
    return out


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    vocab = vocab_sizes(model)
    lengths = max_lengths(model)
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            # exporters spell a dynamic dim as dim_param (any name), an empty dim, or dim_value -1 or 0
            # (Paddle2ONNX writes -1): only a positive dim_value is fixed
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        specs.append(InputSpec(vi.name, dtype, tuple(dims), vocab.get(vi.name),
                               tuple(sorted(lengths.get(vi.name, {}).items())),
                               scalar=tt.HasField("shape") and not dims))
    return specs


def fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
