"""Dynamic INT8: weights quantized offline, activations quantized at run time.

For each MatMul with a constant 2-D weight B (and each Gemm with transA=0, rewritten as a MatMul):

    A -> DynamicQuantizeLinear -> (A_q uint8, a_scale, a_zp)            (one per activation tensor)
    MatMulInteger(A_q, B_q int8, a_zp, b_zp) -> int32 -> Cast(float) -> Mul(a_scale * b_scale) [-> Add bias]

ONNX Runtime fuses this into DynamicQuantizeMatMul / MatMulIntegerToFloat.  Weights are int8 symmetric,
per output column (``axis=1``) or per tensor.  Conv stays float: ConvInteger is slower than the FP32
kernels in ONNX Runtime, so quantizing it dynamically would only cost time.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..transforms.graph import EventKind, GraphIndex, PassResult, attr, float_tensors, remove_unused_initializers
from . import params as qp
from .policy import is_excluded
from .reasons import EXCLUDED, Reason, Why


def quantize_dynamic(model: onnx.ModelProto, *, per_channel: bool = True, reduce_range: bool = False,
                     exclude: tuple[str, ...] = ()) -> tuple[PassResult, dict[str, str], dict[str, Why]]:
    """Returns (result, quantized node -> op type, float node -> reason)."""
    model = copy.deepcopy(model)
    g = model.graph
    idx = GraphIndex(g)
    floats = float_tensors(model)
    result = PassResult(model)
    quantized: dict[str, str] = {}
    kept: dict[str, Why] = {}
    dql: dict[str, tuple[str, str, str]] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in g.node:
        why = _reason(node, idx, floats, exclude)
        if why is None and node.op_type in ("MatMul", "Gemm"):
            new_nodes.extend(_rewrite(node, idx, dql, new_inits, per_channel, reduce_range))
            quantized[node.name] = node.op_type
            continue
        if why and node.op_type in ("MatMul", "Gemm", "Conv"):
            kept[node.name] = why
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    remove_unused_initializers(g)
    result.add(EventKind.QUANTIZED, "", f"{len(quantized)} MatMul/Gemm node(s) quantized dynamically")
    return result, quantized, kept


def _reason(node, idx: GraphIndex, floats: set[str], exclude) -> Why | None:
    if node.op_type == "Conv":
        return Why(Reason.DYNAMIC_SCOPE, "dynamic mode quantizes MatMul/Gemm only (ConvInteger is slower than "
                                         "FP32 Conv in ONNX Runtime)")
    if node.op_type not in ("MatMul", "Gemm"):
        return Why(Reason.DYNAMIC_SCOPE, "not a MatMul/Gemm")
    if is_excluded(node, exclude):
        return EXCLUDED
    detail = _not_quantizable(node, idx, floats)
    return Why(Reason.NOT_QUANTIZABLE, detail) if detail else None


def _not_quantizable(node, idx: GraphIndex, floats: set[str]) -> str | None:
    if node.input[0] not in floats or node.input[0] in idx.initializers:
        return "A is not a float activation"
    w = idx.const(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return "B is not a constant 2-D float32 weight"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return "Gemm with transA=1"
        if len(node.input) > 2 and node.input[2] and idx.const(node.input[2]) is None:
            return "Gemm bias is not a constant"
    return None


def _rewrite(node, idx: GraphIndex, dql: dict, new_inits: list, per_channel: bool, reduce_range: bool):
    nodes = []
    a = node.input[0]
    if a not in dql:
        dql[a] = (f"{a}_quantized", f"{a}_scale", f"{a}_zero_point")
        nodes.append(helper.make_node("DynamicQuantizeLinear", [a], list(dql[a]), name=f"{a}_DynamicQuantizeLinear"))
    aq, ascale, azp = dql[a]
    w = np.asarray(idx.const(node.input[1]), np.float32)  # a float32 memory map stays one (no copy)
    alpha = 1.0
    if node.op_type == "Gemm":
        if attr(node, "transB", 0):
            w = w.T
        alpha = float(attr(node, "alpha", 1.0))
    wname = f"{node.input[1]}_{node.name}" if node.op_type == "Gemm" else node.input[1]
    wp = qp.weight_params(w, axis=1 if per_channel else None, reduce_range=reduce_range)
    wq = qp.quantize_weight(w, wp, reduce_range=reduce_range)
    names = {k: f"{wname}_{k}" for k in ("quantized", "scale", "zero_point")}
    if names["quantized"] not in {t.name for t in new_inits}:
        new_inits.append(numpy_helper.from_array(wq, names["quantized"]))
        new_inits.append(numpy_helper.from_array((np.asarray(wp.scale, np.float32) * np.float32(alpha)), names["scale"]))
        new_inits.append(numpy_helper.from_array(np.asarray(wp.zero_point), names["zero_point"]))
    base = node.name
    out = node.output[0]
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    mm_out = f"{base}_output" if has_bias else out
    nodes += [
        helper.make_node("MatMulInteger", [aq, names["quantized"], azp, names["zero_point"]], [f"{base}_int32"],
                         name=f"{base}_MatMulInteger"),
        helper.make_node("Mul", [ascale, names["scale"]], [f"{base}_scales"], name=f"{base}_scales_Mul"),
        helper.make_node("Cast", [f"{base}_int32"], [f"{base}_float"], name=f"{base}_Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{base}_float", f"{base}_scales"], [mm_out], name=f"{base}_rescale"),
    ]
    if has_bias:
        c = idx.const(node.input[2]).astype(np.float32) * np.float32(attr(node, "beta", 1.0))
        cname = f"{node.input[2]}_{base}_bias"
        new_inits.append(numpy_helper.from_array(c, cname))
        nodes.append(helper.make_node("Add", [mm_out, cname], [out], name=f"{base}_bias_Add"))
    return nodes
