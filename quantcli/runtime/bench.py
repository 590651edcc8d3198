"""Latency measurement of two models side by side.

ONNX Runtime's intra-op threads keep spinning for a while after a run; on a 2-core machine the spinning
pool of one session steals the CPU from the other.  So the two sessions are timed in alternating
*blocks* (A B B A A B ...), each block preceded by a short warm-up, never run-by-run interleaved, and
spinning is turned off so a finished session releases the cores.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import onnxruntime as ort


@dataclasses.dataclass
class Latency:
    median_ms: float
    p90_ms: float
    runs: int


def compare_latency(sa: ort.InferenceSession, sb: ort.InferenceSession, feeds: dict[str, np.ndarray], *,
                    runs: int = 200, warmup: int = 20, blocks: int = 8) -> tuple[Latency, Latency]:
    """Median and p90 latency of two sessions (create them with ``spinning=False``) on the same feeds."""
    per_block = max(1, runs // blocks)
    times: dict[str, list[float]] = {"a": [], "b": []}
    blocks += blocks % 2  # A B B A pattern: an even number of blocks per model keeps the order balanced
    order = (["a", "b", "b", "a"] * blocks)[: 2 * blocks]
    sessions = {"a": sa, "b": sb}
    for key in order:
        s = sessions[key]
        for _ in range(max(1, warmup // blocks)):
            s.run(None, feeds)
        for _ in range(per_block):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[key].append((time.perf_counter() - t0) * 1000.0)
    return _summ(times["a"]), _summ(times["b"])


def _summ(ts: list[float]) -> Latency:
    arr = np.asarray(ts)
    return Latency(float(np.median(arr)), float(np.percentile(arr, 90)), len(arr))
