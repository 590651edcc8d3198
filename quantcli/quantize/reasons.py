"""Why a node stays float: a :class:`Reason` (what code and reports branch on) plus the detail a person reads."""

from __future__ import annotations

import dataclasses
import enum


class Reason(str, enum.Enum):
    EXCLUDED = "excluded"                      # --exclude / recipe exclude
    NODE_RULE = "node-rule"                    # a [[convert.nodes]] / --node rule with precision fp32 or fp16
    NOT_QUANTIZABLE = "not-quantizable"        # no integer form for this op or these inputs
    ACT_MATMUL = "act-matmul"                  # MatMul of two activations kept float by --act-matmul
    NO_ACT_RANGES = "no-act-ranges"            # ... and the artifact has no ranges for its inputs
    GRAPH_OUTPUT = "graph-output"              # its output is a graph output (kept exact)
    CONSTANT_INPUTS = "constant-inputs"        # a cheap op with constant inputs
    INPUTS_NOT_QUANTIZED = "inputs-not-quantized"  # a cheap op whose inputs are float anyway
    RANGE_CONFLICT = "range-conflict"          # Concat inputs whose ranges differ too much for one scale
    UNFUSED = "unfused"                        # ONNX Runtime would not fuse it into an integer kernel here
    AMPLIFIED = "amplified"                    # a depthwise Conv that amplifies its input's quantization noise
    MAX_DROP = "max-drop"                      # kept float by the --max-drop search
    NOT_FOLDED = "not-folded"                  # a BatchNormalization that could not be folded
    HALF_KEPT = "half-kept"                    # kept FP32 by the FP16/BF16 conversion
    DYNAMIC_SCOPE = "dynamic-scope"            # dynamic mode quantizes MatMul/Gemm only


@dataclasses.dataclass(frozen=True)
class Why:
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return self.detail


ACT_MATMUL = Why(Reason.ACT_MATMUL, "MatMul of two activations: quantizing both inputs at run time costs more "
                                    "than an integer kernel saves on this CPU (--act-matmul int8 quantizes it)")


def act_matmul_small(dim: int, least: int) -> Why:
    return Why(Reason.ACT_MATMUL, f"MatMul of two activations with head dimension {dim} (< {least}): int8 kernels "
                                  "run it slower than float on this CPU (--act-matmul int8 quantizes it)")


NO_ACT_RANGES = Why(Reason.NO_ACT_RANGES, "MatMul of two activations: the calibration has no ranges for its inputs "
                                          "(made with attention in float; re-run calibrate with --act-matmul int8)")
UNFUSED = Why(Reason.UNFUSED, "ONNX Runtime would run it in float behind its Q/DQ (no integer kernel for it here)")
EXCLUDED = Why(Reason.EXCLUDED, "excluded by --exclude")
