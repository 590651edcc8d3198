"""The only place that talks to ONNX Runtime: sessions, tap models, optimized graphs.

* :func:`make_session` builds a CPU session from a ModelProto (in memory, nothing written to the cwd)
  and turns load failures into clear errors.
* :func:`tap_model` adds extra graph outputs on intermediate tensors (for calibration statistics).
* :func:`optimized_model` returns the graph as ONNX Runtime's CPU optimizer rewrites it (QDQ fusion into
  integer kernels happens there), to see which nodes really run in INT8.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InternalError, QuantcliError

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int = 0, *, level: str = "all", optimized_path: str | None = None,
                    spinning: bool = True, arena: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = arena
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(model: onnx.ModelProto | str | os.PathLike, *, threads: int = 0, level: str = "all",
                 what: str = "model", spinning: bool = True, arena: bool = True) -> ort.InferenceSession:
    """Create a CPU InferenceSession; a load failure becomes a one-line error naming ``what``."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=session_options(threads, level=level, spinning=spinning, arena=arena),
                                    providers=PROVIDERS)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise QuantcliError(f"{what}: ONNX Runtime cannot load it: {msg}") from None


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, what: str = "model",
        outputs: list[str] | None = None) -> list[np.ndarray]:
    try:
        return session.run(outputs, feeds)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise QuantcliError(f"{what}: ONNX Runtime failed to run it: {msg}") from None


def tap_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``tensors`` (float intermediate tensors)."""
    tapped = copy.deepcopy(model)
    del tapped.graph.output[:]
    for name in tensors:
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return tapped


def optimized_model(model: onnx.ModelProto, *, level: str = "all") -> onnx.ModelProto:
    """The model as ONNX Runtime's CPU provider optimizes it at session creation."""
    with tempfile.TemporaryDirectory(prefix="quantcli-opt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        try:
            ort.InferenceSession(model.SerializeToString(),
                                 sess_options=session_options(1, level=level, optimized_path=str(out)),
                                 providers=PROVIDERS)
        except Exception as exc:
            raise InternalError(f"ONNX Runtime could not optimize the model: {exc}") from None
        return onnx.load(str(out))


def ort_version() -> str:
    return ort.__version__
