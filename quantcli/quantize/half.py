"""FP16 / BF16 conversion.

**fp16** -- every node of the standard domain converts to float16 except op types unsafe in half
precision (:data:`DEFAULT_KEEP_FLOAT_OPS`: overflow-prone ``Pow``/``Exp``/reductions, as in a decomposed
LayerNorm, LayerNormalization and Softmax statistics, index/shape producing ops, random generators),
nodes with subgraphs, nodes of other domains and the nodes the user keeps.  Float initializers used only
by converted nodes are stored as float16 (values beyond +-65504 are clamped and reported); ``Constant``
nodes are converted the same way.  A ``Cast`` is inserted wherever a tensor crosses between a float32
and a float16 region (one per tensor and direction); graph inputs and outputs stay float32 unless
``keep_io_types=False``.  Inside a converted region ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``.

**bf16** -- ONNX Runtime's CPU provider has no bfloat16 kernels for Conv/MatMul/Gemm, so a bf16 graph
would not run there.  bf16 here is *weight storage*: the float weights of Conv/ConvTranspose/MatMul/Gemm
are stored as bfloat16 and widened by a ``Cast(to=FLOAT)`` at load; compute stays float32.  The file
is half the size; outputs differ from FP32 by the bf16 rounding of the weights (8 mantissa bits).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..transforms.graph import GraphIndex, float_tensors, remove_unused_initializers

FP16_MAX = 65504.0
DEFAULT_KEEP_FLOAT_OPS = frozenset({
    # overflow / precision hazards in half precision (x**2 of a LayerNorm input, exp, sums over long axes)
    "Pow", "Exp", "Log", "ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceProd", "ReduceLogSum",
    "ReduceLogSumExp", "CumSum", "LayerNormalization", "Softmax", "LogSoftmax",
    # produce indices / shapes or take float "parameters" that must stay float32
    "Range", "TopK", "NonMaxSuppression", "RoiAlign", "Resize", "Upsample", "ConstantOfShape", "EyeLike",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
})
WEIGHT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


@dataclasses.dataclass
class HalfReport:
    precision: str
    converted_nodes: int = 0
    kept_float: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    converted_initializers: int = 0
    clamped_initializers: list[str] = dataclasses.field(default_factory=list)
    casts_inserted: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def convert_to_half(model: onnx.ModelProto, precision: str = "fp16", *, keep_io_types: bool = True,
                    keep_op_types: Iterable[str] | None = None,
                    keep_nodes: Iterable[str] = ()) -> tuple[onnx.ModelProto, HalfReport]:
    if precision == "bf16":
        return _bf16_weights(model, set(keep_nodes))
    if precision != "fp16":
        raise ValueError(f"precision must be fp16 or bf16, got {precision}")
    return _fp16(model, keep_io_types, frozenset(keep_op_types) if keep_op_types is not None
                 else DEFAULT_KEEP_FLOAT_OPS, set(keep_nodes))


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Float32 tensors, including float initializers and Constant outputs."""
    names = float_tensors(model) | {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" \
                and n.attribute[0].t.data_type == TensorProto.FLOAT:
            names.add(n.output[0])
    return names


def _fp16(model: onnx.ModelProto, keep_io: bool, keep_ops: frozenset, keep_nodes: set[str]):
    model = copy.deepcopy(model)
    g = model.graph
    rep = HalfReport("fp16")
    floats = _float_tensors(model)
    idx = GraphIndex(g)
    convert: set[int] = set()
    for i, node in enumerate(g.node):
        why = None
        if node.name in keep_nodes or node.op_type in keep_nodes:
            why = "kept by --exclude"
        elif node.domain not in ("", "ai.onnx"):
            why = f"custom domain '{node.domain}'"
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            why = "has subgraphs"
        elif node.op_type in keep_ops:
            why = "unsafe or unsupported in half precision"
        elif node.op_type == "Constant" and not _all_consumers_converted(node, idx, keep_ops, keep_nodes):
            why = "feeds a float32 node"
        if why:
            if node.op_type != "Constant":
                rep.kept_float.append((node.name or node.op_type, why))
        else:
            convert.add(i)
    half: set[str] = set()  # tensors that will be float16
    # initializers used only by converted nodes become float16
    users: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            users.setdefault(name, []).append(i)
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    for name, t in inits.items():
        if t.data_type == TensorProto.FLOAT and name not in graph_outputs \
                and all(u in convert for u in users.get(name, [])) and users.get(name):
            arr = numpy_helper.to_array(t)
            if np.abs(arr).max(initial=0.0) > FP16_MAX:
                rep.clamped_initializers.append(name)
            t.CopyFrom(numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), name))
            half.add(name)
            rep.converted_initializers += 1
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            out = f"{name}_cast_{suffix}"
            casts[key] = out
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{name}_Cast_{suffix}", to=to))
            rep.casts_inserted += 1
        return casts[key]

    graph_inputs = {i.name for i in g.input}
    for inp in g.input:  # keep_io_types=False: float inputs become float16 themselves
        if not keep_io and inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inp.type.tensor_type.elem_type = TensorProto.FLOAT16
            half.add(inp.name)
    for i, node in enumerate(g.node):
        if i in convert:
            for k, name in enumerate(node.input):
                if name and name in floats and name not in half:
                    node.input[k] = cast(name, TensorProto.FLOAT16)
            if node.op_type == "Constant":
                a = node.attribute[0]
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    arr = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)))
            if node.op_type == "Cast":
                for a in node.attribute:
                    if a.name == "to" and a.i == TensorProto.FLOAT:
                        a.i = TensorProto.FLOAT16
            for o in node.output:
                if o in floats:
                    half.add(o)
            rep.converted_nodes += 1
        else:
            for k, name in enumerate(node.input):
                if name in half:
                    node.input[k] = cast(name, TensorProto.FLOAT)
        new_nodes.append(node)
    # graph outputs produced in float16
    for out in g.output:
        if out.name in half and out.name not in graph_inputs:
            if keep_io:
                tmp = f"{out.name}_fp16"
                for n in new_nodes:
                    for k, o in enumerate(n.output):
                        if o == out.name:
                            n.output[k] = tmp
                    for k, iname in enumerate(n.input):
                        if iname == out.name:
                            n.input[k] = tmp
                new_nodes.append(helper.make_node("Cast", [tmp], [out.name], name=f"{out.name}_Cast_fp32",
                                                  to=TensorProto.FLOAT))
                rep.casts_inserted += 1
            else:
                out.type.tensor_type.elem_type = TensorProto.FLOAT16
    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | {t.name for t in g.initializer}))
    del g.value_info[:]
    remove_unused_initializers(g)
    rep.notes.append("ONNX Runtime's CPU provider has FP16 kernels for few ops on x86 and casts to FP32 around "
                     "the rest: expect FP16 to be slower than FP32 here; it halves the size and pays off on "
                     "ARM CPUs with FP16 arithmetic")
    return model, rep


