"""Streaming collection of activation statistics through ONNX Runtime: one data pass answers every
:class:`~.requests.StatRequest` its consumers made (histograms for ranges, per-channel abs-max / means, Gram
matrices).

The model is run with extra graph outputs on the requested tensors (a "tap" model, kept in memory, without
ONNX Runtime's layout copies in front of the outputs whose statistics are order-free; per-channel statistics
read their tensors in the logical layout).  After each batch, every tapped tensor updates its observers and
the batch's outputs are dropped, so memory depends on the model and the batch size, never on the number of
samples.

What keeps the pass close to plain inference:

* the tap session's threads spin while it runs (as a plain session's do) and stop when it returns, so
  they do not take the cores from the statistics;
* small tensors (a few thousand values per batch, where numpy's fixed cost per call dominates) are
  observed a group of batches at a time (at most :data:`GROUP_VALUES` values held per tensor and
  :data:`HELD_VALUES` in all);
* a Relu's (or Clip's) output skips the pass for its minimum when the histogram's subsample already
  holds its lower bound;
* large tensors update their observers on all cores (numpy releases the GIL in the reductions that
  dominate them), each tensor by one thread; smaller ones stay on this thread, where threads only add
  contention for the GIL.
The result does not depend on the thread count.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from ..runtime.session import run, stats_tap_session
from ..transforms.graph import GraphIndex, attr
from .observers import TensorObserver, hist_samples_per_update
from .requests import ChannelObserver, Stat, StatRequest

TAP_BYTES = 1 << 28       # a run's tapped outputs stay under this (256 MB) where the batch may be split
GROUP_VALUES = 1 << 16    # a small tensor's batches are held until this many values, then observed together
HELD_VALUES = 1 << 21     # and all held batches together stay under this many values (8 MB), however many tensors
PARALLEL_VALUES = 1 << 18  # tensors at least this large are observed on all cores, smaller ones on this thread


@dataclasses.dataclass
class Collected:
    histograms: dict[str, TensorObserver]              # tensor -> its range statistics
    channels: dict[StatRequest, ChannelObserver]       # per-channel / Gram requests -> their observers
    samples: int
    seconds: float                                     # the data pass alone
    batch_size: int | None = None                      # samples per run, where batches were split to fit TAP_BYTES


def collect_statistics(model: onnx.ModelProto, requests: Sequence[StatRequest | str],
                       batches: Iterable[dict[str, np.ndarray]], *, bins: int = 2048, momentum: float = 0.9,
                       threads: int = 0, expected_batches: int | None = None,
                       on_batch: Callable[[int], None] | None = None, split: bool = False) -> Collected:
    """Answer ``requests`` (a plain tensor name asks for its histogram) in one pass over ``batches`` (about
    ``expected_batches`` of them, which sizes the histograms' subsamples).  ``split``: batches whose tapped
    outputs would exceed :data:`TAP_BYTES` are run in parts of equal size (:func:`split_batches`)."""
    reqs = [r if isinstance(r, StatRequest) else StatRequest(r) for r in requests]
    tensors = list(dict.fromkeys(r.tensor for r in reqs if r.stat == Stat.HISTOGRAM))
    channels = {r: ChannelObserver(r) for r in reqs if r.stat != Stat.HISTOGRAM}
    ordered = {r.tensor for r in channels}
    inputs = {i.name for i in model.graph.input}
    tapped = [t for t in dict.fromkeys(tensors + [r.tensor for r in channels]) if t not in inputs]
    # keep ONNX Runtime's memory arena: it reaches its high-water mark after two runs and then stays
    # flat, while plain malloc (arena off) was measured to creep up run after run
    session = stats_tap_session(model, tapped, threads=threads, keep_order=ordered) if tapped else None
    part = None
    if split and session is not None:
        batches, part, expected_batches = split_batches(session, batches, expected_batches)
    hist = hist_samples_per_update(expected_batches)
    observers = {t: TensorObserver(bins=bins, momentum=momentum, hist_samples=hist) for t in tensors}
    workers = min(threads or os.cpu_count() or 1, 8)
    pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="quantcli-stats") if workers > 1 else None
    feeder = _Feeder(observers, lower_bounds(model, tensors), pool, workers)
    try:
        samples = 0
        t0 = time.perf_counter()
        for batch in batches:
            n = len(next(iter(batch.values())))
            values = dict(zip(tapped, run(session, batch, what="calibration (tap) model"))) if session else {}
            values.update({name: batch[name] for name in inputs if name in batch})
            for r, obs in channels.items():
                obs.update(values[r.tensor])
            feeder.add([(t, values[t]) for t in tensors])
            del values
            samples += n
            if on_batch:
                on_batch(n)
        feeder.flush()
        return Collected(observers, channels, samples, time.perf_counter() - t0, part)
    finally:
        if pool is not None:
            pool.shutdown()


def split_batches(session, batches: Iterable[dict[str, np.ndarray]], expected: int | None
                  ) -> tuple[Iterable[dict[str, np.ndarray]], int | None, int | None]:
    """``batches`` in parts small enough that a run's tapped outputs stay under TAP_BYTES, measured by running
    the tap session on the first sample; the part size (None: not split) and the expected number of runs.

    Every tapped tensor is a graph output, so a run holds all of them for the whole batch at once: PP-OCRv6's
    text recognizer taps 40 MB a line, 639 MB for a batch of 16 lines (most of calibrate's 1.07 GB peak).
    The parts are views of the batch (no copy).  Ranges by min/max do not depend on the batch size; the
    moving averages and the histograms' subsamples are per run."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return [], None, expected
    rows = {len(v) if np.ndim(v) else -1 for v in first.values()}
    n = rows.pop() if len(rows) == 1 else -1
    if n <= 1:  # one sample, or inputs without a common sample axis: nothing to split
        return itertools.chain([first], it), None, expected
    per_sample = sum(o.nbytes for o in run(session, {k: v[:1] for k, v in first.items()},
                                           what="calibration (tap) model"))
    k = max(1, min(n, TAP_BYTES // max(1, per_sample)))
    if k >= n:
        return itertools.chain([first], it), None, expected

    def parts() -> Iterator[dict[str, np.ndarray]]:
        for batch in itertools.chain([first], it):
            m = len(next(iter(batch.values())))
            for i in range(0, m, k):
                yield {name: v[i:i + k] for name, v in batch.items()}

    return parts(), k, expected * -(-n // k) if expected else expected


def lower_bounds(model: onnx.ModelProto, tensors: list[str]) -> dict[str, float]:
    """Values the tensors cannot go below, known from the node producing them: 0 for Relu, the minimum
    of a Clip whose minimum is a constant."""
    g = GraphIndex(model.graph)
    bounds: dict[str, float] = {}
    for name in tensors:
        node = g.producer.get(name)
        if node is None:
            continue
        if node.op_type == "Relu":
            bounds[name] = 0.0
        elif node.op_type == "Clip":
            lo = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
            if lo is not None and np.size(lo) == 1 and np.isfinite(lo):
                bounds[name] = float(np.float32(np.asarray(lo).reshape(())))
    return bounds


class _Feeder:
    """Routes each batch's values to the observers: small tensors through a bounded buffer of batches."""

    def __init__(self, observers: dict[str, TensorObserver], bounds: dict[str, float],
                 pool: ThreadPoolExecutor | None, workers: int) -> None:
        self.observers = observers
        self.bounds = bounds
        self.pool, self.workers = pool, workers
        self.pending: dict[str, list[np.ndarray]] = {}
        self.held: dict[str, int] = {}

    def add(self, values: list[tuple[str, np.ndarray]]) -> None:
        work: list[tuple[str, list[np.ndarray]]] = []
        for name, value in values:
            if 4 * value.size > GROUP_VALUES:
                work.append((name, [value]))
                continue
            self.pending.setdefault(name, []).append(value)
            self.held[name] = self.held.get(name, 0) + value.size
            if self.held[name] >= GROUP_VALUES:
                work.append((name, self.pending.pop(name)))
                del self.held[name]
        if sum(self.held.values()) > HELD_VALUES:  # many small tensors: observe all that is held now
            work += sorted(self.pending.items())
            self.pending, self.held = {}, {}
        self._observe(work)

    def flush(self) -> None:
        work = sorted(self.pending.items())
        self.pending, self.held = {}, {}
        self._observe(work)

    def _observe(self, work: list[tuple[str, list[np.ndarray]]]) -> None:
        """Update the observers of ``work``: tensors of at least PARALLEL_VALUES values spread over the
        threads (the pool's and this one) by size, the rest on this thread."""
        def do(item: tuple[str, list[np.ndarray]]) -> None:
            name, xs = item
            self.observers[name].update_many(xs, self.bounds.get(name))

        sizes = [sum(x.size for x in xs) for _, xs in work]
        big = [i for i in range(len(work)) if sizes[i] >= PARALLEL_VALUES]
        pool, workers = self.pool, self.workers
        if pool is None or len(big) < 2:
            for item in work:
                do(item)
            return
        # small tensors are mostly numpy's per-call cost, under the GIL: threads only slow them down
        groups: list[list[int]] = [[] for _ in range(workers)]
        load = [0] * len(groups)
        for i in sorted(big, key=lambda i: -sizes[i]):
            g = load.index(min(load))
            groups[g].append(i)
            load[g] += sizes[i]
        groups[0] += [i for i in range(len(work)) if sizes[i] < PARALLEL_VALUES]

        def run_group(ix: list[int]) -> None:
            for i in ix:
                do(work[i])

        futures = [pool.submit(run_group, ix) for ix in groups[1:] if ix]
        run_group(groups[0])
        for f in futures:
            f.result()
