"""Weight-only INT4: MatMul (and Gemm) with a constant 2-D weight become ONNX Runtime's ``MatMulNBits``
(8-bit for the nodes an ``int8`` node rule matches, e.g. ``--node 'lm_head:precision=int8'``).

Activations stay float; each weight is stored as 4-bit codes in blocks along K (:mod:`.blockwise`, round to
nearest) and dequantized inside the kernel.  ``accuracy_level`` 4 lets ONNX Runtime quantize A to int8 per
block and use its integer dot-product kernels (x86 with AVX2 or better, ARM with dot product); elsewhere 0
(float compute).  Which nodes qualify:

* MatMul: A a float activation, B a float32 constant of rank 2;
* Gemm: transA = 0, alpha = 1, B a float32 2-D constant, C absent or a 1-D [N] constant with beta = 1 (it
  becomes MatMulNBits' bias);
* at least MIN_WEIGHT_ELEMENTS weights: MatMulNBits reads 4-bit weights fast but has a fixed cost per call, so
  it beats FP32 only where reading the weight dominates.  Measured with accuracy_level 4 on AVX512-VNNI (AMD
  EPYC, onnxruntime 1.32, 1 thread, batch 1): 768x768 x0.35 of FP32, 2048x2048 x0.11, 256x256 x0.93, but
  64x768 x1.09 and 64x64 (16 rows) x1.31; the transformer sample (64-wide) ran x1.6 slower all-INT4.
Nodes excluded (``--exclude``, fp32/fp16 node rules) stay float with their reason.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..cpu import CpuInfo
from ..recipe import NodePrecision, WeightAlgorithm
from ..settings import Resolved
from ..transforms.graph import GraphIndex, attr, float_tensors, remove_unused_initializers
from ..transforms.layout import layout
from . import reasons
from .blockwise import quantize_blockwise
from .policy import is_excluded, resolve_presets
from .reasons import Reason, Why

MIN_WEIGHT_ELEMENTS = 1 << 16  # K * N
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
    if w.size < MIN_WEIGHT_ELEMENTS:
        return (f"weight {w.shape[0]}x{w.shape[1]} is too small for INT4 to pay off (MatMulNBits runs slower than "
                f"FP32 below {MIN_WEIGHT_ELEMENTS} weights)")
    return None


def plan_int4(model: onnx.ModelProto, res: Resolved) -> tuple[list[onnx.NodeProto], dict[str, Why]]:
    """The MatMul/Gemm nodes int4 quantizes (in graph order) and the others with why they stay float."""
    s = res.convert
    idx = GraphIndex(model.graph)
    floats = float_tensors(model)
    keep = resolve_presets(model, list(s.exclude) + [r.match for r in s.nodes if r.precision != NodePrecision.INT8])
    chosen, kept = [], {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        excluded = is_excluded(node, keep)
        detail = None if excluded else _why_not(node, idx, floats)
        if excluded or detail:
            kept[node.name] = reasons.EXCLUDED if excluded else Why(Reason.NOT_QUANTIZABLE, detail)
        else:
            chosen.append(node)
    return chosen, kept


def quantize_int4(model: onnx.ModelProto, res: Resolved, grams: dict | None = None, planned=None
                  ) -> tuple[onnx.ModelProto, dict[str, str], dict[str, Why], list[str]]:
    """Returns (the model with MatMulNBits, quantized node -> op type, float node -> why, notes).  ``grams``:
    input tensor -> (X^T X, rows) from calibration data, used by GPTQ and AWQ; RTN needs none.  ``planned``:
    :func:`plan_int4`'s result on ``model``, when the caller already has it."""
    s = res.convert
    model = copy.deepcopy(model)
    g = model.graph
    idx = GraphIndex(g)
    names, kept = planned if planned is not None else plan_int4(model, res)
    names = {n.name for n in names}
    chosen = [n for n in g.node if n.name in names]  # the copy's nodes: they are edited below
    level = accuracy_level(res.cpu)
    bits = {n.name: weight_bits(n, model, res) for n in chosen}
    row_scales, muls, notes = ({}, {}, []) if s.algorithm != WeightAlgorithm.AWQ else _awq(chosen, idx, g, grams, s,
                                                                                         bits)
    replaced = {}
    for node in chosen:
        gram = grams.get(node.input[0]) if grams and s.algorithm == WeightAlgorithm.GPTQ else None
        replaced[node.name] = _matmul_nbits(node, idx, g, s.block_size, s.symmetric_weights, level, gram,
                                            row_scales.get(node.input[0]), bits[node.name])
    new_nodes = []
    for node in g.node:
        new_nodes += ([muls[node.name]] if node.name in muls else []) + [replaced.get(node.name, node)]
    del g.node[:]
    g.node.extend(new_nodes)
    remove_unused_initializers(g)
    if chosen and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, {n.name: n.op_type for n in chosen}, kept, notes


