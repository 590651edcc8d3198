"""Weight-only INT4: MatMul (and Gemm) with a constant 2-D weight become ONNX Runtime's ``MatMulNBits``, and
embedding lookups (Gather from a constant 2-D table) become ``GatherBlockQuantized``.

Activations stay float; each weight is stored as 4-bit codes in blocks along K (:mod:`.blockwise`, round to
nearest, GPTQ or AWQ) and dequantized inside the kernel.  ``accuracy_level`` 4 lets ONNX Runtime quantize A to int8
per block and use its integer dot-product kernels (x86 with AVX2 or better, ARM with dot product); elsewhere 0
(float compute).  Which nodes qualify:

* MatMul: A a float activation, B a float32 constant of rank 2;
* Gemm: transA = 0, alpha = 1, B a float32 2-D constant, C absent or a 1-D [N] constant with beta = 1 (it
  becomes MatMulNBits' bias);
* Gather: axis 0 from a float32 2-D constant table [rows, D] (an embedding), where this onnxruntime runs
  GatherBlockQuantized with uint8 data (probed once): the table is cut into blocks along D, exactly the layout
  MatMulNBits gives a [K = D, N = rows] weight, and only the rows looked up are dequantized;
* at least MIN_WEIGHT_ELEMENTS weights: MatMulNBits reads 4-bit weights fast but has a fixed cost per call, so
  it beats FP32 only where reading the weight dominates.  Measured with accuracy_level 4 on AVX512-VNNI (AMD
  EPYC, onnxruntime 1.32, 1 thread, batch 1): 768x768 x0.35 of FP32, 2048x2048 x0.11, 256x256 x0.93, but
  64x768 x1.09 and 64x64 (16 rows) x1.31; the transformer sample (64-wide) ran x1.6 slower all-INT4.  (A table
  that small is not worth compressing either.)

Bits: 4, except the output head (a MatMul/Gemm whose result is a graph output, directly or through a bias Add:
a language model's ``lm_head``) and embedding tables, which are 8-bit by default (EDGE_BITS): the head's errors
land on the logits unfiltered, the embedding's on every layer's input.  Measured on the decoder sample
(bench/decoder.py, RTN block 32, held-out perplexity 43.75 FP32): 44.27 with a 4-bit table, 43.78 with an 8-bit
one; 45.60 with a 4-bit head.  Node rules override both ways: ``precision=int8`` makes any weight 8-bit,
``precision=int4`` makes the head or a table 4-bit.  Nodes excluded (``--exclude``, fp32/fp16 node
rules) stay float with their reason.
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
from .blockwise import pack_bits, quantize_blockwise
from .policy import is_excluded, resolve_presets
from .reasons import Reason, Why

MIN_WEIGHT_ELEMENTS = 1 << 16  # K * N
MS_DOMAIN = "com.microsoft"
EDGE_BITS = 8  # the output head and embedding tables
MATMULS = ("MatMul", "Gemm")


def accuracy_level(cpu: CpuInfo) -> int:
    """4 (int8 compute on A) where ONNX Runtime has integer dot-product kernels for it, else 0 (float)."""
    if cpu.is_x86:
        return 4 if "avx2" in cpu.flags or "avx512f" in cpu.flags else 0
    return 4 if any(f in cpu.flags for f in ("asimddp", "i8mm")) else 0


def _why_not(node: onnx.NodeProto, idx: GraphIndex, floats: set[str]) -> str | None:
    if node.op_type == "Gather":
        return _why_not_gather(node, idx)
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


def _why_not_gather(node: onnx.NodeProto, idx: GraphIndex) -> str | None:
    table = idx.const(node.input[0]) if node.input[0] in idx.initializers else None
    if table is None or table.ndim != 2 or table.dtype != np.float32:
        return "the gathered data is not a 2-D float32 constant (an embedding table)"
    if attr(node, "axis", 0) != 0:
        return "Gather along an axis other than 0"
    if table.size < MIN_WEIGHT_ELEMENTS:
        return f"table {table.shape[0]}x{table.shape[1]} is too small for INT4 to matter"
    if not gather_block_quantized_supported():
        return "this onnxruntime has no GatherBlockQuantized with uint8 data (needs a newer onnxruntime)"
    return None


_GBQ_SUPPORT: list[bool] = []


def gather_block_quantized_supported() -> bool:
    """Whether this onnxruntime's CPU provider runs GatherBlockQuantized on uint8 data with a ``bits`` attribute
    (probed once on a 2x32 table)."""
    if not _GBQ_SUPPORT:
        import onnxruntime as ort

        from onnx import TensorProto

        node = helper.make_node("GatherBlockQuantized", ["data", "ids", "scales"], ["y"], domain=MS_DOMAIN,
                                gather_axis=0, quantize_axis=1, block_size=16, bits=4)
        g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.full((2, 16), 0x98, np.uint8), "data"),
                               numpy_helper.from_array(np.ones((2, 2), np.float32), "scales")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
        try:
            y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"ids": np.array([1], np.int64)})[0]
            _GBQ_SUPPORT.append(bool(np.array_equal(y, np.tile([0.0, 1.0], 16)[None])))
        except Exception:  # noqa: BLE001 - any failure means: not supported here
            _GBQ_SUPPORT.append(False)
    return _GBQ_SUPPORT[0]


def plan_int4(model: onnx.ModelProto, res: Resolved) -> tuple[list[onnx.NodeProto], dict[str, Why]]:
    """The MatMul/Gemm/Gather nodes int4 quantizes (in graph order) and the others with why they stay float."""
    s = res.convert
    idx = GraphIndex(model.graph)
    floats = float_tensors(model)
    keep = resolve_presets(model, list(s.exclude) + [r.match for r in s.nodes
                                                     if r.precision not in (NodePrecision.INT8, NodePrecision.INT4)])
    chosen, kept = [], {}
    for node in model.graph.node:
        if node.op_type not in (*MATMULS, "Gather") or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gather" and node.input[0] not in idx.initializers:
            continue  # a gather of activations or shapes: nothing to compress, nothing to report
        excluded = is_excluded(node, keep)
        detail = None if excluded else _why_not(node, idx, floats)
        if excluded or detail:
            kept[node.name] = reasons.EXCLUDED if excluded else Why(Reason.NOT_QUANTIZABLE, detail)
        else:
            chosen.append(node)
    return chosen, kept


def quantize_int4(model: onnx.ModelProto, res: Resolved, grams: dict | None = None, planned=None
                  ) -> tuple[onnx.ModelProto, dict[str, str], dict[str, Why], list[str]]:
    """Returns (the model with MatMulNBits / GatherBlockQuantized, quantized node -> op type, float node -> why,
    notes).  ``grams``:
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
    heads = output_heads(model)
    bits = {n.name: weight_bits(n, model, res, heads) for n in chosen}
    matmuls = [n for n in chosen if n.op_type in MATMULS]
    row_scales, muls, notes = ({}, {}, []) if s.algorithm != WeightAlgorithm.AWQ else _awq(matmuls, idx, g, grams, s,
                                                                                         bits)
    replaced = {}
    for node in chosen:
        if node.op_type == "Gather":
            replaced[node.name] = _gather_quantized(node, idx, g, s.block_size, s.symmetric_weights, bits[node.name],
                                                    s.clip_search)
            continue
        gram = grams.get(node.input[0]) if grams and s.algorithm == WeightAlgorithm.GPTQ else None
        replaced[node.name] = _matmul_nbits(node, idx, g, s, level, gram, row_scales.get(node.input[0]),
                                            bits[node.name], grams.get(node.input[0]) if grams else None)
    new_nodes = []
    for node in g.node:
        new_nodes += ([muls[node.name]] if node.name in muls else []) + [replaced.get(node.name, node)]
    del g.node[:]
    g.node.extend(new_nodes)
    remove_unused_initializers(g)
    if chosen and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    eight = sorted(n.name for n in chosen if bits[n.name] == 8)
    if eight:
        notes.append(f"8-bit weights: {', '.join(eight[:4])}{' ...' if len(eight) > 4 else ''} "
                     "(the output head and embedding tables by default; --node 'NAME:precision=int4' makes one 4-bit)")
    return model, {n.name: n.op_type for n in chosen}, kept, notes


