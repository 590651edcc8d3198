"""Streaming collection of activation statistics through ONNX Runtime.

The prepared model is run with extra graph outputs on the tensors to be quantized (a "tap" model, kept
in memory, without ONNX Runtime's layout copies in front of those outputs: the statistics are
order-free).  After each batch, every tapped tensor updates its :class:`TensorObserver` and the batch's
outputs are dropped, so memory depends on the model and the batch size, never on the number of samples.
The observers of one batch are updated on all cores (numpy releases the GIL in the reductions that
dominate), each tensor by one thread, batch after batch: the result does not depend on the thread count.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
import onnx

from ..runtime.session import run, stats_tap_session
from .observers import TensorObserver, hist_samples_per_update


def collect_statistics(model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict[str, np.ndarray]], *,
                       bins: int = 2048, momentum: float = 0.9, threads: int = 0, expected_batches: int | None = None,
                       on_batch: Callable[[int], None] | None = None
                       ) -> tuple[dict[str, TensorObserver], int, float]:
    """Observe ``tensors`` over ``batches`` (about ``expected_batches`` of them, which sizes the histograms'
    subsamples); returns (observers, samples seen, seconds spent in the data pass)."""
    inputs = {i.name for i in model.graph.input}
    tapped = [t for t in tensors if t not in inputs]
    fed = [t for t in tensors if t in inputs]
    # keep ONNX Runtime's memory arena: it reaches its high-water mark after two runs and then stays
    # flat, while plain malloc (arena off) was measured to creep up run after run
    session = stats_tap_session(model, tapped, threads=threads) if tapped else None
    hist = hist_samples_per_update(expected_batches)
    observers = {t: TensorObserver(bins=bins, momentum=momentum, hist_samples=hist) for t in tensors}
    workers = min(threads or os.cpu_count() or 1, 8)
    pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="quantcli-stats") if workers > 1 else None
    try:
        return _collect(session, observers, tapped, fed, batches, pool, workers, on_batch)
    finally:
        if pool is not None:
            pool.shutdown()


def _collect(session, observers, tapped, fed, batches, pool, workers, on_batch):
    samples = 0
    t0 = time.perf_counter()
    for feeds in batches:
        n = len(next(iter(feeds.values())))
        if session is not None:
            values = run(session, feeds, what="calibration (tap) model")
            _update_all([observers[name] for name in tapped], values, pool, workers)
            del values
        for name in fed:
            observers[name].update(feeds[name])
        samples += n
        if on_batch:
            on_batch(n)
    return observers, samples, time.perf_counter() - t0


def _update_all(observers: list[TensorObserver], values: list[np.ndarray], pool: ThreadPoolExecutor | None,
                workers: int) -> None:
    """observers[i].update(values[i]) for all i, on ``workers`` threads (the pool's and this one) in
    size-balanced groups."""
    if pool is None or len(values) < 2:
        for obs, value in zip(observers, values):
            obs.update(value)
        return
    groups: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * len(groups)
    for i in sorted(range(len(values)), key=lambda i: -values[i].size):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += values[i].size

    def work(ix: list[int]) -> None:
        for i in ix:
            observers[i].update(values[i])

    futures = [pool.submit(work, ix) for ix in groups[1:] if ix]
    work(groups[0])
    for f in futures:
        f.result()
