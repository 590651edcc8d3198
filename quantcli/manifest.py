"""The manifest recorded in every output: what made it, from what, with which settings.

Deterministic by construction (no timestamps, no host names): the same model, data and recipe on the same
machine give the same manifest, so outputs that embed it stay byte-identical.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .cpu import detect

SEED = 0  # the only randomness: synthetic validation inputs when no data is given


def build_manifest(model_path: str | Path, model_sha256: str, settings: dict) -> dict:
    import onnxruntime

    cpu = detect()
    return {
        "tool": "quantcli",
        "versions": {"quantcli": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "cpu": {"arch": cpu.arch, "flags": list(cpu.flags), "int8_path": cpu.int8_path},
        "input_model": {"path": str(model_path), "sha256": model_sha256},
        "settings": settings,
        "seed": SEED,
    }