def output_heads(model: onnx.ModelProto) -> set[str]:
    """MatMul/Gemm nodes whose result is a graph output, directly or through one Add (a bias): the lm_head."""
    outputs = {o.name for o in model.graph.output}
    adds = {n.input[i]: n.output[0] for n in model.graph.node if n.op_type == "Add" for i in range(2)}
    return {n.name for n in model.graph.node if n.op_type in MATMULS
            and (n.output[0] in outputs or adds.get(n.output[0]) in outputs)}


def weight_bits(node: onnx.NodeProto, model: onnx.ModelProto, res: Resolved, heads: set[str] | None = None) -> int:
    """8 for nodes an int8 node rule matches (e.g. an attention out-projection kept at 8 bits) and, unless an int4
    rule matches them, for the output head and embedding tables (EDGE_BITS); else 4."""
    def matches(precision):
        rules = tuple(r.match for r in res.convert.nodes if r.precision == precision)
        return bool(rules) and is_excluded(node, resolve_presets(model, rules))

    if matches(NodePrecision.INT8):
        return 8
    if matches(NodePrecision.INT4):
        return 4
    edge = node.op_type == "Gather" or node.name in (output_heads(model) if heads is None else heads)
    return EDGE_BITS if edge else 4


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


def _matmul_nbits(node: onnx.NodeProto, idx: GraphIndex, g: onnx.GraphProto, s, level: int,
                  gram: tuple[np.ndarray, int] | None = None, row_scale: np.ndarray | None = None, bits: int = 4,
                  stats: tuple[np.ndarray, int] | None = None) -> onnx.NodeProto:
    """``gram``: run GPTQ with this (X^T X, rows); ``stats``: the same statistics, whose diagonal (the mean squared
    input per row of W) weighs the rounding errors of the clip search."""
    block_size, symmetric = s.block_size, s.symmetric_weights
    w = _weight_kn(node, idx)
    importance = None if stats is None else np.diag(stats[0]) / max(stats[1], 1)
    if row_scale is not None:  # AWQ: the input arrives divided by row_scale, so the weight rows carry it
        w = (w.astype(np.float64) * row_scale[:, None]).astype(np.float32)
        importance = None if importance is None else importance / row_scale ** 2
    k, n = w.shape
    if gram is not None:
        from .gptq import gptq_quantize

        bq = gptq_quantize(w, gram[0], gram[1], block_size, symmetric=symmetric, bits=bits, act_order=s.act_order,
                           clip=s.clip_search)
    else:
        bq = quantize_blockwise(w, block_size, symmetric=symmetric, bits=bits, clip=s.clip_search,
                                importance=importance)
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


