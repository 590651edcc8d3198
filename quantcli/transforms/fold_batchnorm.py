"""Fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm.

For an inference-mode BatchNormalization with scale gamma, bias beta, running mean mu, variance var:

    s = gamma / sqrt(var + eps)          (per output channel)
    W' = W * s   (along the output-channel axis of W)
    b' = (b - mu) * s + beta             (b = 0 when the layer has no bias)

Conv: W is [Cout, Cin/g, k...], axis 0.  ConvTranspose (group 1): W is [Cin, Cout, k...], axis 1.
Gemm  Y = alpha*A*B + beta_g*C: B is scaled along its output axis (0 with transB, else 1) and the new C is
``beta_g*C*s + (beta - mu*s)`` with beta_g set to 1.  The BatchNormalization node disappears and the layer
takes over its output name, so every tensor name downstream is unchanged.

Skipped (with the reason reported): non-constant or shared weights, a layer output with other consumers,
training-mode BatchNormalization, grouped ConvTranspose.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from .graph import EventKind, GraphIndex, PassResult, attr, remove_unused_initializers, set_initializer, unique_name
from .layout import layout


def fold_batchnorm(model: onnx.ModelProto) -> PassResult:
    model = copy.deepcopy(model)
    g = model.graph
    result = PassResult(model)
    idx = GraphIndex(g)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    weight_users = {name: len(idx.consumers.get(name, [])) for name in idx.initializers}
    removed: set[int] = set()
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization":
            continue
        layer = idx.producer.get(bn.input[0])
        reason = _why_not(bn, layer, idx, weight_users)
        if reason:
            result.add(EventKind.SKIPPED, bn.name, reason)
            continue
        assert layer is not None
        gamma, beta, mean, var = (idx.const(n).astype(np.float64) for n in bn.input[1:5])
        eps = attr(bn, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        shift = beta - mean * s
        w = idx.const(layer.input[1])
        wdtype = w.dtype
        lay = layout(layer)
        new_w = lay.scale_out(w.astype(np.float64), s).astype(wdtype)
        cout = lay.channels(w.shape)
        if layer.op_type == "Gemm":
            c = idx.const(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros(cout)
            beta_g = attr(layer, "beta", 1.0)
            new_b = (beta_g * c.astype(np.float64) * s + shift).astype(wdtype)
            _set_attr(layer, "beta", 1.0)
        else:
            b = idx.const(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros(cout)
            new_b = (b.astype(np.float64) * s + shift).astype(wdtype)
            new_b = new_b.reshape(-1)
        set_initializer(g, layer.input[1], new_w)
        if len(layer.input) > 2 and layer.input[2] and weight_users.get(layer.input[2], 0) == 1:
            set_initializer(g, layer.input[2], new_b)
        else:
            bname = unique_name(f"{layer.name or layer.output[0]}.bias", taken)
            set_initializer(g, bname, new_b)
            while len(layer.input) < 3:
                layer.input.append("")
            layer.input[2] = bname
        old_out = layer.output[0]
        layer.output[0] = bn.output[0]
        _drop_value_info(g, old_out)
        removed.add(id(bn))
        # the folded layer's output is ~ N(beta, gamma^2) per channel: analytic bias correction uses it
        result.data[layer.name] = (beta.astype(np.float64), np.abs(gamma).astype(np.float64))
        result.add(EventKind.FOLDED, bn.name or bn.output[0],
                   f"{bn.name or bn.output[0]} folded into {layer.name or layer.op_type}")
    if removed:
        keep = [n for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(keep)
        remove_unused_initializers(g)
    return result


def _why_not(bn, layer, idx: GraphIndex, weight_users: dict[str, int]) -> str | None:
    if len([o for o in bn.output if o]) > 1 or attr(bn, "training_mode", 0):
        return "training-mode BatchNormalization"
    if any(idx.const(n) is None for n in bn.input[1:5]):
        return "BatchNormalization parameters are not constant"
    if layer is None or layer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
        return "not preceded by Conv, ConvTranspose or Gemm"
    if idx.single_consumer(layer.output[0]) is not bn:
        return f"output of {layer.name} has other consumers"
    if len(layer.input) < 2 or idx.const(layer.input[1]) is None:
        return f"weight of {layer.name} is not a constant"
    if weight_users.get(layer.input[1], 0) > 1:
        return f"weight of {layer.name} is shared with other nodes"
    if layer.op_type == "ConvTranspose" and attr(layer, "group", 1) != 1:
        return "grouped ConvTranspose"
    if layer.op_type == "Gemm":
        w = idx.const(layer.input[1])
        if w.ndim != 2:
            return "Gemm weight is not 2-D"
        if len(layer.input) > 2 and layer.input[2] and idx.const(layer.input[2]) is None:
            return f"bias of {layer.name} is not a constant"
        if len(layer.input) > 2 and layer.input[2] and weight_users.get(layer.input[2], 0) > 1:
            return f"bias of {layer.name} is shared with other nodes"
    elif len(layer.input) > 2 and layer.input[2] and idx.const(layer.input[2]) is None:
        return f"bias of {layer.name} is not a constant"
    return None


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _drop_value_info(g: onnx.GraphProto, name: str) -> None:
    keep = [v for v in g.value_info if v.name != name]
    del g.value_info[:]
    g.value_info.extend(keep)
