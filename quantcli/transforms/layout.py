"""Per-operator weight layout: which input is the weight, along which axis its output and input channels lie,
where the bias goes, and how many output channels the layer has.

=================  =======================  ========  ========  ====
op                 weight shape             out axis  in axis   bias
=================  =======================  ========  ========  ====
Conv               [Cout, Cin/group, k...]  0         1 (0 *)   2
ConvTranspose      [Cin, Cout/group, k...]  1         0         2
Gemm (transB=0)    [K, N]                   1         0         2 (C)
Gemm (transB=1)    [N, K]                   0         1         2 (C)
MatMul             [K, N]  (2-D constant)   1         0         --
MatMulNBits        [N, K] packed by blocks  0         1         5
=================  =======================  ========  ========  ====

(*) a depthwise Conv (group == Cout, one input channel per group) carries its input channel c in its
output channel c, so for cross-layer equalization its "input" axis is 0.

Every pass that scales, folds or quantizes a weight along its channels asks here instead of re-deriving
the axis from ``transB`` itself: per-channel Q/DQ (policy), CLE, BatchNorm folding, bias folding in
prepare, bias correction, and weight packers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from .graph import attr

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulNBits")


@dataclasses.dataclass(frozen=True)
class Layout:
    op: str
    weight: int            # input index of the weight
    out_axis: int          # axis of the weight that indexes output channels
    in_axis: int           # axis of the weight that indexes input channels (depthwise Conv: 0)
    bias: int | None       # input index of the bias, None where the op has none (MatMul)
    group: int = 1

    def channels(self, weight_shape) -> int:
        """Output channels of the layer, from its weight's shape."""
        return int(weight_shape[self.out_axis])

    def axis_shape(self, ndim: int, axis: int) -> list[int]:
        """A broadcast shape [1, .., -1, .., 1] putting a per-channel vector along ``axis`` of the weight."""
        shape = [1] * ndim
        shape[axis] = -1
        return shape

    def scale_out(self, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """W with output channel c multiplied by s[c] (dtype kept)."""
        return (w * s.reshape(self.axis_shape(w.ndim, self.out_axis))).astype(w.dtype)

    def scale_in(self, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """W with input channel c multiplied by s[c] (dtype kept)."""
        return (w * s.reshape(self.axis_shape(w.ndim, self.in_axis))).astype(w.dtype)


def layout(node: onnx.NodeProto) -> Layout | None:
    """The weight layout of ``node``, or None for an op without one."""
    op = node.op_type
    if op == "Conv":
        group = int(attr(node, "group", 1))
        return Layout(op, 1, 0, 0 if group > 1 else 1, 2, group)
    if op == "ConvTranspose":
        return Layout(op, 1, 1, 0, 2, int(attr(node, "group", 1)))
    if op == "Gemm":
        trans_b = bool(attr(node, "transB", 0))
        return Layout(op, 1, 0 if trans_b else 1, 1 if trans_b else 0, 2)
    if op == "MatMul":
        return Layout(op, 1, 1, 0, None)
    if op == "MatMulNBits":
        return Layout(op, 1, 0, 1, 5)
    return None
