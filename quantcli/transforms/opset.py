"""Upgrade a model below opset 13 to opset 13: per-channel QuantizeLinear/DequantizeLinear (``axis``) needs it.

Where ONNX's version converter cannot upgrade the model, the model keeps its opset and a SKIPPED event says
why (weights are then quantized per tensor).
"""

from __future__ import annotations

import onnx

from ..modelio import model_opset
from .graph import EventKind, PassResult

TARGET = 13


def upgrade_opset(model: onnx.ModelProto) -> PassResult:
    old = model_opset(model)
    if old >= TARGET:
        return PassResult(model)
    try:
        from onnx import version_converter

        new = version_converter.convert_version(model, TARGET)
    except Exception as exc:  # keep the original opset: per-tensor weights only
        r = PassResult(model)
        r.add(EventKind.SKIPPED, "", f"opset {old} kept (upgrade to {TARGET} failed: "
                                     f"{str(exc).splitlines()[0][:120]}); weights will be per-tensor")
        return r
    r = PassResult(new)
    r.add(EventKind.CHANGED, "", f"opset {old} upgraded to {TARGET} (per-channel Q/DQ needs opset {TARGET})")
    return r
