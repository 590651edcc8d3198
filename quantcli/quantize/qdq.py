"""Insert QuantizeLinear/DequantizeLinear nodes for a :class:`~quantcli.quantize.policy.QuantPlan`.

One pass, in topological order:

* absorbed Relu/Clip nodes are removed and their producer writes their output name;
* each planned activation tensor ``T`` gets ``T -> QuantizeLinear -> T_quantized -> DequantizeLinear ->
  T_dequantized`` right after its producer; quantized consumers read ``T_dequantized``, float consumers
  too where ``T``'s producer is quantized (it exists only as int8 once fused), else the exact ``T`` (a graph
  output always keeps the exact float ``T``);
* each planned weight becomes an int8 initializer ``W_quantized`` read through a DequantizeLinear
  (``axis`` = output-channel axis when per channel); each bias an int32 initializer with
  ``scale = input_scale * weight_scale`` and zero point 0.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..transforms.graph import EventKind, GraphIndex, PassResult, remove_unused_initializers
from . import params as qp
from .policy import QuantPlan


@dataclasses.dataclass(frozen=True)
class QDQOptions:
    symmetric_activations: bool = False
    reduce_range: bool = False


def insert_qdq(model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, tuple[float, float]],
               options: QDQOptions = QDQOptions()) -> PassResult:
    model = copy.deepcopy(model)
    g = model.graph
    result = PassResult(model)
    _absorb_activations(g, plan)
    idx = GraphIndex(g)
    new_inits: list[onnx.TensorProto] = []
    act_params = _activation_params(plan, ranges, options)
    const_nodes, nweights, nbias = _quantize_constants(g, idx, plan, act_params, options, new_inits)
    targets = set(act_params)
    q_nodes = {t: _qdq_pair(t, act_params[t], new_inits) for t in sorted(targets)}
    # quantized consumers read T_dequantized (ONNX Runtime fuses that DequantizeLinear into their integer
    # kernel); a float consumer reads the exact T where T's producer runs in float anyway (a LayerNorm
    # feeding both a MatMul and a residual Add): no DequantizeLinear to run for it, no rounding on its path.
    # Where the producer is quantized, T exists only as int8 once fused, so float consumers read it dequantized.
    float_source = {t for t in targets if t in idx.graph_inputs
                    or (t in idx.producer and idx.producer[t].name not in plan.quantized_nodes)}
    for node in g.node:
        quantized = node.name in plan.quantized_nodes
        for i, name in enumerate(node.input):
            if name in targets and (quantized or name not in float_source):
                node.input[i] = f"{name}_dequantized"
    ordered: list[onnx.NodeProto] = list(const_nodes)
    for t in sorted(targets & idx.graph_inputs):
        ordered.extend(q_nodes[t])
    for node in g.node:
        ordered.append(node)
        for o in node.output:
            if o in q_nodes:
                ordered.extend(q_nodes[o])
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    remove_unused_initializers(g)
    result.add(EventKind.QUANTIZED, "", f"{len(targets)} activation tensor(s), {nweights} weight(s), "
                                        f"{nbias} bias(es) quantized; {len(plan.absorbed)} activation(s) absorbed")
    return result


def requantize(q: onnx.ModelProto, model: onnx.ModelProto, plan: QuantPlan, ranges: dict[str, tuple[float, float]],
               options: QDQOptions, tensors: set[str]) -> None:
    """Bring ``q`` (``insert_qdq(model, plan, ranges, options)`` of an earlier ``model``, same graph) up to date
    after the float initializers ``tensors`` of ``model`` changed (biases moved by bias correction), in place: the
    quantized biases made from them and their layers' weights (a bias can raise its weight's scale), or the
    initializers themselves where ``q`` reads them in float.  The same initializers ``insert_qdq`` writes, without
    its deep copy and requantizing every weight: empirical bias correction rebuilt the whole Q/DQ model once per
    corrected layer (YOLOX, 83 layers: 31 of 75 s of bias correction in a --max-drop convert)."""
    biases = [bs for bs in plan.biases if bs.tensor in tensors]
    weights = {bs.weight for bs in biases}
    sub = dataclasses.replace(plan, biases=biases, weights=[ws for ws in plan.weights if ws.tensor in weights])
    nodes = {bs.node for bs in biases} | {ws.node for ws in sub.weights}
    scratch = helper.make_graph([n for n in model.graph.node if n.name in nodes], "scratch", [], [])
    fresh: list[onnx.TensorProto] = []
    _quantize_constants(scratch, GraphIndex(model.graph), sub, _activation_params(plan, ranges, options), options,
                        fresh)
    written = {t.name for t in fresh}
    by_name = {t.name: t for t in model.graph.initializer}
    fresh += [by_name[t] for t in sorted(tensors) if t in by_name and f"{t}_quantized" not in written]
    where = {t.name: i for i, t in enumerate(q.graph.initializer)}
    for t in fresh:
        if t.name in where:
            q.graph.initializer[where[t.name]].CopyFrom(t)


def _activation_params(plan: QuantPlan, ranges: dict, options: QDQOptions) -> dict[str, qp.QParams]:
    """Activation parameters: from the tensor's own range, or shared through layout ops."""
    act_params: dict[str, qp.QParams] = {}
    for t, rt in sorted(plan.activations.items()):
        if rt not in ranges:
            raise KeyError(rt)
        lo, hi = ranges[rt]
        act_params[t] = qp.activation_params(lo, hi, symmetric=options.symmetric_activations)
    for t in sorted(plan.shared):
        src = plan.shared[t]
        while src in plan.shared:
            src = plan.shared[src]
        act_params[t] = act_params[src]
    return act_params


