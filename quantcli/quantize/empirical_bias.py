"""Empirical bias correction, driven layer by layer over calibration data with ONNX Runtime.

1. One pass of the float model with taps on every corrected layer's output gives ``E[y]`` per channel
   (per-channel mean requests answered by :func:`quantcli.calibration.collect.collect_statistics`).
2. For each layer in graph order: build the QDQ model with the corrections so far, run it with a tap on
   that layer's (pre-quantization) output, and subtract ``E[y_q] - E[y]`` from the layer's bias
   (:func:`quantcli.transforms.bias_correction.shift_bias`).  Later layers thus see earlier corrections.

Cost: one pass of the float model plus one pass per corrected layer over the (small) calibration set.  Each
pass runs only the part of the graph its tapped outputs need (the layers before it), and the passes use a
budget of samples (:func:`sample_budget`): on real models (PP-OCRv4's text detector, 63 layers at 480x480,
8 samples) the unpruned passes over every sample took 231 s of one convert.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import onnx

from ..calibration.collect import collect_statistics
from ..calibration.requests import Stat, StatRequest
from ..runtime.session import tap_model
from ..transforms.bias_correction import bias_tensor, shift_bias
from ..transforms.graph import Event, EventKind, GraphIndex
from .policy import QuantPlan
from .qdq import QDQOptions, insert_qdq


MIN_SAMPLES = 8             # a per-channel mean over at least this many samples...
BUDGET_VALUES = 2_000_000   # ...and, past that, until the passes have seen this many input values
MAX_SAMPLES = 256


def sample_budget(batches: list[dict]) -> list[dict]:
    """The leading batches the passes measure on: at least MIN_SAMPLES samples, then until BUDGET_VALUES input
    values or MAX_SAMPLES samples.  A channel mean of a 480x480 image's conv output averages ~10^4 positions a
    sample: 8 samples estimate it as well as a digit classifier's 256 (those keep all 256)."""
    kept, samples, values = [], 0, 0
    for feeds in batches:
        if samples >= MAX_SAMPLES or (samples >= MIN_SAMPLES and values >= BUDGET_VALUES):
            break
        kept.append(feeds)
        first = next(iter(feeds.values()))
        samples += len(first) if np.ndim(first) else 1
        values += sum(int(np.size(v)) for v in feeds.values())
    return kept


def prefix_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """``tap_model`` cut to the nodes ``tensors`` depend on (a subgraph's outer-scope reads count)."""
    tapped = tap_model(model, tensors)
    needed = set(tensors)
    keep = []
    for node in reversed(tapped.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            needed.update(_subgraph_reads(node))
    del tapped.graph.node[:]
    tapped.graph.node.extend(reversed(keep))
    return tapped


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_reads(n))
    return names


def _means(model: onnx.ModelProto, tensors: list[str], ops: list[str], batches: list[dict]) -> list[np.ndarray]:
    """E[y] per channel (axis 1 for Conv, the last otherwise) of each tensor, from one statistics pass."""
    requests = [StatRequest(t, Stat.CHANNEL_MEAN, 1 if op == "Conv" else -1) for t, op in zip(tensors, ops)]
    got = collect_statistics(prefix_model(model, tensors), requests, batches)
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
    batches = sample_budget(batches)
    ref = _means(model, [nodes[name].output[0] for name in layers], ops, batches)
    report = []
    for name, op, mean_fp in zip(layers, ops, ref):
        if op == "MatMul" and bias_tensor(model, nodes[name], GraphIndex(model.graph))[0] is None:
            report.append(Event(EventKind.SKIPPED, name, f"skipped ({name}: MatMul without a bias Add)"))
            continue  # nowhere to put a correction: not worth a pass of the quantized model
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
