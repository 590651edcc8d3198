"""FP16 / BF16 conversion: a deterministic pure graph pass (no ONNX Runtime); the input model is not modified.

**fp16** -- standard-domain nodes compute in float16 except these, kept float32 and listed in ``kept_float``:
op types in :data:`DEFAULT_KEEP_FLOAT_OPS` or the caller's ``keep_op_types`` (reasons in :data:`KEEP_FLOAT_REASONS`:
overflow (``Exp``, ``Pow``), reductions and ``Softmax``, normalization statistics, coordinates/indices (``Range``,
``TopK``, NMS, ``Resize``...), QDQ ops -- close to onnxconverter-common's and onnxruntime.transformers' lists);
:data:`ALWAYS_FLOAT_OPS` (typed by an attribute, sequences); ``Cast`` of an integer/bool tensor to float (shape
arithmetic stays exact); ops without a float16 output in their schema at the model's opset; other domains; nodes
with subgraphs (``If``/``Loop``/``Scan``: kept whole, outer tensors they read are given in float32); ``keep_nodes``
(names, op types or patterns, as ``--exclude``); :data:`FOLLOW_OPS` whose non-constant float inputs all come from
float32 nodes (a decomposed LayerNorm's ``var + eps -> Sqrt`` stays float32). Nodes with float inputs but no float
output (``Shape``, comparisons) take inputs as they come; inputs typed float32-only (``Resize`` scales) stay float32.

A float32 initializer, ``Constant`` or ``ConstantOfShape`` value becomes float16 when every use wants float16, else
it stays float32 and one ``Cast`` feeds the float16 uses. Finite values beyond +-65504 are clamped (listed in
``clamped_initializers``), nonzero values below 2**-24 become +-2**-24 (epsilons stay nonzero); integer tensors are
never touched. One ``Cast`` per tensor and direction joins float32 and float16 regions, shared by all consumers.
Graph I/O stays float32 with ``keep_io_types`` (else float16). In a converted region ``Cast(to=FLOAT)`` becomes
``Cast(to=FLOAT16)``; value_info types follow. The result must pass strict type inference.

**bf16** -- ONNX Runtime's CPU provider has no bfloat16 kernels for Conv/MatMul/Gemm or elementwise ops (probed with
ORT 1.32: only data movement such as Transpose/Reshape/Concat and LayerNormalization load). So bf16 is *weight
storage*: float32 weights at :data:`BF16_WEIGHT_INPUTS` (used nowhere else) are stored as bfloat16 (round to
nearest even) and widened by ``Cast(to=FLOAT)``; compute and I/O stay float32. The file is about half the size;
outputs differ from FP32 by the rounding of the weights to 8 significant bits.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .. import external
from ..errors import InternalError
from ..transforms.graph import float_tensors, unique_name
from .policy import is_excluded

FLOAT, FLOAT16, BFLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
FP16_MAX, FP16_TINY = 65504.0, 2.0 ** -24  # largest finite and smallest positive (subnormal) float16

_UNSAFE = "op unsafe in half precision: "
KEEP_FLOAT_REASONS: dict[str, str] = {  # op type -> why it stays float32 by default
    **dict.fromkeys(("Exp", "Pow"), _UNSAFE + "overflows float16 (exp(x) beyond x~11, x**2 beyond |x|~256)"),
    **dict.fromkeys(("ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "CumSum"),
                    _UNSAFE + "reduction, sums over an axis overflow or lose precision in float16"),
    **dict.fromkeys(("Softmax", "LogSoftmax"), _UNSAFE + "Softmax reductions (sum of exponentials) over the axis"),
    **dict.fromkeys(("LayerNormalization", "GroupNormalization", "InstanceNormalization", "MeanVarianceNormalization",
                     "LpNormalization"), _UNSAFE + "normalization statistics overflow or lose precision"),
    **dict.fromkeys(("Range", "TopK", "NonMaxSuppression", "RoiAlign", "Resize", "Upsample", "GridSample"),
                    _UNSAFE + "coordinates/scales/indices (float16 is exact only to 2048)"),
    **dict.fromkeys(("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
                    "quantization op: scales and zero points belong to float32"),
}
DEFAULT_KEEP_FLOAT_OPS: frozenset[str] = frozenset(KEEP_FLOAT_REASONS)
ALWAYS_FLOAT_OPS: dict[str, str] = {  # kept float32 whatever keep_op_types says
    **dict.fromkeys(("EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Bernoulli", "Multinomial"), "output type set by an attribute"),
    **dict.fromkeys(("SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceErase",
                     "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional", "OptionalGetElement",
                     "OptionalHasElement"), "sequence/optional op (containers are kept float32)"),
}
# cheap elementwise ops that stay float32 when their non-constant float inputs all come from float32 nodes
FOLLOW_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg", "Abs", "Log", "Max", "Min",
                        "Floor", "Ceil", "Round", "Clip", "Cast", "Identity"})
# bf16 weight storage: op type -> input positions holding weights (None: every input)
BF16_WEIGHT_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1), "Gather": (0,), "Einsum": None,
    "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}
BF16_MIN_ELEMENTS = 16  # smaller tensors (scalars, tiny vectors) are not worth the rounding
_STD_DOMAINS = ("", "ai.onnx")
_SUFFIX = {FLOAT: "fp32", FLOAT16: "fp16", BFLOAT16: "bf16"}


@dataclasses.dataclass
class HalfReport:
    precision: str  # "fp16" or "bf16"
    converted_nodes: int = 0
    kept_float: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (node name, reason)
    converted_initializers: int = 0  # initializers, Constant and ConstantOfShape values
    clamped_initializers: list[str] = dataclasses.field(default_factory=list)
    casts_inserted: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def convert_to_half(model: onnx.ModelProto, precision: str = "fp16", *, keep_io_types: bool = True,
                    keep_op_types: Iterable[str] | None = None,
                    keep_nodes: Iterable[str] = ()) -> tuple[onnx.ModelProto, HalfReport]:
    """A converted copy of ``model`` and what was done (rules: module docstring). ``keep_op_types`` replaces
    :data:`DEFAULT_KEEP_FLOAT_OPS`; ``keep_nodes`` takes node names, op types, globs or ``re:`` patterns."""
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"precision must be 'fp16' or 'bf16', got {precision!r}")
    if precision == "fp16" and _opset(model) < 6:
        raise ValueError(f"fp16 conversion needs opset >= 6 (Cast with a type number), the model has {_opset(model)}")
    keep_ops = DEFAULT_KEEP_FLOAT_OPS if keep_op_types is None else frozenset(keep_op_types)
    patterns = tuple(keep_nodes)
    out = copy.deepcopy(model)
    if precision == "fp16":
        rep = _Fp16(out, keep_io_types, keep_ops, patterns).run()
    else:
        rep = _bf16_weights(out, None if keep_op_types is None else keep_ops, patterns, keep_io_types)
    _verify(model, out, precision)
    return out, rep


def _node_name(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def _user_kept(node: onnx.NodeProto, i: int, patterns: tuple[str, ...]) -> bool:
    return is_excluded(node, patterns) or (not node.name and _node_name(node, i) in patterns)


def _names(g: onnx.GraphProto) -> set[str]:
    return {v.name for v in list(g.input) + list(g.output) + list(g.initializer)} | {
        x for n in g.node for x in list(n.input) + list(n.output) if x}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _STD_DOMAINS), 1)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs)]


def _outer_refs(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraphs (recursively) read from outer scopes, in a stable order."""
    used: list[str] = []
    defined: set[str] = set()
    todo = _subgraphs(node)
    while todo:
        g = todo.pop(0)
        defined.update([v.name for v in list(g.input) + list(g.initializer)] + [o for n in g.node for o in n.output])
        used += [i for n in g.node for i in n.input] + [o.name for o in g.output]
        todo += [sg for n in g.node for sg in _subgraphs(n)]
    return list(dict.fromkeys(u for u in used if u and u not in defined))


