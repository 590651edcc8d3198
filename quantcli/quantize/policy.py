"""Which tensors get Q/DQ, and how: the op-type registry and the planning pass ("mark, then insert").

The plan follows how ONNX Runtime's CPU graph optimizer fuses QDQ groups into integer kernels:

* **heavy** ops carry weights and run as integer kernels when their inputs are quantized:
  Conv -> QLinearConv (needs a Q on its output), MatMul -> QLinearMatMul / MatMulIntegerToFloat,
  Gemm -> QGemm.  Their activation inputs are quantized with calibrated ranges, weights int8
  symmetric (per channel along the output axis: Conv 0, Gemm 0 with transB else 1, MatMul 1), bias int32.
* **cheap** ops (Add, Mul, Concat, AveragePool, GlobalAveragePool) are quantized only when every
  activation input is quantized anyway: then QLinearAdd & co. read int8 directly; otherwise Q/DQ
  around them would cost time for nothing, and they stay float.
* **layout** ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, MaxPool, ...) re-use their input's
  scale and zero point, so ONNX Runtime drops the Q/DQ around them and moves int8 data.
* **Relu / Clip(min=0)** right after a producer whose output is quantized is absorbed into that
  output's range (asymmetric uint8 only: zero point 0 saturates exactly like the Relu).
* **Concat** whose inputs' calibrated ranges differ widely (box coordinates next to class scores) stays float:
  QLinearConcat gives all inputs the output's one scale, which would leave the narrow input a few levels
  (:func:`range_conflicts`, applied once ranges are known).
* A quantized tensor read only by a **SiLU** (``x * sigmoid(x)``, :func:`silu_inputs`) gets the range that
  minimizes the error of the SiLU's output, not of the tensor itself
  (:func:`~quantcli.calibration.estimators.silu_range`, applied once ranges are known).
* Everything else stays float.  Graph outputs are never re-quantized, so a model's outputs keep FP32
  values; a Conv whose output is a graph output stays float (it would need a lossy Q to fuse).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

import numpy as np
import onnx

from ..transforms.graph import GraphIndex, attr, float_tensor_shapes
from ..transforms.layout import layout
from . import reasons as r
from .reasons import Why

HEAVY = {"Conv", "MatMul", "Gemm"}
CHEAP = {"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool"}
LAYOUT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool"}
ABSORBABLE = {"Relu", "Clip"}
OUTPUT_Q_REQUIRED = {"Conv"} | CHEAP  # fuse into an integer kernel only with a Q on the output
# A Concat input whose range is this many times narrower than the widest input would keep fewer than
# 8 - log2(16) = 4 of its bits under the shared output scale.
MAX_CONCAT_RANGE_RATIO = 16.0
# elementwise activations (and their decomposed forms' arithmetic, and Identity: Paddle2ONNX puts two between a
# Conv and each GELU in PP-OCRv6) through which a tensor's quantization noise reaches the next layer's input
# unchanged in scale where the activation is live.  With Identity, PP-OCRv6 det's 13 GELU inputs are clamped where
# the GELU is flat (float32 erf is -1 below about -5.9): mask IoU vs FP32 92.1 -> 94.3%, output SQNR 15.4 -> 17.6
# dB; rec 99.0% either way (SQNR 14.2 -> 15.0); doc-orientation 100% either way (SQNR 55.1 -> 54.3).
ELEMENTWISE = {"Identity", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Tanh", "Elu", "Selu",
               "Softplus", "Add", "Sub", "Mul", "Div"}


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    node: str
    input_index: int
    tensor: str
    axis: int | None  # per-channel axis, None = per tensor


@dataclasses.dataclass(frozen=True)
class BiasSpec:
    node: str
    input_index: int
    tensor: str
    activation: str  # the activation tensor whose scale multiplies the weight scale
    weight: str


@dataclasses.dataclass
class QuantPlan:
    """The outcome of planning: what gets quantized and why the rest does not."""

    activations: dict[str, str]             # tensor -> tensor whose calibrated range applies
    shared: dict[str, str]                  # tensor -> tensor whose params it re-uses (layout ops)
    weights: list[WeightSpec]
    biases: list[BiasSpec]
    absorbed: dict[str, str]                # absorbed Relu/Clip node -> its producer node
    quantized_nodes: dict[str, str]         # node name -> op type
    float_nodes: dict[str, Why]             # node name -> why it stays float (for nodes worth reporting)

    def calibrated_tensors(self) -> list[str]:
        return sorted(set(self.activations.values()))


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    per_channel: bool = True
    symmetric_activations: bool = False
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None  # quantize just these heavy nodes (sensitivity analysis)
    granularity: tuple[tuple[str, bool], ...] = ()  # (pattern, per_channel) per-node weight granularity
    act_matmul: bool = True  # quantize MatMuls of two activations (attention's Q.K^T and P.V)
    act_matmul_min_dim: int = 0  # ... only where their head dimension is at least this (settings.ACT_MATMUL_MIN_DIM)


def resolve_presets(model: onnx.ModelProto, patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Expand ``@first`` / ``@last`` into the names of the first / last Conv, MatMul or Gemm of the graph."""
    heavy = [n.name for n in model.graph.node if n.op_type in HEAVY]
    out = []
    for p in patterns:
        if p == "@first" and heavy:
            out.append(heavy[0])
        elif p == "@last" and heavy:
            out.append(heavy[-1])
        elif p not in ("@first", "@last"):
            out.append(p)
    return tuple(out)


