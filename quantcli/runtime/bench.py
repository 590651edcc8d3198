"""Latency measurement of two models side by side.

ONNX Runtime's intra-op threads keep spinning for a while after a run; on a 2-core machine the spinning
pool of one session steals the CPU from the other.  So sessions are timed in alternating *blocks*
(A B B A A B ...), each block preceded by a short warm-up, never run-by-run interleaved, and spinning is
turned off so a finished session releases the cores.
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
    a, b = measure_latencies([sa, sb], feeds, runs=runs, warmup=warmup, blocks=blocks)
    return a, b


def measure_latencies(sessions: list[ort.InferenceSession], feeds: dict[str, np.ndarray], *, runs: int = 200,
                      warmup: int = 20, blocks: int = 8) -> list[Latency]:
    """Latency of several sessions in alternating blocks: 0 1 .. n-1, n-1 .. 1 0, repeated ``blocks`` times."""
    blocks += blocks % 2  # forward then backward passes keep the order balanced
    per_block = max(1, runs // blocks)
    forward = list(range(len(sessions)))
    order = [i for k in range(blocks) for i in (forward if k % 2 == 0 else forward[::-1])]
    times: list[list[float]] = [[] for _ in sessions]
    for i in order:
        s = sessions[i]
        for _ in range(max(1, warmup // blocks)):
            s.run(None, feeds)
        for _ in range(per_block):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return [_summ(t) for t in times]


def _summ(ts: list[float]) -> Latency:
    arr = np.asarray(ts)
    return Latency(float(np.median(arr)), float(np.percentile(arr, 90)), len(arr))
