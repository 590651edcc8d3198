"""Streaming collection of activation statistics through ONNX Runtime.

The prepared model is run with extra graph outputs on the tensors to be quantized (a "tap" model, kept
in memory, without ONNX Runtime's layout copies in front of those outputs: the statistics are
order-free).  After each batch, every tapped tensor updates its :class:`TensorObserver` and the batch's
outputs are dropped, so memory depends on the model and the batch size, never on the number of samples.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import onnx

from ..runtime.session import run, stats_tap_session
from .observers import TensorObserver


def collect_statistics(model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict[str, np.ndarray]], *,
                       bins: int = 2048, momentum: float = 0.9, threads: int = 0,
                       on_batch: Callable[[int], None] | None = None
                       ) -> tuple[dict[str, TensorObserver], int, float]:
    """Observe ``tensors`` over ``batches``; returns (observers, samples seen, seconds spent in the data pass)."""
    inputs = {i.name for i in model.graph.input}
    tapped = [t for t in tensors if t not in inputs]
    fed = [t for t in tensors if t in inputs]
    # keep ONNX Runtime's memory arena: it reaches its high-water mark after two runs and then stays
    # flat, while plain malloc (arena off) was measured to creep up run after run
    session = stats_tap_session(model, tapped, threads=threads) if tapped else None
    observers = {t: TensorObserver(bins=bins, momentum=momentum) for t in tensors}
    samples = 0
    t0 = time.perf_counter()
    for feeds in batches:
        n = len(next(iter(feeds.values())))
        if session is not None:
            values = run(session, feeds, what="calibration (tap) model")
            for name, value in zip(tapped, values):
                observers[name].update(value)
            del values, value
        for name in fed:
            observers[name].update(feeds[name])
        samples += n
        if on_batch:
            on_batch(n)
    return observers, samples, time.perf_counter() - t0
