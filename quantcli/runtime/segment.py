"""Reading a graph as parts: which tensors a node reads (its subgraphs' too), a node's stable key, each tensor's
element type.  Shared by the runs that execute only part of a model from values already computed: empirical bias
correction's frontier (:mod:`quantcli.quantize.empirical_bias`) and the ranking's runs of what a node quantized
alone changes (:class:`quantcli.sensitivity.AloneScorer`)."""

from __future__ import annotations

import onnx


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


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> ONNX element type, as shape inference finds them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)
            if vi.type.tensor_type.elem_type}
