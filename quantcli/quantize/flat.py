"""Activations that are flat past a point: quantizing their input there spends levels on values they map to one.

A Conv's output must be quantized for ONNX Runtime to fuse QLinearConv, and where a HardSwish reads it (or its
decomposed forms: ``x * HardSigmoid(x)``, Paddle2ONNX's ``x * Clip(x + 3, 0, 6) / 6``) every value below -3 comes
out 0: the part of the calibrated range below -3 holds no information, yet minmax gives it its share of the 256
levels.  PicoDet's backbone outputs span [-78, 66] and [-59, 52]: clamped at -3 their step is 1.8x and 2.1x finer.
The same holds for any function of the tensor alone that is constant below or above a point (HardSigmoid outside
[-3, 3], a Clip): the range is clamped there, which changes the activation's output by at most what half a
quantization step at the clamp point changes it (the lowest level lands within half a step of it).

:func:`reader_function` finds the elementwise ops that read a tensor and nothing else (scalar constants aside) and
end in one tensor; :func:`flat_range` evaluates them with ONNX Runtime on a grid over the calibrated range and
returns the range clamped to where the function stops being constant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..transforms.graph import GraphIndex
from .policy import ELEMENTWISE, elementwise_source

GRID = 4096          # points over the calibrated range (16x finer than an 8-bit step)
MAX_READER_NODES = 8  # a decomposed HardSwish is 4 ops


def reader_function(idx: GraphIndex, tensor: str) -> tuple[list[onnx.NodeProto], str] | None:
    """The elementwise ops that read ``tensor``, only it and scalar constants, and whose results leave them only
    as one tensor: (those ops in graph order, that tensor); None where ``tensor`` has another reader, is a graph
    output, or the ops do not close on one result within MAX_READER_NODES."""
    if tensor in idx.graph_outputs or not idx.consumers.get(tensor):
        return None
    nodes: dict[str, onnx.NodeProto] = {}
    known = {tensor}
    frontier = [tensor]
    while frontier:
        t = frontier.pop()
        for n in idx.consumers.get(t, []):
            key = n.output[0]
            if key in nodes:
                continue
            if n.op_type not in ELEMENTWISE or len(n.output) != 1 or not all(
                    i in known or idx.scalar(i) is not None
                    or elementwise_source(i, idx, MAX_READER_NODES, scalars_only=True, until=tensor) == tensor
                    for i in n.input if i):
                if t == tensor:
                    return None  # the tensor itself has another reader
                continue         # a reader of the result: where the function ends
            if len(nodes) >= MAX_READER_NODES:
                return None
            nodes[key] = n
            known.add(key)
            frontier.append(key)
    leaving = [o for o in nodes if o in idx.graph_outputs or any(c.output[0] not in nodes
                                                                 for c in idx.consumers.get(o, []))]
    if len(leaving) != 1 or any(not idx.consumers.get(o) and o not in idx.graph_outputs for o in nodes):
        return None
    order = {id(n): i for i, n in enumerate(idx.graph.node)}
    return sorted(nodes.values(), key=lambda n: order[id(n)]), leaving[0]


def flat_range(model: onnx.ModelProto, nodes: list[onnx.NodeProto], tensor: str, result: str,
               lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)`` clamped to where ``result = f(tensor)`` (``nodes``) stops being constant: f evaluated with
    ONNX Runtime on GRID + 1 points; the bounds move only inward, and only past a run of equal values."""
    if not hi > lo:
        return lo, hi
    x = np.linspace(lo, hi, GRID + 1, dtype=np.float64).astype(np.float32)
    y = evaluate_function(model, nodes, tensor, result, x)
    if y is None or y.shape != x.shape:
        return lo, hi
    same_low = np.flatnonzero(y != y[0])
    same_high = np.flatnonzero(y != y[-1])
    if not len(same_low):  # constant over the whole range: nothing to learn from its input
        return lo, hi
    a = float(x[same_low[0] - 1]) if same_low[0] > 1 else None          # f(x) = f(lo) for all x <= a
    b = float(x[same_high[-1] + 1]) if same_high[-1] < GRID - 1 else None  # f(x) = f(hi) for all x >= b
    return _levels_cover(lo, hi, a, b)


def _levels_cover(lo: float, hi: float, a: float | None, b: float | None) -> tuple[float, float]:
    """A range inside [lo, hi] whose lowest quantization level is at or below ``a`` and highest at or above ``b``
    (each where given), after the zero point's rounding: a level just inside a flat point would not map to the
    flat value (HardSwish at -2.98 is -0.011, not 0: over PicoDet's channels that sit below -3 that was a bias
    the next layer summed, one channel's SQNR 17 -> -11 dB)."""
    from .params import activation_params

    new_lo = min(a, 0.0) if a is not None and a > lo else lo
    new_hi = max(b, 0.0) if b is not None and b < hi else hi
    if (new_lo, new_hi) == (lo, hi):
        return lo, hi
    for _ in range(4):  # a step below / above: the rounding moves a level by at most half a step
        step = (new_hi - new_lo) / 255.0
        p = activation_params(new_lo, new_hi)
        scale, zp = np.float32(p.scale), int(p.zero_point)
        low_ok = new_lo == lo or float(np.float32(-zp) * scale) <= min(a, 0.0)
        high_ok = new_hi == hi or float(np.float32(255 - zp) * scale) >= max(b, 0.0)
        if low_ok and high_ok:
            return new_lo, new_hi
        new_lo = new_lo if low_ok else max(lo, new_lo - step)
        new_hi = new_hi if high_ok else min(hi, new_hi + step)
    return lo, hi


def evaluate_function(model: onnx.ModelProto, nodes: list[onnx.NodeProto], tensor: str, result: str,
              x: np.ndarray) -> np.ndarray | None:
    """f(x) for a 1-D ``x``: the ops alone in a model of their own, their scalar constants copied."""
    from ..runtime.session import make_session

    names = {i for n in nodes for i in n.input if i}
    inits = [t for t in model.graph.initializer if t.name in names]
    g = helper.make_graph(list(nodes), "reader", [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [len(x)])],
                          [helper.make_tensor_value_info(result, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    try:
        s = make_session(m, what="activation", level="disable", threads=1, arena=False)
        return np.asarray(s.run(None, {tensor: x})[0], dtype=np.float32).reshape(-1)
    except Exception:  # noqa: BLE001 -- an op this small model cannot run alone: no clamp
        return None
