import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def cnn(tmp_path):
    """The small CNN, 32 calibration samples and 16 evaluation samples labelled with FP32's own predictions
    (FP32 is 100% right on them: a meaningful reference for --max-drop gates)."""
    from models import cnn_data, predicted_labels, small_cnn

    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    x = cnn_data(48)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "eval.npz", x=x[32:], labels=predicted_labels(small_cnn(), x[32:]))
    return tmp_path
