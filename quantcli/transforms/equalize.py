"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization").

For a pair ``A -> act -> B`` where ``act`` is positively homogeneous (Relu, LeakyRelu, or nothing), ``act(x / s) = act(x) / s`` for ``s > 0``, so with per-channel ``s``

    W_A' = W_A / s   (output channel i of A),   b_A' = b_A / s,   W_B' = W_B * s   (input channel i of B)

computes the same function.  With ``r_A[i]`` = max |W_A| over output channel i and ``r_B[i]`` = max |W_B|
over input channel i, ``s = sqrt(r_A / r_B)`` makes both ranges ``sqrt(r_A * r_B)``: per-channel ranges
become alike, which is what per-tensor weight quantization needs.  A depthwise B (group == channels)
carries channel i in its output channel i, so chains ``Conv -> depthwise -> pointwise`` are equalized
pair by pair, and all pairs are iterated until the scales converge.

Skipped, with the reason: an activation that is not positively homogeneous (Clip/Relu6, Sigmoid, ...), a
tensor with several consumers (a residual branch), weights or biases shared between nodes, grouped
convolutions whose groups do not line up, non-constant weights.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx

from .. import external
from .graph import Event, EventKind, GraphIndex, PassResult, attr, set_initializer, unique_name
from .layout import layout

HOMOGENEOUS = {"Relu", "LeakyRelu"}  # act(s * x) = s * act(x) for s > 0
LAYERS = {"Conv", "Gemm", "MatMul"}


@dataclasses.dataclass
class Pair:
    first: onnx.NodeProto
    act: onnx.NodeProto | None
    second: onnx.NodeProto


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[tuple[str, str]]]:
    g = model.graph
    idx = GraphIndex(g)
    uses = {name: len(idx.consumers.get(name, [])) for name in idx.initializers}
    pairs, skipped = [], []
    for a in g.node:
        if a.op_type not in LAYERS or not _weight_ok(a, idx, uses):
            continue
        out = a.output[0]
        nxt = idx.single_consumer(out)
        consumers = idx.consumers.get(out, [])
        act = None
        if nxt is not None and nxt.op_type in HOMOGENEOUS:
            act, nxt = nxt, idx.single_consumer(nxt.output[0])
            consumers = idx.consumers.get(act.output[0], [])
        elif nxt is not None and nxt.op_type not in LAYERS:
            if any(c.op_type in LAYERS for c in idx.consumers.get(nxt.output[0], [])):
                skipped.append((a.name, f"{nxt.op_type} after it is not positively homogeneous"))
            continue
        if nxt is None or nxt.op_type not in LAYERS:
            if any(c.op_type in LAYERS for c in consumers) and len(consumers) > 1:
                skipped.append((a.name, "its output has several consumers (e.g. a residual branch)"))
            continue
        why = _pair_reason(a, nxt, (act or a).output[0], idx, uses)
        if why:
            skipped.append((a.name, why))
            continue
        pairs.append(Pair(a, act, nxt))
    return pairs, skipped


def _weight_ok(node, idx: GraphIndex, uses) -> bool:
    return len(node.input) > 1 and idx.const(node.input[1]) is not None


def _pair_reason(a, b, link: str, idx: GraphIndex, uses) -> str | None:
    if b.input[0] != link or len(b.input) < 2 or idx.const(b.input[1]) is None:
        return f"{b.name} does not apply a constant weight to {a.name}'s output"
    for n in (a, b):
        if uses.get(n.input[1], 0) > 1:
            return f"weight of {n.name} is shared with other nodes"
        if len(n.input) > 2 and n.input[2] and (idx.const(n.input[2]) is None or uses.get(n.input[2], 0) > 1):
            return f"bias of {n.name} is shared or not constant"
        if n.op_type == "Gemm" and (attr(n, "transA", 0) or attr(n, "alpha", 1.0) != 1.0 or attr(n, "beta", 1.0) != 1.0):
            return f"{n.name}: Gemm with transA/alpha/beta"
    ca = _out_channels(a, idx)
    cb = _in_channels(b, idx)
    if ca is None or cb is None or ca != cb:
        return f"grouped convolution whose groups do not line up ({a.name} -> {b.name})"
    if a.op_type == "Conv" and attr(a, "group", 1) not in (1, ca):
        return f"{a.name} is a grouped convolution"
    if b.op_type == "Conv" and attr(b, "group", 1) not in (1, cb):
        return f"{b.name} is a grouped convolution"
    return None


