"""bench/zoo.py's task metrics in the form ``quantcli convert --max-drop --metric`` calls them.

    quantcli convert MODEL --calibration calib.json --eval-data eval.npz --max-drop 1 \\
        --metric bench/zoo_metric.py:yolox_ddddocr

One function per zoo model (its name with ``-`` as ``_``).  quantcli passes the outputs per evaluation batch; the
zoo's metrics take them per sample (batch 1, as the bench runs them), so each batch is split into its samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402


def per_sample(batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """[[out0 (n, ...), out1 (n, ...)], ...] -> one [out0 (1, ...), ...] per sample; an output whose first axis
    is not the batch's (an RNN state [layers, n, h]) is split on the axis that has the batch size."""
    samples = []
    for outs in batches:
        n = len(outs[0])
        if n == 1:
            samples.append(list(outs))
            continue
        for i in range(n):
            samples.append([_take(o, i, n) for o in outs])
    return samples


def _take(o: np.ndarray, i: int, n: int) -> np.ndarray:
    """Sample ``i`` of ``o`` as a view (PP-OCRv6 rec's 96 lines of 40 x 18710 scores are 287 MB a copy)."""
    axis = next((a for a, d in enumerate(o.shape) if d == n), None)
    return o if axis is None else o[(slice(None),) * axis + (slice(i, i + 1),)]


def _hook(z: zoo.Zoo):
    def metric(reference, candidate, labels):
        texts = getattr(z.data, "texts", None)  # the recognisers' metrics read the texts their data drew
        if texts is not None and zoo.EVAL_SEED not in texts:
            z.data(z.path(), len(labels), zoo.EVAL_SEED)  # the evaluation file's: same seed, same count
        return z.metric(z.path(), per_sample(reference), per_sample(candidate), labels)

    metric.__name__ = z.name.replace("-", "_")
    metric.__doc__ = f"{z.name}: {z.metric_name}"
    return metric


for _z in zoo.ZOO:
    globals()[_z.name.replace("-", "_")] = _hook(_z)