def _rename_refs(g: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for n in g.node:
        n.input[:] = [mapping.get(i, i) for i in n.input]
        for sg in _subgraphs(n):
            _rename_refs(sg, mapping)
    for o in g.output:
        o.name = mapping.get(o.name, o.name)


def _half_types(node: onnx.NodeProto, opset: int, float_outs: set[str]) -> tuple[list[bool], bool]:
    """Per input: may it be float16 per the schema? And: may every float output be float16?"""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return [False] * len(node.input), False
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic

    def ok(params, k: int) -> bool:
        if not params or (k >= len(params) and params[-1].option != variadic):
            return False
        p = params[min(k, len(params) - 1)]
        return "tensor(float16)" in allowed.get(p.type_str, {p.type_str})

    outs = [k for k, t in enumerate(node.output) if t in float_outs and node.op_type != "Cast"]  # Cast: `to`
    return [ok(schema.inputs, k) for k in range(len(node.input))], all(ok(schema.outputs, k) for k in outs)


def _constant_array(node: onnx.NodeProto) -> np.ndarray | None:
    """The float32 value of a Constant (ConstantOfShape: its fill value), or None when not float32."""
    if node.op_type == "ConstantOfShape" and not node.attribute:
        return np.zeros(1, np.float32)  # the default fill value
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == FLOAT and not a.t.external_data:
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
    return None


def _set_constant(node: onnx.NodeProto, t: onnx.TensorProto) -> None:
    t.name = next((a.t.name for a in node.attribute if a.name == "value"), "")
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", t))


def _fp16_array(arr: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """float32 -> float16, clamping finite values beyond +-65504 and raising nonzero |x| < 2**-24."""
    a = np.asarray(arr, np.float32)
    big = np.isfinite(a) & (np.abs(a) > FP16_MAX)
    tiny = (a != 0) & (np.abs(a) < FP16_TINY)
    a = np.where(big, np.sign(a) * FP16_MAX, np.where(tiny, np.sign(a) * FP16_TINY, a))
    return a.astype(np.float16), bool(big.any()), bool(tiny.any())


class _Fp16:
    def __init__(self, model: onnx.ModelProto, keep_io: bool, keep_ops: frozenset[str], patterns: tuple[str, ...]):
        self.g, self.keep_io, self.keep_ops, self.patterns = model.graph, keep_io, keep_ops, patterns
        self.rep, self.opset, g = HalfReport("fp16"), _opset(model), self.g
        self.inits = {t.name: t for t in g.initializer}
        self.consts = {n.output[0]: n for n in g.node  # Constant / ConstantOfShape with a float32 value
                       if n.op_type in ("Constant", "ConstantOfShape") and _constant_array(n) is not None}
        self.floats = (float_tensors(model) | {n for n, t in self.inits.items() if t.data_type == FLOAT}
                       | set(self.consts))
        self.needs: dict[str, list[int]] = {}  # float tensor -> precision each use wants
        self.mode: dict[int, int] = {}  # node index -> FLOAT16 (converted) or FLOAT
        self.half_in: dict[int, list[bool]] = {}  # node index -> which inputs are given in float16
        self.tensor_names, self.node_names = _names(g), {n.name for n in g.node}
        self.casts: dict[tuple[str, int], str] = {}
        self.internal: dict[str, str] = {}  # graph output produced in the other precision -> internal name
        self.tiny = 0

    def run(self) -> HalfReport:
        self.plan()
        self.rewrite()
        self.rep.notes.append(
            "fp16 on CPU: ONNX Runtime (measured: 1.32, x86-64) has float16 kernels only for a few ops "
            "(Transpose/Reshape/Concat, LayerNormalization); for the rest it inserts Casts and computes in FP32, "
            "and its optimizer widens float16 weights back to FP32 at load. Expect no speed-up and FP32 memory: "
            "about FP32 speed, some 15% slower where float16 and FP32 kernels alternate, up to 2x slower with "
            "graph optimizations off; the file is about half the size")
        if self.tiny:
            self.rep.notes.append(f"{self.tiny} tensor(s) had nonzero values below float16's smallest subnormal "
                                  "(6e-8); stored as +-6e-8 so they stay nonzero (epsilons)")
        return self.rep

    # ---- 1. decide a precision for every node and float tensor
    def plan(self) -> None:
        g, F, H = self.g, FLOAT, FLOAT16
        io = F if self.keep_io else H
        self.home: dict[str, int] = {  # float tensor -> FLOAT or FLOAT16: the precision it is produced in
            i.name: F if i.name in self.inits else io for i in g.input if i.name in self.floats}
        kept_t: set[str] = set()  # float tensors produced by kept-float nodes
        for idx, node in enumerate(g.node):
            if node.output and node.output[0] in self.consts:
                continue
            fin = [t for t in node.input if t in self.floats]
            fout = [t for t in node.output if t in self.floats]
            refs = [t for t in _outer_refs(node) if t in self.floats]
            if not (fin or fout or refs):
                continue
            half_in, half_out = _half_types(node, self.opset, self.floats)
            dyn = [t for t in fin if t not in self.inits and t not in self.consts]  # initializer inputs: constants
            why = self.reason(node, idx, half_out, dyn, kept_t, refs)
            if why is None and not fout:  # Shape, comparisons, Cast to int: take inputs as they come
                self.mode[idx] = H if dyn and all(self.home.get(t, F) == H for t in dyn) else F
                self.half_in[idx] = [self.mode[idx] == H] * len(node.input)
            elif why is None:
                self.mode[idx], self.half_in[idx] = H, half_in
                self.rep.converted_nodes += 1
            else:
                self.mode[idx], self.half_in[idx] = F, [False] * len(node.input)
                self.rep.kept_float.append((_node_name(node, idx), why))
                kept_t.update(fout)
            wants = [(t, H if self.half_in[idx][k] else F) for k, t in enumerate(node.input) if t in self.floats]
            for t, w in wants + [(t, F) for t in refs]:
                self.needs.setdefault(t, []).append(w)
            for t in fout:
                self.home[t] = self.mode[idx]
        for o in g.output:
            if o.name in self.floats:
                self.needs.setdefault(o.name, []).append(F if self.keep_io or o.name in self.inits else H)
        for t in list(self.inits) + list(self.consts):
            if t in self.floats:
                wants = self.needs.get(t, [])
                self.home[t] = H if wants and all(w == H for w in wants) else F

    def reason(self, node: onnx.NodeProto, idx: int, half_out: bool, dyn: list[str], kept: set[str],
               refs: list[str]) -> str | None:
        op = node.op_type
        if _user_kept(node, idx, self.patterns):
            return "excluded by --exclude"
        if node.domain not in _STD_DOMAINS:
            return f"op of domain '{node.domain}': no half kernel assumed"
        if refs or _subgraphs(node):
            return "has subgraphs (If/Loop/Scan are kept whole in float32)"
        if op in self.keep_ops:
            return KEEP_FLOAT_REASONS.get(op, "op type kept by user")
        if op in ALWAYS_FLOAT_OPS:
            return ALWAYS_FLOAT_OPS[op]
        if op == "Cast" and node.input[0] not in self.floats:
            return "Cast of an integer/bool tensor to float (kept exact in float32)"
        if not half_out:
            return f"no half kernel: the schema has no float16 output at opset {self.opset}"
        if op in FOLLOW_OPS and dyn and all(t in kept for t in dyn):
            return "inputs come from float32 nodes (statistics / shape arithmetic stay float32)"
        return None

    # ---- 2. rewrite the graph
    def get(self, t: str, prec: int, out: list[onnx.NodeProto]) -> str:
        """Name of tensor ``t`` in precision ``prec``; emits the (shared) Cast on first request."""
        if self.home.get(t, FLOAT) == prec:
            return self.internal.get(t, t)
        if (t, prec) not in self.casts:
            name = self.casts[(t, prec)] = unique_name(f"{t}_{_SUFFIX[prec]}", self.tensor_names)
            out.append(helper.make_node("Cast", [self.internal.get(t, t)], [name], to=prec,
                                        name=unique_name(f"{name}_Cast", self.node_names)))
            self.rep.casts_inserted += 1
        return self.casts[(t, prec)]

    def convert_const(self, name: str, arr: np.ndarray) -> onnx.TensorProto:
        half, big, tiny = _fp16_array(arr)
        self.rep.converted_initializers, self.tiny = self.rep.converted_initializers + 1, self.tiny + tiny
        self.rep.clamped_initializers += [name] if big else []
        return numpy_helper.from_array(half, name)

    def rewrite(self) -> None:
        g, F, H = self.g, FLOAT, FLOAT16
        want_out = F if self.keep_io else H
        for t in g.initializer:
            if self.home.get(t.name) == H:
                t.CopyFrom(self.convert_const(t.name, external.array(t)))
        for i in g.input:  # float16 graph inputs, and initializers that are also listed as inputs
            if self.home.get(i.name) == H:
                i.type.tensor_type.elem_type = H
        produced = {t for n in g.node for t in n.output}
        for o in g.output:
            if o.name in self.floats and o.name in produced:
                if self.home.get(o.name, F) != want_out:
                    self.internal[o.name] = unique_name(f"{o.name}_{_SUFFIX[self.home[o.name]]}", self.tensor_names)
                    self.casts[(o.name, want_out)] = o.name
                o.type.tensor_type.elem_type = want_out
            elif o.name in self.floats:  # a graph input or initializer passed straight through
                o.type.tensor_type.elem_type = self.home.get(o.name, F)
        nodes: list[onnx.NodeProto] = []
        for idx, node in enumerate(g.node):
            if node.output and node.output[0] in self.consts:
                if self.home.get(node.output[0]) == H:
                    _set_constant(node, self.convert_const(node.output[0], _constant_array(node)))
            elif idx in self.mode:
                for k, t in enumerate(node.input):
                    if t in self.floats:
                        node.input[k] = self.get(t, H if self.half_in[idx][k] else F, nodes)
                mapping = {t: self.get(t, F, nodes) for t in _outer_refs(node) if t in self.floats}
                for sg in _subgraphs(node):
                    _rename_refs(sg, {a: b for a, b in mapping.items() if a != b})
                for a in node.attribute if node.op_type == "Cast" and self.mode[idx] == H else ():
                    a.i = H if a.name == "to" and a.i == F else a.i
            nodes.append(node)
            for k, t in enumerate(node.output):
                if t in self.internal:
                    node.output[k] = self.internal[t]
                    nodes.append(helper.make_node("Cast", [self.internal[t]], [t], to=want_out,
                                                  name=unique_name(f"{t}_Cast", self.node_names)))
                    self.rep.casts_inserted += 1
        del g.node[:]
        g.node.extend(nodes)
        for vi in g.value_info:
            if vi.type.tensor_type.elem_type == F and self.home.get(vi.name) == H:
                vi.type.tensor_type.elem_type = H


def _bf16_bits(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """float32 -> bfloat16 bit patterns (round to nearest even; NaN stays NaN; finite never becomes inf)."""
    a = np.ascontiguousarray(arr, np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    overflow = np.isfinite(a) & ((out & 0x7FFF) == 0x7F80)
    out = np.where(overflow, (out & 0x8000) | 0x7F7F, out)  # largest finite bfloat16
    return np.where(np.isnan(a), 0x7FC0, out).astype(np.uint16), bool(overflow.any())


def _bf16_uses(g: onnx.GraphProto, keep_ops: frozenset[str] | None, patterns: tuple[str, ...], rep: HalfReport
               ) -> tuple[dict[str, list[tuple[int, int]]], set[str], set[int]]:
    """Where each tensor is read (node index, input position), the tensors that must stay float32 (graph I/O,
    names subgraphs read) and the weighted nodes the user kept in FP32 (recorded in ``rep``)."""
    init_names = {t.name for t in g.initializer}
    pinned = {i.name for i in g.input if i.name not in init_names} | {o.name for o in g.output}  # I/O stay float32
    uses: dict[str, list[tuple[int, int]]] = {}
    kept: set[int] = set()
    for idx, node in enumerate(g.node):
        for k, t in enumerate(node.input):
            uses.setdefault(t, []).append((idx, k))
        pinned.update(_outer_refs(node))
        if node.op_type in BF16_WEIGHT_INPUTS:
            why = ("excluded by --exclude" if _user_kept(node, idx, patterns) else
                   "op type kept by user" if keep_ops is not None and node.op_type in keep_ops else None)
            if why:
                kept.add(idx)
                rep.kept_float.append((_node_name(node, idx), why))
    return uses, pinned, kept


def _bf16_weights(model: onnx.ModelProto, keep_ops: frozenset[str] | None, patterns: tuple[str, ...],
                  keep_io: bool) -> HalfReport:
    g, rep = model.graph, HalfReport("bf16")
    if _opset(model) < 13:
        rep.notes.append(f"bf16: nothing converted: Cast from bfloat16 needs opset 13 and the model has opset "
                         f"{_opset(model)} (upgrade it with onnx.version_converter first)")
        return rep
    taken, node_names = _names(g), {n.name for n in g.node}
    uses, pinned, kept = _bf16_uses(g, keep_ops, patterns, rep)

    def eligible(name: str, arr: np.ndarray) -> bool:  # used only at weight positions of converted nodes
        pos = [(BF16_WEIGHT_INPUTS.get(g.node[i].op_type, ()), i, k) for i, k in uses.get(name, [])]
        return (name not in pinned and arr.size >= BF16_MIN_ELEMENTS and bool(pos) and all(
            g.node[i].domain in _STD_DOMAINS and i not in kept and (p is None or k in p) for p, i, k in pos))

    converted: set[int] = set()

    def stored(name: str, arr: np.ndarray, tensor_name: str) -> onnx.TensorProto:
        bits, clamped = _bf16_bits(arr)
        rep.clamped_initializers += [name] if clamped else []
        rep.converted_initializers += 1
        converted.update(i for i, _ in uses[name])
        return helper.make_tensor(tensor_name, BFLOAT16, arr.shape, bits.tobytes(), raw=True)

    def widen(src: str, dst: str) -> onnx.NodeProto:
        rep.casts_inserted += 1
        return helper.make_node("Cast", [src], [dst], to=FLOAT, name=unique_name(f"{dst}_Cast", node_names))

    nodes: list[onnx.NodeProto] = []
    for i, t in enumerate(g.initializer):
        if t.data_type == FLOAT and eligible(t.name, arr := external.array(t)):
            new = unique_name(f"{t.name}_bf16", taken)
            nodes.append(widen(new, t.name))
            for inp in g.input:  # an initializer also listed as an input (IR < 4 style) is renamed with it
                if inp.name == t.name:
                    inp.name, inp.type.tensor_type.elem_type = new, BFLOAT16
            g.initializer[i].CopyFrom(stored(t.name, arr, new))
    for node in g.node:
        nodes.append(node)
        arr = _constant_array(node) if node.op_type == "Constant" else None
        if arr is not None and eligible(node.output[0], arr):
            name, new = node.output[0], unique_name(f"{node.output[0]}_bf16", taken)
            _set_constant(node, stored(name, arr, ""))
            node.output[0] = new
            nodes.append(widen(new, name))
    g.ClearField("node")
    g.node.extend(nodes)
    rep.converted_nodes = len(converted)
    rep.notes.append(
        "bf16 = bfloat16 weight storage: ONNX Runtime's CPU provider has no bfloat16 Conv/MatMul/Gemm or "
        "elementwise kernels (probed with 1.32), so weights are stored as bfloat16 and widened to FP32 by a Cast "
        "that ONNX Runtime folds at load; compute stays FP32 (FP32 speed and memory), the file is about half "
        "the size, and outputs differ from FP32 by the bfloat16 rounding of the weights (8 significant bits)")
    if not keep_io:
        rep.notes.append("keep_io_types=False has no effect with bf16: inputs and outputs stay float32")
    return rep


def _type_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 -- onnx raises several exception types here
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return None


def _verify(original: onnx.ModelProto, converted: onnx.ModelProto, precision: str) -> None:
    """Strict type inference on the result; a failure the original does not have is a bug here.  A model with
    external data is checked without its converted weights' bytes (inference reads types and shapes)."""
    if external.has_external(original):
        converted = external.without_weights(converted)
    if (msg := _type_error(converted)) and _type_error(original) is None:
        raise InternalError(f"{precision} conversion produced an inconsistent graph: {msg}")
