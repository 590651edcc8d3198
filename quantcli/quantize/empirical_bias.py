"""Empirical bias correction, driven layer by layer over calibration data with ONNX Runtime.

1. ``E[y]`` per channel of every corrected layer in the float model, 8 layers per pass (cached across the
   builds of one convert: the ``--max-drop`` ranking builds one model per layer).
2. For each layer in graph order: build the QDQ model with the corrections so far, measure that layer's
   (pre-quantization) output, and subtract ``E[y_q] - E[y]`` from the layer's bias
   (:func:`quantcli.transforms.bias_correction.shift_bias`).  Later layers thus see earlier corrections.

Cost: each pass runs only the nodes between the values already final (:class:`Frontier`) and its layers,
so all passes together cost about two runs of the model over a budget of samples (:func:`sample_budget`).
Measured: PP-OCRv4's text detector (63 layers at 480x480, 8 samples) took 231 s when every pass ran over every
sample; PicoDet (103 layers at 800x608): 363 s of bias correction with each pass from the inputs, its whole
convert 106 s with passes from the frontier.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import onnx

from ..calibration.requests import ChannelObserver, Stat, StatRequest
from ..runtime.session import make_session, run
from ..transforms.bias_correction import bias_tensor, shift_bias
from ..transforms.graph import Event, EventKind, GraphIndex, elem_types, node_key, reads
from .policy import QuantPlan
from .qdq import QDQOptions, insert_qdq, requantize


MIN_SAMPLES = 8             # a per-channel mean over at least this many samples...
BUDGET_VALUES = 2_000_000   # ...and, past that, until the passes have seen this many input values
MAX_SAMPLES = 256
REF_LAYERS = 8              # float layers measured per pass (each pass holds its layers' outputs for a batch)


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


def empirical_bias_correction(prepared: onnx.ModelProto, plan: QuantPlan, ranges: dict, options: QDQOptions,
                              batches: list[dict], layers: list[str],
                              on_layer: Callable[[int], None] | None = None, float_means: dict | None = None
                              ) -> tuple[onnx.ModelProto, list[Event]]:
    """Returns the float model with corrected biases and a line per layer saying what changed.  ``float_means``
    caches the float model's E[y] per layer across the builds of one convert (same model, same batches): the
    --max-drop ranking builds one model per layer, each correcting that layer alone."""
    model = copy.deepcopy(prepared)
    nodes = {n.name: n for n in model.graph.node}
    layers = [name for name in layers if name in nodes]
    if not layers:
        return model, []
    ops = [nodes[name].op_type for name in layers]
    batches = sample_budget(batches)
    # E[y] of the float model layer by layer from its own frontier: one pass tapping every layer at once held
    # all their outputs for a batch (PP-OCRv6 rec, 66 layers x 16 lines: ~0.7 GB of the convert's peak)
    cache = float_means if float_means is not None else {}
    floats = Frontier(batches)
    axes = [(name, 1 if op == "Conv" else -1) for name, op in zip(layers, ops) if name not in cache]
    for i in range(0, len(axes), REF_LAYERS):
        cache.update(zip([n for n, _ in axes[i:i + REF_LAYERS]],
                         floats.channel_means(model, axes[i:i + REF_LAYERS], settle=True)))
    del floats
    ref = [cache[name] for name in layers]
    frontier = Frontier(batches)
    events: dict[str, Event] = {}
    todo = []
    idx = GraphIndex(model.graph)
    for name, op, mean_fp in zip(layers, ops, ref):
        if op == "MatMul" and bias_tensor(model, nodes[name], idx)[0] is None:
            events[name] = Event(EventKind.SKIPPED, name, f"skipped ({name}: MatMul without a bias Add)")
            continue  # nowhere to put a correction: not worth a pass of the quantized model
        todo.append((name, 1 if op == "Conv" else -1, mean_fp))
    upstream = _upstream_layers(model, {name for name, _, _ in todo})
    q = None  # the Q/DQ model, kept up to date as biases move (requantize): built once
    i = 0
    while i < len(todo):
        group = _independent_run(todo, i, upstream)
        i += len(group)
        if q is None:
            q = insert_qdq(model, plan, ranges, options).model
        means = frontier.channel_means(q, [(name, axis) for name, axis, _ in group])
        idx = GraphIndex(model.graph)
        moved, whole = set(), False
        for (name, _, mean_fp), mean_q in zip(group, means):
            bias = bias_tensor(model, nodes[name], idx)[0]
            events[name] = _shift(model, name, mean_q - mean_fp)
            if bias is not None and bias in idx.initializers and len(idx.consumers.get(bias, ())) == 1:
                moved.add(bias)
            else:  # a bias added, or read by other nodes too: the whole Q/DQ model again
                whole = True
            if on_layer:
                on_layer(1)
        if whole:
            q = None
        else:
            requantize(q, model, plan, ranges, options, moved)
    return model, [events[name] for name in layers if name in events]


def _upstream_layers(model: onnx.ModelProto, layers: set[str]) -> dict[str, set[str]]:
    """Each layer -> the layers its input depends on (through any path), in one pass in graph order."""
    above: dict[str, set[str]] = {}  # tensor -> layers upstream of it, itself produced by one included
    out: dict[str, set[str]] = {}
    for n in model.graph.node:
        up = set().union(*(above.get(t, set()) for t in reads(n)))
        if n.name in layers:
            out[n.name] = up
            up = up | {n.name}
        for o in n.output:
            if o:
                above[o] = up
    return out


def _independent_run(todo: list, start: int, upstream: dict[str, set[str]]) -> list:
    """The layers from ``start`` on, in order, that can be measured in one pass: none depends on another of them
    (so none's correction changes another's measurement, as correcting them one by one in graph order would), at
    most REF_LAYERS.  PicoDet's heads at four strides, YOLO's box and class branches: one pass per group instead of
    one per layer (a session and a run each)."""
    group = [todo[start]]
    names = {todo[start][0]}
    for item in todo[start + 1:start + REF_LAYERS]:
        if upstream[item[0]] & names:
            break
        group.append(item)
        names.add(item[0])
    return group


def _shift(model: onnx.ModelProto, name: str, shift: np.ndarray) -> Event:
    try:
        shift_bias(model, name, shift)
    except ValueError as exc:
        return Event(EventKind.SKIPPED, name, f"skipped ({exc})")
    top = float(np.max(np.abs(shift)))
    return Event(EventKind.BIAS_SHIFTED, name, f"{name}: bias shifted by up to {top:.3g} (mean |shift| "
                                               f"{np.mean(np.abs(shift)):.3g})", top)


class Frontier:
    """The quantized model's tensors that no later correction changes, kept per batch, so that each layer's
    pass runs only the nodes between them and that layer instead of its whole prefix from the inputs.

    Layers are corrected in graph order, so when layer *i* is measured every node it depends on is final
    (its own output is not: its bias is about to move).  The values those final nodes produced and that a
    node not yet final still reads are kept; the rest are dropped.  Nodes that read only constants (weights
    and their DequantizeLinear) are recomputed in each pass rather than kept once per batch.  PicoDet at
    800x608 (103 layers, 8 samples): the prefix passes ran 278 s of 363 s of bias correction.
    """

    def __init__(self, batches: list[dict]) -> None:
        self.values = [dict(b) for b in batches]
        self.final: set[str] = set()      # final nodes (by first output: exporters leave nodes unnamed)
        self.types: dict[str, int] = {}

    def channel_means(self, q: onnx.ModelProto, layers: list[tuple[str, int]], *, settle: bool = False
                      ) -> list[np.ndarray]:
        """Per-channel means (along each axis) of the ``layers``' outputs in ``q`` from one pass; afterwards the
        nodes they depend on are final, and with ``settle`` the layers themselves too (nothing will move)."""
        if not self.types:
            self.types = elem_types(q)
        by_name = {n.name: n for n in q.graph.node}
        targets = [by_name[name] for name, _ in layers]
        seg = _segment(q, targets, set(self.values[0]), self.final if not settle else self.final | {
            node_key(t) for t in targets}, self.types)
        obs = [ChannelObserver(StatRequest(t.output[0], Stat.CHANNEL_MEAN, axis))
               for t, (_, axis) in zip(targets, layers)]
        session = make_session(seg, what="bias-correction model")
        names = [o.name for o in seg.graph.output]
        feed_names = [i.name for i in seg.graph.input]
        for values in self.values:
            got = dict(zip(names, run(session, {k: values[k] for k in feed_names}, what="bias-correction model",
                                          keep=True)))
            for o in obs:
                o.update(got.pop(o.request.tensor) if not settle else got[o.request.tensor])
            values.update(got)  # a moving layer's output is not kept: its bias is about to change
        moving = set() if settle else {node_key(t) for t in targets}
        self.final |= {node_key(n) for n in seg.graph.node} - moving
        live = _read_by_others(q, self.final)
        for values in self.values:
            for k in [k for k in values if k not in live]:
                del values[k]
        return [o.result() for o in obs]


def _read_by_others(model: onnx.ModelProto, final: set[str]) -> set[str]:
    """Tensors read by a node that is not final (graph inputs always count)."""
    live = {i.name for i in model.graph.input}
    for n in model.graph.node:
        if node_key(n) not in final:
            live.update(reads(n))
    return live


def _segment(model: onnx.ModelProto, targets: list[onnx.NodeProto], known: set[str], final: set[str],
             types: dict[str, int]) -> onnx.ModelProto:
    """The nodes the ``targets`` need that are not final, fed by the ``known`` tensors; its outputs are the
    targets' outputs and every typed tensor those nodes produce that a node not final, outside them, reads."""
    produced = {o: n for n in model.graph.node for o in n.output}
    consts = {t.name for t in model.graph.initializer}
    keep, seen, stack = [], set(), list(targets)
    while stack:
        node = stack.pop()
        if node_key(node) in seen:
            continue
        seen.add(node_key(node))
        keep.append(node)
        for t in reads(node):
            if t not in known and t not in consts and t in produced:
                stack.append(produced[t])
    order = {node_key(n): i for i, n in enumerate(model.graph.node)}
    keep.sort(key=lambda n: order[node_key(n)])
    inside = {node_key(n) for n in keep}
    read = {t for n in keep for t in reads(n)}
    feeds = sorted(t for t in read if t in known and t not in {o for n in keep for o in n.output})
    outside = _read_by_others(model, final | inside)
    wanted = [t.output[0] for t in targets]
    fixed = set(consts)  # tensors computed from constants alone (weights' DequantizeLinear): recomputed, not kept
    for n in keep:
        if all(t in fixed for t in reads(n)):
            fixed.update(n.output)
    outs = wanted + [o for n in keep for o in n.output
                     if o not in wanted and o in outside and o in types and o not in known and o not in fixed]
    g = onnx.helper.make_graph(keep, "segment", [_info(t, types) for t in feeds], [_info(t, types) for t in outs],
                               initializer=[t for t in model.graph.initializer if t.name in read])
    return onnx.helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)


def _info(name: str, types: dict[str, int]) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
