"""What consumers ask of the one statistics pass: :class:`StatRequest` s and the observers that answer them.

* ``HISTOGRAM`` -- min/max, moving averages and a histogram of a tensor (:class:`~.observers.TensorObserver`):
  activation ranges.  Element order does not matter, so these tensors may be read in ONNX Runtime's
  internal (blocked) layout.
* ``CHANNEL_ABSMAX`` -- per-channel max |x| along ``axis`` (SmoothQuant's migration scales).
* ``CHANNEL_MEAN`` -- per-channel mean along ``axis`` (empirical bias correction's E[y]).
* ``CHANNEL_MIN`` / ``CHANNEL_MAX`` -- per-channel min / max along ``axis`` (the range a tensor has after a
  per-channel rescaling, without another pass: SmoothQuant's search).
* ``GRAM`` -- the Gram matrix X^T X of the rows of x over its last axis (a GPTQ layer's Hessian).
* ``ROWS`` -- a strided sample of at most ``2 * limit`` rows of x over its last axis, in data order (every
  ``step``-th row, ``step`` doubling whenever twice ``limit`` rows are held): a layer's inputs for a search over
  candidate transforms (SmoothQuant's migration strength).

Per-channel statistics need the tensor in its logical layout; :func:`~.collect.collect_statistics` reads
them so.  Memory per request is one vector (or one CxC matrix), whatever the number of samples.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Stat(str, enum.Enum):
    HISTOGRAM = "histogram"
    CHANNEL_ABSMAX = "channel-absmax"
    CHANNEL_MEAN = "channel-mean"
    GRAM = "gram"
    CHANNEL_MIN = "channel-min"
    CHANNEL_MAX = "channel-max"
    ROWS = "rows"


@dataclasses.dataclass(frozen=True)
class StatRequest:
    tensor: str
    stat: Stat = Stat.HISTOGRAM
    axis: int = 1  # the channel axis of per-channel statistics (-1: the last)
    limit: int = 1024  # ROWS: rows kept (between limit and 2 * limit once that many were seen)

    @property
    def order_free(self) -> bool:
        return self.stat == Stat.HISTOGRAM


class ChannelObserver:
    """Per-channel abs-max, min, max, mean (exact sums in float64, in batch order), Gram matrix or a row sample
    of one tensor."""

    # per batch, then across batches: abs-max of no rows is 0 (as before); min / max of no rows is nothing yet
    _PART = {Stat.CHANNEL_ABSMAX: lambda r: np.abs(r).max(axis=0) if len(r) else np.zeros(r.shape[1]),
             Stat.CHANNEL_MAX: lambda r: r.max(axis=0) if len(r) else None,
             Stat.CHANNEL_MIN: lambda r: r.min(axis=0) if len(r) else None}
    _REDUCE = {Stat.CHANNEL_ABSMAX: np.maximum, Stat.CHANNEL_MAX: np.maximum, Stat.CHANNEL_MIN: np.minimum}

    def __init__(self, request: StatRequest) -> None:
        self.request = request
        self.total: np.ndarray | None = None
        self.count = 0
        self.kept: list[np.ndarray] = []  # ROWS
        self.step = 1

    def _rows(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float64)
        if self.request.axis not in (-1, y.ndim - 1):
            y = np.moveaxis(y, self.request.axis, -1)
        return y.reshape(-1, y.shape[-1])

    def update(self, x: np.ndarray) -> None:
        rows = self._rows(x)
        stat = self.request.stat
        if stat == Stat.ROWS:
            self._keep(rows)
            return
        if stat == Stat.CHANNEL_MEAN:
            part = rows.sum(axis=0)
        elif stat in self._REDUCE:
            part = self._PART[stat](rows)
        else:
            part = rows.T @ rows
        if part is None:
            pass
        elif self.total is None:
            self.total = part
        elif stat in self._REDUCE:
            self.total = self._REDUCE[stat](self.total, part)
        else:
            self.total = self.total + part
        self.count += rows.shape[0]

    def _keep(self, rows: np.ndarray) -> None:
        """Rows whose index in the data is a multiple of ``step``; thinned by 2 when 2 * limit are held."""
        first = (-self.count) % self.step
        self.kept.append(rows[first::self.step].astype(np.float32))
        self.count += rows.shape[0]
        if sum(len(k) for k in self.kept) >= 2 * self.request.limit:
            self.kept = [np.concatenate(self.kept)[::2]]
            self.step *= 2

    def result(self) -> np.ndarray:
        if self.request.stat == Stat.ROWS:
            if not self.kept:
                raise ValueError(f"no values observed for '{self.request.tensor}'")
            return np.concatenate(self.kept)
        if self.total is None:
            raise ValueError(f"no values observed for '{self.request.tensor}'")
        return self.total / self.count if self.request.stat == Stat.CHANNEL_MEAN else self.total