def _quantize_constants(g: onnx.GraphProto, idx: GraphIndex, plan: QuantPlan, act_params: dict,
                        options: QDQOptions, new_inits: list) -> tuple[list[onnx.NodeProto], int, int]:
    """Weights and biases as quantized initializers read through DequantizeLinear (a bias may raise its weight's
    scale so the int32 bias fits, so biases go first); returns (the DequantizeLinear nodes, #weights, #biases)."""
    nodes_by_name = {n.name: n for n in g.node}
    users: dict[str, int] = {}
    for ws in plan.weights:
        users[ws.tensor] = users.get(ws.tensor, 0) + 1
    axes = {ws.tensor: ws.axis for ws in plan.weights}
    wparams = {t: qp.weight_params(idx.const(t), axis=axes[t], reduce_range=options.reduce_range)
               for t in sorted(axes)}
    const_nodes: list[onnx.NodeProto] = []
    nbias = 0
    for bs in plan.biases:
        if bs.activation not in act_params or bs.weight not in wparams:
            continue
        bp, raised = qp.bias_params(idx.const(bs.tensor), float(act_params[bs.activation].scale), wparams[bs.weight])
        if users[bs.weight] == 1:
            wparams[bs.weight] = raised
        qb = qp.quantize_bias(idx.const(bs.tensor), bp)
        const_nodes += _dq_initializer(bs.tensor, qb, bp, new_inits, done=set())
        nodes_by_name[bs.node].input[bs.input_index] = f"{bs.tensor}_dequantized"
        nbias += 1
    done: set[str] = set()
    for ws in plan.weights:
        q = qp.quantize_weight(idx.const(ws.tensor), wparams[ws.tensor], reduce_range=options.reduce_range)
        const_nodes += _dq_initializer(ws.tensor, q, wparams[ws.tensor], new_inits, done)
        nodes_by_name[ws.node].input[ws.input_index] = f"{ws.tensor}_dequantized"
    return const_nodes, len(done), nbias


def _qdq_pair(t: str, p: qp.QParams, new_inits: list) -> list[onnx.NodeProto]:
    """T -> QuantizeLinear -> T_quantized -> DequantizeLinear -> T_dequantized, with its scale and zero point."""
    scale_name, zp_name = f"{t}_scale", f"{t}_zero_point"
    new_inits.append(numpy_helper.from_array(np.asarray(p.scale, np.float32), scale_name))
    new_inits.append(numpy_helper.from_array(np.asarray(p.zero_point), zp_name))
    return [helper.make_node("QuantizeLinear", [t, scale_name, zp_name], [f"{t}_quantized"], name=f"{t}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{t}_quantized", scale_name, zp_name], [f"{t}_dequantized"],
                             name=f"{t}_DequantizeLinear")]


def _absorb_activations(g: onnx.GraphProto, plan: QuantPlan) -> None:
    if not plan.absorbed:
        return
    by_name = {n.name: n for n in g.node}
    for act_name, prod_name in plan.absorbed.items():
        act, prod = by_name[act_name], by_name[prod_name]
        prod.output[0] = act.output[0]
    keep = [n for n in g.node if n.name not in plan.absorbed]
    del g.node[:]
    g.node.extend(keep)


def _dq_initializer(tensor: str, q: np.ndarray, p: qp.QParams, new_inits: list,
                    done: set[str]) -> list[onnx.NodeProto]:
    """Store ``q`` as ``<tensor>_quantized`` and return the DequantizeLinear that restores ``<tensor>_dequantized``."""
    if tensor in done:
        return []
    done.add(tensor)
    qname, scale_name, zp_name = f"{tensor}_quantized", f"{tensor}_scale", f"{tensor}_zero_point"
    new_inits.append(numpy_helper.from_array(q, qname))
    new_inits.append(numpy_helper.from_array(np.asarray(p.scale, np.float32), scale_name))
    new_inits.append(numpy_helper.from_array(np.asarray(p.zero_point), zp_name))
    kwargs = {"axis": p.axis} if p.axis is not None and np.ndim(p.scale) == 1 else {}
    return [helper.make_node("DequantizeLinear", [qname, scale_name, zp_name], [f"{tensor}_dequantized"],
                             name=f"{tensor}_DequantizeLinear", **kwargs)]
