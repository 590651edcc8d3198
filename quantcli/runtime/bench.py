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
    block_medians: list[float] = dataclasses.field(default_factory=list)  # one per block, in round order

    def ratio_to(self, base: "Latency") -> float:
        """This latency over ``base``'s, as the median of the per-round ratios of block medians: blocks of
        one round ran close together in time, so a slow spell on a shared machine hits both sides of a
        ratio instead of one side of the overall medians."""
        pairs = [a / b for a, b in zip(self.block_medians, base.block_medians) if b > 0]
        if not pairs:
            return self.median_ms / base.median_ms if base.median_ms > 0 else 0.0
        return float(np.median(pairs))


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
    block_medians: list[list[float]] = [[] for _ in sessions]
    for i in order:
        s = sessions[i]
        for _ in range(max(1, warmup // blocks)):
            s.run(None, feeds)
        block = []
        for _ in range(per_block):
            t0 = time.perf_counter()
            s.run(None, feeds)
            block.append((time.perf_counter() - t0) * 1000.0)
        times[i] += block
        block_medians[i].append(float(np.median(block)))
    return [_summ(t, b) for t, b in zip(times, block_medians)]


def _summ(ts: list[float], block_medians: list[float]) -> Latency:
    arr = np.asarray(ts)
    return Latency(float(np.median(arr)), float(np.percentile(arr, 90)), len(arr), block_medians)
