"""Empirical bias correction, driven layer by layer over calibration data with ONNX Runtime.

1. One pass of the float model with taps on every corrected layer's output gives ``E[y]`` per channel
   (per-channel mean requests answered by :func:`quantcli.calibration.collect.collect_statistics`).
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

from ..calibration.collect import collect_statistics
from ..calibration.requests import Stat, StatRequest
from ..transforms.bias_correction import shift_bias
from ..transforms.graph import Event, EventKind
from .policy import QuantPlan
from .qdq import QDQOptions, insert_qdq


def _means(model: onnx.ModelProto, tensors: list[str], ops: list[str], batches: list[dict]) -> list[np.ndarray]:
    """E[y] per channel (axis 1 for Conv, the last otherwise) of each tensor, from one statistics pass."""
    requests = [StatRequest(t, Stat.CHANNEL_MEAN, 1 if op == "Conv" else -1) for t, op in zip(tensors, ops)]
    got = collect_statistics(model, requests, batches)
    return [got.channels[r].result() for r in requests]


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
            report.append(Event(EventKind.SKIPPED, name, f"skipped ({exc})"))
            continue
        top = float(np.max(np.abs(shift)))
        report.append(Event(EventKind.BIAS_SHIFTED, name, f"{name}: bias shifted by up to {top:.3g} (mean |shift| "
                                                         f"{np.mean(np.abs(shift)):.3g})", top))
        if on_layer:
            on_layer(1)
    return model, report
