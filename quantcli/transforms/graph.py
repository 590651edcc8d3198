"""Small helpers over ONNX graphs shared by the passes: producer/consumer maps, initializer access."""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .. import external


class EventKind(str, enum.Enum):
    CHANGED = "changed"            # a node rewritten: named, turned into a Gemm, bias moved or reshaped, ...
    FOLDED = "folded"              # a BatchNormalization folded into the layer before it
    EQUALIZED = "equalized"        # a cross-layer-equalized pair (node = its first layer)
    BIAS_SHIFTED = "bias-shifted"  # a layer's bias corrected (value = the largest shift)
    SMOOTHED = "smoothed"          # SmoothQuant moved an input's channel ranges into its layers' weights
    QUANTIZED = "quantized"        # Q/DQ inserted (model-wide summary)
    SKIPPED = "skipped"            # left alone; detail says why


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing a pass did (or did not do) to one node; ``detail`` is the sentence a report shows."""

    kind: EventKind
    node: str
    detail: str
    value: float | None = None

    def __str__(self) -> str:
        return f"{self.node}: {self.detail}" if self.kind == EventKind.SKIPPED else self.detail


@dataclasses.dataclass
class PassResult:
    """What a graph pass returns: the new model, typed events (what it changed, what it skipped and why) and
    pass-specific data (e.g. folded BatchNorm statistics, CLE scales)."""

    model: onnx.ModelProto | None  # None once a Prepared has taken it
    events: list[Event] = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    def add(self, kind: EventKind, node: str, detail: str, value: float | None = None) -> None:
        self.events.append(Event(kind, node, detail, value))

    @property
    def changed(self) -> list[str]:
        return [str(e) for e in self.events if e.kind != EventKind.SKIPPED]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(e.node, e.detail) for e in self.events if e.kind == EventKind.SKIPPED]


class GraphIndex:
    """Producer and consumer maps of a graph (rebuild after editing)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input if i.name not in self.initializers}

    def const(self, name: str) -> np.ndarray | None:
        t = self.initializers.get(name)
        return None if t is None else external.array(t)

    def scalar(self, name: str) -> float | None:
        """The value of a one-value initializer (any rank), else None."""
        t = self.initializers.get(name)
        if t is None or int(np.prod(t.dims)) != 1:
            return None
        return float(external.array(t).reshape(-1)[0])

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        cons = self.consumers.get(name, [])
        if len(cons) == 1 and name not in self.graph_outputs:
            return cons[0]
        return None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """Replace (or add) initializer ``name`` with ``array``."""
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(new)
            return
    graph.initializer.append(new)


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    used |= _subgraph_inputs(graph)
    for i in reversed(range(len(graph.initializer))):  # deleted in place: re-adding would copy every weight
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    return set().union(*(subgraph_reads(node) for node in graph.node))


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors the node's subgraphs (If/Loop/Scan bodies) read."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names.update(subgraph_reads(n))
    return names


def reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor the node reads: its inputs, then its subgraphs' outer reads (sorted)."""
    return [t for t in node.input if t] + sorted(subgraph_reads(node))


def node_key(node: onnx.NodeProto) -> str:
    """A node's identity across copies of one graph: its first output (exporters leave nodes unnamed)."""
    return node.output[0] if node.output else node.name


def infer_with_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` with its inputs' dims set to ``input_shapes`` and shapes inferred through the graph
    (constant-folding shape computations too); where inference fails, the copy with only the inputs set."""
    m = copy.deepcopy(model)
    for vi in m.graph.input:
        if vi.name in input_shapes:
            for d, v in zip(vi.type.tensor_type.shape.dim, input_shapes[vi.name]):
                d.Clear()
                d.dim_value = int(v)
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 -- unknown shapes stay unknown
        return m


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> ONNX element type, as shape inference finds them."""
    g = onnx.shape_inference.infer_shapes(model).graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)
            if vi.type.tensor_type.elem_type}


def unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 tensors (inputs, intermediates, outputs) according to shape inference."""
    return set(float_tensor_shapes(model))


def float_tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...] | None]:
    """Float32 tensors (inputs, intermediates, outputs) according to shape inference, each with its shape:
    a dim is None where it is symbolic or unknown, the shape None where even the rank is unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    g = inferred.graph
    out: dict[str, tuple[int | None, ...] | None] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT:
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                 for d in t.shape.dim) if t.HasField("shape") else None
    return out