def _all_consumers_converted(node, idx: GraphIndex, keep_ops, keep_nodes) -> bool:
    cons = idx.consumers.get(node.output[0], [])
    return bool(cons) and node.output[0] not in idx.graph_outputs and all(
        c.op_type not in keep_ops and c.name not in keep_nodes and c.domain in ("", "ai.onnx") for c in cons)


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (casts were appended next to their first use)."""
    done = set(available) | {""}
    out, pending = [], list(nodes)
    while pending:
        progress = False
        rest = []
        for n in pending:
            if all(i in done for i in n.input):
                out.append(n)
                done.update(n.output)
                progress = True
            else:
                rest.append(n)
        if not progress:  # inputs from outer scopes or unknown: keep the remaining order
            out.extend(rest)
            break
        pending = rest
    return out


def _bf16_weights(model: onnx.ModelProto, keep_nodes: set[str]):
    model = copy.deepcopy(model)
    g = model.graph
    rep = HalfReport("bf16")
    idx = GraphIndex(g)
    stored: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type in WEIGHT_OPS and node.name not in keep_nodes and node.op_type not in keep_nodes:
            for k, name in enumerate(node.input[:2]):
                t = idx.initializers.get(name)
                if t is None or t.data_type != TensorProto.FLOAT or np.prod(t.dims) < 16:
                    continue
                if name not in stored:
                    arr = numpy_helper.to_array(t)
                    bf = helper.make_tensor(f"{name}_bf16", TensorProto.BFLOAT16, arr.shape,
                                            _to_bf16_bits(arr).tobytes(), raw=True)
                    g.initializer.append(bf)
                    stored[name] = f"{name}_widened"
                    new_nodes.append(helper.make_node("Cast", [bf.name], [stored[name]], name=f"{name}_Cast_fp32",
                                                      to=TensorProto.FLOAT))
                    rep.converted_initializers += 1
                    rep.casts_inserted += 1
                node.input[k] = stored[name]
            rep.converted_nodes += 1
        elif node.op_type in WEIGHT_OPS:
            rep.kept_float.append((node.name, "kept by --exclude"))
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    remove_unused_initializers(g)
    rep.notes.append("bf16 = bfloat16 weight storage widened to FP32 at load: ONNX Runtime's CPU provider has no "
                     "bfloat16 Conv/MatMul/Gemm kernels, so compute stays FP32 (same speed, half the size)")
    return model, rep


def _to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept NaN)."""
    bits = np.ascontiguousarray(arr, np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(arr)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded
