"""What consumers ask of the one statistics pass: :class:`StatRequest` s and the observers that answer them.

* ``HISTOGRAM`` -- min/max, moving averages and a histogram of a tensor (:class:`~.observers.TensorObserver`):
  activation ranges.  Element order does not matter, so these tensors may be read in ONNX Runtime's
  internal (blocked) layout.
* ``CHANNEL_ABSMAX`` -- per-channel max |x| along ``axis`` (SmoothQuant's migration scales).
* ``CHANNEL_MEAN`` -- per-channel mean along ``axis`` (empirical bias correction's E[y]).
* ``GRAM`` -- the Gram matrix X^T X of the rows of x over its last axis (a GPTQ layer's Hessian).

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


@dataclasses.dataclass(frozen=True)
class StatRequest:
    tensor: str
    stat: Stat = Stat.HISTOGRAM
    axis: int = 1  # the channel axis of per-channel statistics (-1: the last)

    @property
    def order_free(self) -> bool:
        return self.stat == Stat.HISTOGRAM


class ChannelObserver:
    """Per-channel abs-max, mean (exact sums in float64, in batch order) or Gram matrix of one tensor."""

    def __init__(self, request: StatRequest) -> None:
        self.request = request
        self.total: np.ndarray | None = None
        self.count = 0

    def _rows(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float64)
        if self.request.axis not in (-1, y.ndim - 1):
            y = np.moveaxis(y, self.request.axis, -1)
        return y.reshape(-1, y.shape[-1])

    def update(self, x: np.ndarray) -> None:
        rows = self._rows(x)
        stat = self.request.stat
        if stat == Stat.CHANNEL_MEAN:
            part = rows.sum(axis=0)
        elif stat == Stat.CHANNEL_ABSMAX:
            part = np.abs(rows).max(axis=0) if len(rows) else np.zeros(rows.shape[1])
        else:
            part = rows.T @ rows
        if self.total is None:
            self.total = part
        elif stat == Stat.CHANNEL_ABSMAX:
            self.total = np.maximum(self.total, part)
        else:
            self.total = self.total + part
        self.count += rows.shape[0]

    def result(self) -> np.ndarray:
        if self.total is None:
            raise ValueError(f"no values observed for '{self.request.tensor}'")
        return self.total / self.count if self.request.stat == Stat.CHANNEL_MEAN else self.total
