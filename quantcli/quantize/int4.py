"""Weight-only INT4: MatMul (and Gemm) with a constant 2-D weight become ONNX Runtime's ``MatMulNBits``.

Activations stay float; each weight is stored as 4-bit codes in blocks along K (:mod:`.blockwise`, round to
nearest) and dequantized inside the kernel.  ``accuracy_level`` 4 lets ONNX Runtime quantize A to int8 per
block and use its integer dot-product kernels (x86 with AVX2 or better, ARM with dot product); elsewhere 0
(float compute).  Which nodes qualify:

* MatMul: A a float activation, B a float32 constant of rank 2;
* Gemm: transA = 0, alpha = 1, B a float32 2-D constant, C absent or a 1-D [N] constant with beta = 1 (it
  becomes MatMulNBits' bias);
* K at least 16 (a smaller weight gains nothing from 4 bits).
Nodes excluded (``--exclude``, fp32/fp16 node rules) stay float with their reason.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..cpu import CpuInfo
from ..recipe import NodePrecision
from ..settings import Resolved
from ..transforms.graph import GraphIndex, attr, float_tensors, remove_unused_initializers
from ..transforms.layout import layout
from . import reasons
from .blockwise import quantize_blockwise
from .policy import is_excluded, resolve_presets
from .reasons import Reason, Why

MIN_K = 16
MS_DOMAIN = "com.microsoft"


def accuracy_level(cpu: CpuInfo) -> int:
    """4 (int8 compute on A) where ONNX Runtime has integer dot-product kernels for it, else 0 (float)."""
    if cpu.is_x86:
        return 4 if "avx2" in cpu.flags or "avx512f" in cpu.flags else 0
    return 4 if any(f in cpu.flags for f in ("asimddp", "i8mm")) else 0


def _why_not(node: onnx.NodeProto, idx: GraphIndex, floats: set[str]) -> str | None:
    if node.input[0] in idx.initializers or node.input[0] not in floats:
        return "A is not a float activation"
    w = idx.const(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return "B is not a 2-D float32 constant"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0:
            return "Gemm with transA or alpha != 1"
        if len(node.input) > 2 and node.input[2]:
            c = idx.const(node.input[2])
            if c is None or c.ndim != 1 or attr(node, "beta", 1.0) != 1.0:
                return "Gemm bias is not a 1-D constant (with beta = 1)"
    k = w.shape[1] if layout(node).out_axis == 0 else w.shape[0]
    if k < MIN_K:
        return f"K = {k} is below {MIN_K}"
    return None


def quantize_int4(model: onnx.ModelProto, res: Resolved, grams: dict | None = None
                  ) -> tuple[onnx.ModelProto, dict[str, str], dict[str, Why]]:
    """Returns (the model with MatMulNBits, quantized node -> op type, float node -> why).  ``grams`` (GPTQ):
    input tensor -> (X^T X, rows) from calibration data; without it, round to nearest."""
    s = res.convert
    model = copy.deepcopy(model)
    g = model.graph
    idx = GraphIndex(g)
    floats = float_tensors(model)
    keep = resolve_presets(model, list(s.exclude) + [r.match for r in s.nodes if r.precision != NodePrecision.INT8])
    level = accuracy_level(res.cpu)
    quantized: dict[str, str] = {}
    kept: dict[str, Why] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        why = reasons.EXCLUDED if is_excluded(node, keep) else None
        detail = None if why else _why_not(node, idx, floats)
        if why or detail:
            kept[node.name] = why or Why(Reason.NOT_QUANTIZABLE, detail)
            new_nodes.append(node)
            continue
        gram = grams.get(node.input[0]) if grams else None
        new_nodes.append(_matmul_nbits(node, idx, g, s.block_size, s.symmetric_weights, level, gram))
        quantized[node.name] = node.op_type
    del g.node[:]
    g.node.extend(new_nodes)
    remove_unused_initializers(g)
    if quantized and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, quantized, kept


def candidates(model: onnx.ModelProto, res: Resolved) -> list[onnx.NodeProto]:
    """The MatMul/Gemm nodes int4 will quantize (GPTQ asks the data pass for their inputs' Gram matrices)."""
    return [n for n in model.graph.node if n.name in quantize_int4_plan(model, res)]


def quantize_int4_plan(model: onnx.ModelProto, res: Resolved) -> set[str]:
    s = res.convert
    idx = GraphIndex(model.graph)
    floats = float_tensors(model)
    keep = resolve_presets(model, list(s.exclude) + [r.match for r in s.nodes if r.precision != NodePrecision.INT8])
    return {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.domain in ("", "ai.onnx")
            and not is_excluded(n, keep) and _why_not(n, idx, floats) is None}


def _matmul_nbits(node: onnx.NodeProto, idx: GraphIndex, g: onnx.GraphProto, block_size: int, symmetric: bool,
                  level: int, gram: tuple[np.ndarray, int] | None = None) -> onnx.NodeProto:
    w = idx.const(node.input[1])
    if node.op_type == "Gemm" and layout(node).out_axis == 0:
        w = w.T  # Gemm transB=1 stores [N, K]
    k, n = w.shape
    if gram is not None:
        from .gptq import gptq_quantize

        bq = gptq_quantize(w, gram[0], gram[1], block_size, symmetric=symmetric)
    else:
        bq = quantize_blockwise(w, block_size, symmetric=symmetric)
    base = f"{node.name}_int4"
    g.initializer.append(numpy_helper.from_array(bq.packed, f"{base}_B"))
    g.initializer.append(numpy_helper.from_array(bq.scales.reshape(-1), f"{base}_scales"))
    inputs = [node.input[0], f"{base}_B", f"{base}_scales"]
    if bq.zero_points is not None:
        g.initializer.append(numpy_helper.from_array(bq.zero_points.reshape(-1), f"{base}_zero_points"))
        inputs.append(f"{base}_zero_points")
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        inputs += [""] * (4 - len(inputs)) + ["", node.input[2]]  # zero_points, g_idx, bias
    return helper.make_node("MatMulNBits", inputs, [node.output[0]], name=node.name, domain=MS_DOMAIN,
                            K=k, N=n, bits=4, block_size=block_size, accuracy_level=level)
