"""Empirical bias correction, driven layer by layer over calibration data with ONNX Runtime.

1. One pass of the float model with taps on every corrected layer's output gives ``E[y]`` per channel.
2. For each layer in graph order: build the QDQ model with the corrections so far, run it with a tap on
   that layer's (pre-quantization) output, and subtract ``E[y_q] - E[y]`` from the layer's bias
   (:func:`quantcli.transforms.bias_correction.shift_bias`).  Later layers thus see earlier corrections.

Cost: one pass of the float model plus one pass per corrected layer over the (small) calibration set.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import onnx

from ..runtime.session import make_session, run, tap_model
from ..transforms.bias_correction import shift_bias
from ..transforms.graph import Event, EventKind
from .policy import QuantPlan
from .qdq import QDQOptions, insert_qdq


def _channel_mean(y: np.ndarray, op: str) -> tuple[np.ndarray, int]:
    """Sum over everything but the channel axis (1 for Conv, last otherwise), and the count summed."""
    y = np.asarray(y, np.float64)
    if op == "Conv":
        y = np.moveaxis(y, 1, -1)
    flat = y.reshape(-1, y.shape[-1])
    return flat.sum(axis=0), flat.shape[0]


def _means(model: onnx.ModelProto, tensors: list[str], ops: list[str], batches: list[dict]) -> list[np.ndarray]:
    session = make_session(tap_model(model, tensors), what="bias-correction model")
    sums: list[np.ndarray | None] = [None] * len(tensors)
    counts = [0] * len(tensors)
    for feeds in batches:
        for i, (y, op) in enumerate(zip(run(session, feeds, what="bias-correction model"), ops)):
            s, n = _channel_mean(y, op)
            sums[i] = s if sums[i] is None else sums[i] + s
            counts[i] += n
    return [s / c for s, c in zip(sums, counts)]


def empirical_bias_correction(prepared: onnx.ModelProto, plan: QuantPlan, ranges: dict, options: QDQOptions,
                              batches: list[dict], layers: list[str],
                              on_layer: Callable[[int], None] | None = None) -> tuple[onnx.ModelProto, list[Event]]:
    """Returns the float model with corrected biases and a line per layer saying what changed."""
    model = copy.deepcopy(prepared)
    nodes = {n.name: n for n in model.graph.node}
    layers = [name for name in layers if name in nodes]
    if not layers:
        return model, []
    ops = [nodes[name].op_type for name in layers]
    ref = _means(model, [nodes[name].output[0] for name in layers], ops, batches)
    report = []
    for name, op, mean_fp in zip(layers, ops, ref):
        q = insert_qdq(model, plan, ranges, options).model
        qnode = next(n for n in q.graph.node if n.name == name)
        (mean_q,) = _means(q, [qnode.output[0]], [op], batches)
        shift = mean_q - mean_fp
        try:
            shift_bias(model, name, shift)
        except ValueError as exc:
            report.append(Event(EventKind.SKIPPED, name, str(exc)))
            continue
        top = float(np.max(np.abs(shift)))
        report.append(Event(EventKind.BIAS_SHIFTED, name, f"{name}: bias shifted by up to {top:.3g} (mean |shift| "
                                                         f"{np.mean(np.abs(shift)):.3g})", top))
        if on_layer:
            on_layer(1)
    return model, report