def is_excluded(node: onnx.NodeProto, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p == node.op_type or p == node.name:
            return True
        if any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(node.name, p):
            return True
        if p.startswith("re:") and re.fullmatch(p[3:], node.name):
            return True
    return False


def unmatched_patterns(model: onnx.ModelProto, patterns) -> list[str]:
    """The patterns (``--exclude``, node rules' ``match``) that match no node of ``model``: most likely typos."""
    nodes = list(model.graph.node)
    return [p for p in dict.fromkeys(patterns)
            if not any(is_excluded(n, resolve_presets(model, (p,))) for n in nodes)]


def plan(model: onnx.ModelProto, options: PlanOptions = PlanOptions()) -> QuantPlan:
    """Mark what gets Q/DQ: (1) eligible heavy ops, their weights and the activations they need; (2) a forward
    pass deciding which outputs are quantized (cheap ops, absorbed Relus, layout ops); (3) which tensors get
    their own range and which share one through layout ops."""
    ctx = _Planning(model, options)
    heavy_ok = ctx.heavy_ops()
    emits = ctx.forward(heavy_ok)
    ctx.assign(emits)
    return ctx.p


class _Planning:
    def __init__(self, model: onnx.ModelProto, options: PlanOptions) -> None:
        self.g = model.graph
        self.idx = GraphIndex(self.g)
        self.shapes = float_tensor_shapes(model)
        self.floats = set(self.shapes)
        self.options = options
        self.p = QuantPlan({}, {}, [], [], {}, {}, {})
        self.required: dict[str, str] = {}  # activation tensors heavy ops need quantized

    def is_act(self, name: str) -> bool:
        return bool(name) and name not in self.idx.initializers and name in self.floats

    def heavy_ops(self) -> set[str]:
        """1. heavy ops: eligibility, weights, and the activations they require."""
        idx, options, p = self.idx, self.options, self.p
        heavy_ok: set[str] = set()
        for node in self.g.node:
            if node.op_type not in HEAVY:
                continue
            if is_excluded(node, options.exclude):
                p.float_nodes[node.name] = r.EXCLUDED
                continue
            if options.only is not None and node.name not in options.only:
                continue
            why = self._heavy_why(node)
            if why:
                p.float_nodes[node.name] = why
                continue
            heavy_ok.add(node.name)
            for i, name in enumerate(node.input[:2]):
                if self.is_act(name):
                    self.required[name] = name
                elif name in idx.initializers:
                    p.weights.append(WeightSpec(node.name, i, name, _weight_axis(node, idx, i, options)))
            if len(node.input) > 2 and node.input[2] and node.op_type in ("Conv", "Gemm") and _bias_ok(node, idx):
                p.biases.append(BiasSpec(node.name, 2, node.input[2], node.input[0], node.input[1]))
        return heavy_ok

    def _heavy_why(self, node: onnx.NodeProto) -> Why | None:
        detail = _heavy_reason(node, self.idx, self.is_act)
        if detail:
            return Why(r.Reason.NOT_QUANTIZABLE, detail)
        if node.op_type == "MatMul" and all(self.is_act(i) for i in node.input[:2]):
            if not self.options.act_matmul:
                return r.ACT_MATMUL
            dim = _head_dim(node, self.shapes)
            if dim is not None and dim < self.options.act_matmul_min_dim:
                return r.act_matmul_small(dim, self.options.act_matmul_min_dim)
        if node.op_type in OUTPUT_Q_REQUIRED and node.output[0] in self.idx.graph_outputs:
            return Why(r.Reason.GRAPH_OUTPUT, "output is a graph output (kept exact, so no integer kernel)")
        return None

    def forward(self, heavy_ok: set[str]) -> dict[str, str]:
        """2. forward pass in topological order: which outputs are quantized.  Returns tensor -> itself (own
        range) or "=src" (shares src's params)."""
        idx, options, p, required = self.idx, self.options, self.p, self.required
        emits: dict[str, str] = {}
        for node in self.g.node:
            op = node.op_type
            if node.name in heavy_ok:
                p.quantized_nodes[node.name] = op
                out = node.output[0]
                nxt = idx.single_consumer(out)
                absorbable = nxt is not None and _absorbable(nxt, idx, options)
                if op in OUTPUT_Q_REQUIRED or out in required or absorbable:
                    final = _absorb(node, idx, options, p)
                    emits[final] = final
            elif is_excluded(node, options.exclude):
                if op in CHEAP | LAYOUT:
                    p.float_nodes[node.name] = r.EXCLUDED
            elif op in CHEAP:
                self._cheap(node, emits)
            elif op in LAYOUT and node.input and (node.input[0] in emits or node.input[0] in required):
                if node.output[0] not in idx.graph_outputs and self.is_act(node.output[0]):
                    emits[node.output[0]] = "=" + node.input[0]
        return emits

    def _cheap(self, node: onnx.NodeProto, emits: dict[str, str]) -> None:
        p = self.p
        acts = [i for i in node.input if self.is_act(i)]
        consts = [i for i in node.input if i and not self.is_act(i)]
        if consts:
            p.float_nodes[node.name] = Why(r.Reason.CONSTANT_INPUTS, "has constant inputs (stays float)")
        elif not acts or any(i not in emits and i not in self.required for i in acts):
            p.float_nodes[node.name] = Why(r.Reason.INPUTS_NOT_QUANTIZED,
                                           "inputs are not quantized (Q/DQ would only add time)")
        elif node.output[0] in self.idx.graph_outputs:
            p.float_nodes[node.name] = Why(r.Reason.GRAPH_OUTPUT, "output is a graph output (kept exact)")
        else:
            for i in acts:
                self.required.setdefault(i, i)
            p.quantized_nodes[node.name] = node.op_type
            final = _absorb(node, self.idx, self.options, p)
            emits[final] = final

    def assign(self, emits: dict[str, str]) -> None:
        """3. keep layout outputs only where a quantized consumer reads them (else they only add Q/DQ)."""
        p, required, idx = self.p, self.required, self.idx

        def wanted(t: str) -> bool:
            if t in required:
                return True
            return any(c.op_type in LAYOUT and c.output[0] in emits and wanted(c.output[0])
                       for c in idx.consumers.get(t, []))

        for t, src in emits.items():
            if src.startswith("="):
                if wanted(t):
                    p.shared[t] = src[1:]
            else:
                p.activations[t] = src
        for t, src in required.items():
            if t in p.shared or t in p.activations:
                continue
            if t in emits and emits[t].startswith("="):
                p.shared[t] = emits[t][1:]
            else:
                p.activations[t] = src
        for node in self.g.node:
            if node.op_type in LAYOUT and node.output and node.output[0] in p.shared:
                p.quantized_nodes[node.name] = node.op_type
        # a shared tensor's source must itself be quantized
        for t, src in list(p.shared.items()):
            while src in p.shared:
                src = p.shared[src]
            if src not in p.activations:
                p.activations[src] = src


def range_conflicts(model: onnx.ModelProto, qplan: QuantPlan,
                    ranges: dict[str, tuple[float, float]]) -> dict[str, Why]:
    """Quantized Concat nodes whose inputs' ranges differ more than MAX_CONCAT_RANGE_RATIO: node -> reason.

    Ranges are looked up through shared (layout) tensors to the tensor whose calibrated range applies.
    """
    def span(t: str) -> float | None:
        while t in qplan.shared:
            t = qplan.shared[t]
        src = qplan.activations.get(t)
        if src is None or src not in ranges:
            return None
        lo, hi = ranges[src]
        return max(float(hi) - float(lo), 0.0)

    out: dict[str, Why] = {}
    for node in model.graph.node:
        if qplan.quantized_nodes.get(node.name) != "Concat":
            continue
        spans = {t: span(t) for t in node.input if t}
        if any(v is None for v in spans.values()) or len(spans) < 2:
            continue
        narrow = min(spans, key=lambda t: spans[t])
        wide = max(spans, key=lambda t: spans[t])
        ratio = spans[wide] / spans[narrow] if spans[narrow] > 0 else float("inf")
        if ratio > MAX_CONCAT_RANGE_RATIO:
            bits = max(0.0, 8 - float(np.log2(ratio))) if np.isfinite(ratio) else 0.0
            out[node.name] = Why(r.Reason.RANGE_CONFLICT, (
                f"inputs' ranges differ x{ratio:.0f} ('{wide}' spans {spans[wide]:.4g}, '{narrow}' "
                f"{spans[narrow]:.4g}): one shared scale would leave '{narrow}' {bits:.1f} of 8 bits"))
    return out


def silu_inputs(model: onnx.ModelProto) -> set[str]:
    """Tensors whose only readers are a Sigmoid and a Mul of the tensor by that Sigmoid's output (a SiLU as
    exported from PyTorch), not graph outputs."""
    idx = GraphIndex(model.graph)
    out = set()
    for t, readers in idx.consumers.items():
        if len(readers) != 2 or t in idx.graph_outputs:
            continue
        sig = next((n for n in readers if n.op_type == "Sigmoid"), None)
        mul = next((n for n in readers if n.op_type == "Mul"), None)
        if sig is not None and mul is not None and sorted(mul.input) == sorted([t, sig.output[0]]):
            out.add(t)
    return out


# A depthwise Conv filters each channel alone, with its own gain g_c (BatchNorm folded in): the noise of its
# per-tensor quantized input (step R_in / 255) comes out g_c times larger in channel c, while the output is
# quantized with step R_out / 255.  rho_c = g_c * R_in / R_out is that noise over the output's own step; where it
# is at least this in a tenth of the channels the layer stays float.  Measured on the zoo (p90 of rho over 8
# calibration samples): PicoDet's first three depthwise convs 143, 112 and 68, all others of the zoo at most 21
# (PP-OCRv4 rec 21, det 12, cls 6, v6 rec 5).  PicoDet with those three in float: detection F1 vs FP32 43.5 ->
# 62.3% (NNCF MIXED 57.7%; all 37 depthwise convs float 68.0%, the 16 whose input loses a median 2.5+ bits to
# the shared scale 62.9%); over its 96 evaluation pages class-score SQNR 2.7 -> 4.3 dB, box-logit SQNR 9.0 ->
# 10.6 dB (two fewer quantizers on the amplified path: the HardSwish output before it and its own output).
# PP-OCRv4 rec, whose depthwise inputs lose as many bits to the shared scale, is at FP32's accuracy as is.  The
# layer before such a layer is measured the same way with its own output's step (StaticBuilder._amplified):
# PicoDet's three pointwise Convs before them, 59-133x, float too: F1 62.3 -> 83.3%.
MAX_DEPTHWISE_AMPLIFICATION = 32.0
DEPTHWISE_AMPLIFICATION_QUANTILE = 90.0


def is_depthwise(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    """A Conv with one input channel per group and more than one group (its weight is [C, 1, k, k])."""
    if node.op_type != "Conv" or attr(node, "group", 1) <= 1:
        return False
    w = idx.const(node.input[1]) if len(node.input) > 1 else None
    return w is not None and w.ndim >= 3 and w.shape[1] == 1


def depthwise_amplification(lo_in: np.ndarray, hi_in: np.ndarray, lo_out: np.ndarray, hi_out: np.ndarray,
                            noise_range: float | None = None) -> float:
    """The DEPTHWISE_AMPLIFICATION_QUANTILE-th percentile over live channels of rho_c = (r_out_c / r_in_c) *
    (R_noise / R_out), from per-channel minima and maxima of a depthwise Conv's input and output (ranges contain 0):
    the noise of a quantization step of R_noise / 255 at the input, in units of the output's step.  ``noise_range``:
    the range of the tensor whose quantization puts that noise there (default: the input's own, R_in) -- the
    output of the layer before, where an activation lies between (:func:`elementwise_source`)."""
    r_in = np.maximum(hi_in, 0.0) - np.minimum(lo_in, 0.0)
    r_out = np.maximum(hi_out, 0.0) - np.minimum(lo_out, 0.0)
    big_in = float(np.max(np.maximum(hi_in, 0.0)) - np.min(np.minimum(lo_in, 0.0)))
    big_out = float(np.max(np.maximum(hi_out, 0.0)) - np.min(np.minimum(lo_out, 0.0)))
    live = r_in > 1e-6 * big_in
    if not np.any(live) or big_out <= 0 or len(r_in) != len(r_out):
        return 0.0
    rho = r_out[live] / r_in[live] * (big_in if noise_range is None else noise_range) / big_out
    return float(np.percentile(rho, DEPTHWISE_AMPLIFICATION_QUANTILE))


def elementwise_source(tensor: str, idx: GraphIndex, max_nodes: int = 8, *, scalars_only: bool = False,
                       until: str | None = None) -> str | None:
    """The one tensor that ``tensor`` is computed from by elementwise activation ops alone (constants aside), or
    None: a HardSwish, or one decomposed as ``x * Clip(x + 3, 0, 6) / 6`` (Paddle2ONNX), leads back to ``x``; a
    residual Add of two activations, a tensor no such op produces, or more than ``max_nodes`` ops, to None.
    ``scalars_only``: only one-value constants are set aside (a per-channel one is a second source: the result
    is then no function of the one tensor's values alone); ``until``: a tensor the walk stops at, whatever
    produces it."""
    first = idx.producer.get(tensor)
    if first is None or first.op_type not in ELEMENTWISE:
        return None

    def constant(i: str) -> bool:
        if scalars_only:
            return idx.scalar(i) is not None
        return i in idx.initializers or (i in idx.producer and idx.producer[i].op_type == "Constant")

    roots, seen, todo = set(), set(), [tensor]
    while todo:
        t = todo.pop()
        node = idx.producer.get(t)
        if t != tensor and (t == until or node is None or node.op_type not in ELEMENTWISE):
            roots.add(t)
            continue
        if node.output[0] in seen:
            continue
        seen.add(node.output[0])
        if len(seen) > max_nodes:
            return None
        todo += [i for i in node.input if i and not constant(i)]
    return roots.pop() if len(roots) == 1 else None


def _heavy_reason(node: onnx.NodeProto, idx: GraphIndex, is_act) -> str | None:
    ins = list(node.input)
    if node.op_type == "Conv":
        if len(ins) < 2 or not is_act(ins[0]):
            return "input is not a float activation"
        if ins[1] not in idx.initializers:
            return "weight is not a constant"
        return None
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return "Gemm with transA=1 has no integer kernel"
        if not is_act(ins[0]) or ins[1] not in idx.initializers:
            return "Gemm needs an activation A and a constant B"
        if len(ins) > 2 and ins[2] and ins[2] not in idx.initializers:
            return "Gemm bias is not a constant"
        return None
    if node.op_type == "MatMul":
        a, b = ins[0], ins[1]
        if not is_act(a):
            return "A is not a float activation"
        if not (is_act(b) or b in idx.initializers):
            return "B is neither a float activation nor a constant"
        if b in idx.initializers and idx.const(b).dtype != np.float32:
            return "B is not float32"
        return None
    return "not a quantizable op"


def _head_dim(node: onnx.NodeProto, shapes: dict) -> int | None:
    """A MatMul of two activations: the smaller static one of its inner dim K and output dim N (attention's
    head dimension for both Q.K^T and P.V, whose other dim is the sequence), None where neither is static."""
    a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
    dims = [d for d in ((a[-1] if a else None), (b[-1] if b and len(b) >= 2 else None)) if d]
    return min(dims) if dims else None


def _weight_axis(node: onnx.NodeProto, idx: GraphIndex, i: int, options: PlanOptions) -> int | None:
    per_channel = options.per_channel
    for pattern, pc in options.granularity:
        if is_excluded(node, (pattern,)):
            per_channel = pc
    if not per_channel:
        return None
    w = idx.const(node.input[i])
    lay = layout(node)
    if node.op_type == "MatMul" and (w is None or w.ndim != 2):
        return None
    return lay.out_axis if lay is not None else None


def _bias_ok(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    b = idx.const(node.input[2])
    w = idx.const(node.input[1])
    if b is None or w is None or b.dtype != np.float32:
        return False
    if node.op_type == "Gemm":
        cout = layout(node).channels(w.shape)
        if attr(node, "beta", 1.0) != 1.0 or b.size != cout or b.ndim != 1:
            return False
        return True
    return b.ndim == 1 and b.size == layout(node).channels(w.shape)


def _absorbable(act: onnx.NodeProto, idx: GraphIndex, options: PlanOptions) -> bool:
    if act.op_type not in ABSORBABLE or options.symmetric_activations or act.output[0] in idx.graph_outputs:
        return False
    if act.op_type == "Relu":
        return True
    if act.op_type == "Clip":
        lo = _clip_bound(act, idx, 1, "min")
        hi = _clip_bound(act, idx, 2, "max")
        return lo is not None and lo == 0.0 and (hi is None or hi > 0)
    return False


def _clip_bound(node: onnx.NodeProto, idx: GraphIndex, i: int, name: str) -> float | None:
    if len(node.input) > i and node.input[i]:
        v = idx.const(node.input[i])
        return None if v is None else float(v)
    v = attr(node, name)
    return None if v is None else float(v)


def _absorb(node: onnx.NodeProto, idx: GraphIndex, options: PlanOptions, p: QuantPlan) -> str:
    """Absorb a following Relu/Clip if possible; return the name the quantized output will have."""
    out = node.output[0]
    nxt = idx.single_consumer(out)
    if nxt is not None and _absorbable(nxt, idx, options) and not is_excluded(nxt, options.exclude):
        p.absorbed[nxt.name] = node.name
        return nxt.output[0]
    return out