def _out_axis(node) -> int:
    return layout(node).out_axis


def _in_axis(node) -> int:
    return layout(node).in_axis  # depthwise Conv: channel i is output channel i


def _out_channels(node, idx) -> int | None:
    w = idx.const(node.input[1])
    return None if w is None or w.ndim < 2 else w.shape[_out_axis(node)]


def _in_channels(node, idx) -> int | None:
    w = idx.const(node.input[1])
    if w is None or w.ndim < 2:
        return None
    if node.op_type == "Conv" and attr(node, "group", 1) > 1:
        return w.shape[0] if w.shape[1] == 1 else None  # depthwise only
    return w.shape[_in_axis(node)]


def _channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    return np.max(np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)), axis=1)


def equalization_scales(r_first: np.ndarray, r_second: np.ndarray) -> np.ndarray:
    """s = sqrt(r_first / r_second) per channel; 1 where either range is 0."""
    ok = (r_first > 0) & (r_second > 0)
    s = np.ones_like(r_first, dtype=np.float64)
    s[ok] = np.sqrt(r_first[ok] / r_second[ok])
    return s


def equalize(model: onnx.ModelProto, *, iterations: int = 20, tol: float = 1e-3) -> PassResult:
    """Cross-layer equalization of every safe pair; ``changed`` says per pair how far ranges moved."""
    model = copy.deepcopy(model)
    g = model.graph
    pairs, skipped = find_pairs(model)
    result = PassResult(model, [Event(EventKind.SKIPPED, n, why) for n, why in skipped])
    if not pairs:
        return result
    inits = {t.name: t for t in g.initializer}
    used = {n for p in pairs for n in (p.first.input[1], p.first.input[2] if len(p.first.input) > 2 else "",
                                       p.second.input[1]) if n in inits}
    weights = {n: external.array(inits[n]).astype(np.float64) for n in sorted(used)}
    taken = set(inits) | {o for n in g.node for o in n.output}
    for p in pairs:  # give a biasless first layer a zero bias so it can be scaled / absorbed into
        if len(p.first.input) < 3 or not p.first.input[2]:
            if p.first.op_type == "MatMul":
                continue
            name = unique_name(f"{p.first.name}.bias", taken)
            weights[name] = np.zeros(_out_channels(p.first, GraphIndex(g)))
            while len(p.first.input) < 3:
                p.first.input.append("")
            p.first.input[2] = name
    before = {id(p): _channel_absmax(weights[p.first.input[1]], _out_axis(p.first)) for p in pairs}
    total = {id(p): np.ones(len(before[id(p)])) for p in pairs}
    for _ in range(iterations):
        worst = 0.0
        for p in pairs:
            wa, wb = weights[p.first.input[1]], weights[p.second.input[1]]
            ra, rb = _channel_absmax(wa, _out_axis(p.first)), _channel_absmax(wb, _in_axis(p.second))
            s = equalization_scales(ra, rb)
            weights[p.first.input[1]] = layout(p.first).scale_out(wa, 1.0 / s)
            if len(p.first.input) > 2 and p.first.input[2]:
                weights[p.first.input[2]] = weights[p.first.input[2]] / s.reshape(weights[p.first.input[2]].shape[-1:])
            weights[p.second.input[1]] = layout(p.second).scale_in(wb, s)
            total[id(p)] *= s
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
        if worst < tol:
            break
    for p in pairs:
        s = total[id(p)]
        result.data[p.first.name] = s  # output channel c of the first layer was divided by s[c]
        r0 = before[id(p)]
        r1 = _channel_absmax(weights[p.first.input[1]], _out_axis(p.first))
        spread0 = float(r0.max() / max(r0[r0 > 0].min(), 1e-12)) if np.any(r0 > 0) else 1.0
        spread1 = float(r1.max() / max(r1[r1 > 0].min(), 1e-12)) if np.any(r1 > 0) else 1.0
        result.add(EventKind.EQUALIZED, p.first.name, f"{p.first.name} -> {p.second.name}: scales {s.min():.3g}..{s.max():.3g}, "
                              f"channel range spread of {p.first.name} x{spread0:.1f} -> x{spread1:.1f}")
    dtypes = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in g.initializer}
    touched = {n for p in pairs for n in (p.first.input[1], p.first.input[2] if len(p.first.input) > 2 else "",
                                          p.second.input[1]) if n}
    for name in sorted(touched):
        set_initializer(g, name, weights[name].astype(dtypes.get(name, np.float32)))
    return result