def _gather_quantized(node: onnx.NodeProto, idx: GraphIndex, g: onnx.GraphProto, block_size: int, symmetric: bool,
                      bits: int, clip: bool = False) -> onnx.NodeProto:
    """Gather(table [rows, D], ids) -> GatherBlockQuantized: the table quantized as a [K = D, N = rows] weight
    (blocks along D), its uint8 codes [rows, D * bits / 8] packed along D, scales [rows, D / block]."""
    table = idx.const(node.input[0])
    rows, d = table.shape
    bq = quantize_blockwise(np.ascontiguousarray(table.T), block_size, symmetric=symmetric, bits=bits, clip=clip)
    codes = bq.codes.reshape(rows, -1)[:, :d]  # drop the padding of D to whole blocks
    base = f"{node.name}_q{bits}"
    g.initializer.append(numpy_helper.from_array(pack_bits(codes, bits), f"{base}_data"))
    g.initializer.append(numpy_helper.from_array(bq.scales, f"{base}_scales"))
    inputs = [f"{base}_data", node.input[1], f"{base}_scales"]
    if bq.zero_points is not None:
        g.initializer.append(numpy_helper.from_array(bq.zero_points.reshape(rows, -1), f"{base}_zero_points"))
        inputs.append(f"{base}_zero_points")
    return helper.make_node("GatherBlockQuantized", inputs, [node.output[0]], name=node.name, domain=MS_DOMAIN,
                            gather_axis=0, quantize_axis=1, block_size=block_size, bits=bits)
