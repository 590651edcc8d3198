"""Normalize what exporters produce before any range is measured.

* ``Constant`` nodes that hold tensors become initializers (Paddle2ONNX keeps weights in Constant nodes;
  quantizing a weight needs it as an initializer).
* Initializers also listed as graph inputs (IR < 4 style) are dropped from the inputs, so they are
  treated as the constants they are.
* Nodes without a name get a stable one (``<OpType>_<index>``) so reports and ``--exclude`` can name them.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import PassResult, unique_name


def constants_to_initializers(model: onnx.ModelProto) -> PassResult:
    model = copy.deepcopy(model)
    g = model.graph
    keep, moved = [], []
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            arr = _constant_value(node)
            if arr is not None:
                g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
                moved.append(node.output[0])
                continue
        keep.append(node)
    if moved:
        del g.node[:]
        g.node.extend(keep)
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    dropped = len(g.input) - len(inputs)
    if dropped and model.ir_version >= 4:
        del g.input[:]
        g.input.extend(inputs)
    changed = [f"{len(moved)} Constant node(s) turned into initializers"] if moved else []
    if dropped and model.ir_version >= 4:
        changed.append(f"{dropped} initializer(s) removed from the graph inputs")
    return PassResult(model, changed)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    return None


def name_nodes(model: onnx.ModelProto) -> PassResult:
    model = copy.deepcopy(model)
    taken = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = unique_name(f"{node.op_type}_{i}", taken)
            count += 1
    return PassResult(model, [f"{count} unnamed node(s) given names"] if count else [])


def gemm_bias_to_1d(model: onnx.ModelProto) -> PassResult:
    """Reshape a constant Gemm bias of shape [1, N] or [] (broadcast to [M, N]) to 1-D [N].

    Exporters write biases of shape [1, N]; the int32 bias of a fused QGemm must be 1-D, so without this the
    Gemm could not run as an integer kernel.  Broadcasting makes both shapes compute the same output.
    """
    model = copy.deepcopy(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    changed = []
    for node in g.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits or users[node.input[2]] != 1:
            continue
        w = inits.get(node.input[1])
        if w is None or len(w.dims) != 2:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        n_out = w.dims[0] if trans_b else w.dims[1]
        c = numpy_helper.to_array(inits[node.input[2]])
        if c.ndim == 1 and c.shape[0] == n_out:
            continue
        if c.size == 1 or (c.ndim == 2 and c.shape == (1, n_out)):
            flat = np.broadcast_to(c.reshape(-1), (n_out,)).astype(c.dtype)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(flat), node.input[2]))
            changed.append(node.name)
    return PassResult(model, [f"{len(changed)} Gemm bias(es) reshaped to 1-D"] if changed else [])