def weight_bits(node: onnx.NodeProto, model: onnx.ModelProto, res: Resolved) -> int:
    """8 for nodes an int8 node rule matches (e.g. an lm_head or attention out-projection kept at 8 bits), else 4."""
    rules = tuple(r.match for r in res.convert.nodes if r.precision == NodePrecision.INT8)
    return 8 if rules and is_excluded(node, resolve_presets(model, rules)) else 4


def _awq(chosen: list[onnx.NodeProto], idx: GraphIndex, g: onnx.GraphProto, grams: dict, s, bits: dict[str, int]
         ) -> tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto], list[str]]:
    """Per shared input: the AWQ row scales s (weights are quantized as s * W, keyed by the input tensor) and a
    Mul by 1 / s in front of the first layer reading it (keyed by that layer's name); a note on what was chosen."""
    from .awq import awq_scales

    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in chosen:
        groups.setdefault(node.input[0], []).append(node)
    scales: dict[str, np.ndarray] = {}
    muls: dict[str, onnx.NodeProto] = {}
    gains = []
    for x, nodes in groups.items():
        ws = [_weight_kn(n, idx) for n in nodes]
        scale, alpha, err, rtn = awq_scales(ws, grams[x][0], grams[x][1], s.block_size, symmetric=s.symmetric_weights,
                                            bits=min(bits[n.name] for n in nodes))
        if alpha == 0.0:
            continue
        name = f"{x}_awq"
        g.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_inv_scale"))
        muls[nodes[0].name] = helper.make_node("Mul", [x, f"{name}_inv_scale"], [name], name=f"{name}_Mul")
        scales[name] = scale
        for n in nodes:
            n.input[0] = name
        gains.append(10 * np.log10(rtn / err) if err > 0 else float("inf"))
    note = (f"AWQ: {len(gains)} of {len(groups)} layer input(s) scaled (calibration output error "
            f"{min(gains):.1f}-{max(gains):.1f} dB lower than round to nearest)" if gains
            else f"AWQ: round to nearest was best for all {len(groups)} layer input(s)")
    return scales, muls, [note]


def _weight_kn(node: onnx.NodeProto, idx: GraphIndex) -> np.ndarray:
    """The layer's weight as [K, N] (Gemm with transB stores [N, K])."""
    w = idx.const(node.input[1])
    return w.T if node.op_type == "Gemm" and layout(node).out_axis == 0 else w


def _matmul_nbits(node: onnx.NodeProto, idx: GraphIndex, g: onnx.GraphProto, block_size: int, symmetric: bool,
                  level: int, gram: tuple[np.ndarray, int] | None = None,
                  row_scale: np.ndarray | None = None, bits: int = 4) -> onnx.NodeProto:
    w = _weight_kn(node, idx)
    if row_scale is not None:  # AWQ: the input arrives divided by row_scale, so the weight rows carry it
        w = (w.astype(np.float64) * row_scale[:, None]).astype(np.float32)
    k, n = w.shape
    if gram is not None:
        from .gptq import gptq_quantize

        bq = gptq_quantize(w, gram[0], gram[1], block_size, symmetric=symmetric, bits=bits)
    else:
        bq = quantize_blockwise(w, block_size, symmetric=symmetric, bits=bits)
    base = f"{node.name}_int{bits}"
    g.initializer.append(numpy_helper.from_array(bq.packed, f"{base}_B"))
    g.initializer.append(numpy_helper.from_array(bq.scales.reshape(-1), f"{base}_scales"))
    inputs = [node.input[0], f"{base}_B", f"{base}_scales"]
    if bq.zero_points is not None:
        g.initializer.append(numpy_helper.from_array(bq.zero_points.reshape(-1), f"{base}_zero_points"))
        inputs.append(f"{base}_zero_points")
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        inputs += [""] * (4 - len(inputs)) + ["", node.input[2]]  # zero_points, g_idx, bias
    return helper.make_node("MatMulNBits", inputs, [node.output[0]], name=node.name, domain=MS_DOMAIN,
                            K=k, N=n, bits=bits, block_size=block_size, accuracy_level=level)
