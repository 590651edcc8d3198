"""INT8 coverage: what really runs in integer kernels once ONNX Runtime has optimized the model.

ONNX Runtime fuses DequantizeLinear -> op -> QuantizeLinear groups into integer kernels at session
creation (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QGemm, QLinearAdd, ...).  Whatever it
cannot fuse runs in float with the Q/DQ still around it.  This module reads the optimized graph and
counts, weighted by multiply-accumulates (MACs) of the heavy ops, what share runs in integer kernels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from ..errors import QuantcliError
from ..runtime.session import optimized_model, tensor_shapes
from ..transforms.graph import GraphIndex, attr, infer_with_input_shapes

INTEGER_OPS = {
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "MatMulNBits",
    "QLinearConvTranspose", "QAttention", "NhwcQLinearConv",
}
HEAVY = {"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulInteger", "ConvInteger"}


@dataclasses.dataclass
class Coverage:
    integer_nodes: dict[str, int]       # op type -> count, in the optimized graph
    float_heavy: list[str]              # heavy nodes left in float
    dq_left: int                        # DequantizeLinear on activations left: a float op pays Q/DQ there
    macs_total: int
    macs_integer: int

    @property
    def mac_share(self) -> float:
        return self.macs_integer / self.macs_total if self.macs_total else 0.0


def heavy_macs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
               feeds: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """MACs of each Conv/ConvTranspose/MatMul/Gemm node for concrete input shapes.

    Shapes come from ONNX shape inference; where it leaves a heavy node's shapes unknown (dims that flow
    through Shape/Slice/broadcast, often with a symbolic dim set to 1) and ``feeds`` are given, from one
    run of the model on them."""
    m = infer_with_input_shapes(model, input_shapes)
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    idx = GraphIndex(m.graph)
    if feeds is not None:
        unknown = sorted({t for n in m.graph.node if n.op_type in HEAVY for t in (n.input[0], n.output[0])
                          if -1 in shapes.get(t, [-1]) and t not in idx.initializers})
        if unknown:
            try:
                shapes.update({k: list(v) for k, v in tensor_shapes(model, feeds, unknown).items()})
            except QuantcliError:
                pass  # the model does not run on these inputs: count what shape inference resolved
    macs = {}
    for node in m.graph.node:
        if node.op_type not in HEAVY:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(_source(node.input[1], idx)) if len(node.input) > 1 else None
        a = shapes.get(node.input[0])
        if not out or -1 in out:
            continue
        n_out = int(np.prod(out))
        if node.op_type in ("Conv", "ConvInteger") and w and -1 not in w:
            macs[node.name] = n_out * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose" and w and -1 not in w and a and -1 not in a:
            macs[node.name] = int(np.prod(a)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm" and a and -1 not in a:
            k = a[0] if attr(node, "transA", 0) else a[-1]
            macs[node.name] = n_out * int(k)
        elif node.op_type in ("MatMul", "MatMulInteger") and a and -1 not in a:
            macs[node.name] = n_out * int(a[-1])
    return macs


def _source(name: str, idx: GraphIndex) -> str:
    """Look through a DequantizeLinear to the stored weight (for shapes)."""
    prod = idx.producer.get(name)
    if prod is not None and prod.op_type == "DequantizeLinear":
        return prod.input[0]
    return name


def int8_coverage(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                  reference: onnx.ModelProto | None = None, feeds: dict[str, np.ndarray] | None = None) -> Coverage:
    """Optimize ``model`` with ONNX Runtime (CPU) and measure what runs in integer kernels.

    MACs are counted on ``reference`` (the float model the quantized one was made from, same node names)
    when given, since shape inference sees through float graphs best; a rewritten node named
    ``<name>_MatMulInteger`` (dynamic quantization) counts for ``<name>``.
    """
    macs = heavy_macs(reference if reference is not None else model, input_shapes, feeds)
    opt = optimized_model(model, level="extended")
    integer_nodes: dict[str, int] = {}
    for n in opt.graph.node:
        if n.op_type in INTEGER_OPS:
            integer_nodes[n.op_type] = integer_nodes.get(n.op_type, 0) + 1
    inits = {t.name for t in opt.graph.initializer}
    dq_left = sum(1 for n in opt.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
    integer = 0
    float_heavy = []
    for name, fused in _integer_status(model, opt).items():
        if fused:  # keyed by the quantized model's own name, or by the float node it replaced
            integer += macs.get(name, macs.get(name.removesuffix("_MatMulInteger"), 0))
        else:
            float_heavy.append(name)
    return Coverage(integer_nodes, float_heavy, dq_left, sum(macs.values()), integer)


def integer_status(model: onnx.ModelProto, nodes: list[str]) -> dict[str, bool]:
    """For ``nodes`` (heavy nodes given Q/DQ in ``model``): does ONNX Runtime run each in an integer kernel?
    Where not, their Q/DQ only cost time and precision."""
    status = _integer_status(model, optimized_model(model, level="extended"))
    return {n: status.get(n, True) for n in nodes}


def _integer_status(model: onnx.ModelProto, opt: onnx.ModelProto) -> dict[str, bool]:
    """For each heavy node of ``model``: does it run in an integer kernel in ``opt``, ONNX Runtime's
    optimized graph of it?  Fused kernels keep the node's name; else found by the tensor it writes."""
    producers = {o: n for n in opt.graph.node for o in n.output}
    by_name = {n.name: n for n in opt.graph.node}
    status: dict[str, bool] = {}
    for node in model.graph.node:
        if node.op_type not in HEAVY:
            continue
        out = node.output[0]
        fused = by_name.get(node.name) or producers.get(f"{out}_quantized") or producers.get(out)
        status[node.name] = node.op_type in INTEGER_OPS or (fused is not None and fused.op_type in INTEGER_OPS)
    return status
