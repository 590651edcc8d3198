"""Streaming statistics of one tensor with memory independent of the number of samples.

:class:`TensorObserver` keeps

* the running min / max and the element count (NaN/Inf are excluded and counted apart);
* a moving-average min / max over batches: ``ma = momentum * ma + (1 - momentum) * batch_value``;
* a histogram of ``bins`` equal bins on ``[lo, lo + bins * width]``, fed with every element of small updates
  and an evenly strided subsample (prime stride) of large ones, so its cost does not grow with the tensor
  size; min, max and counts always see every element.  The subsample size per update comes from a budget
  per calibration run (:func:`hist_samples_per_update`): 32k elements per batch for short runs, down to 8k
  for long ones, so the histogram of every tensor sees at least ~260k evenly spread values (or all of them)
  and its cost stops growing with the number of batches.  When data falls outside it, the
  histogram grows *exactly*: the new width is ``width * 2**k`` and the new lower edge
  ``lo - n * new_width``, so each old bin ``i`` lands entirely in new bin ``n + i // 2**k`` and no count is
  smeared.  All arithmetic on edges is float64, so ranges like -3.4e38 (additive attention masks) fit.
"""

from __future__ import annotations

import functools
import math

import numpy as np


CHUNK = 1 << 18  # elements binned at a time on the float64 path
HIST_SAMPLES = 1 << 15  # at most this many elements of one update go into the histogram (strided subsample)
HIST_MIN = 1 << 13      # and at least this many, however long the run
HIST_BUDGET = 1 << 18   # per tensor and calibration run, spread over its batches


def hist_samples_per_update(batches: int | None) -> int:
    """Histogram subsample size per update for a run of ``batches`` updates (None: unknown, the maximum)."""
    if not batches:
        return HIST_SAMPLES
    return int(min(HIST_SAMPLES, max(HIST_MIN, HIST_BUDGET // batches)))


@functools.lru_cache(maxsize=4096)
def _sample_step(n: int, target: int = HIST_SAMPLES) -> int:
    """A prime stride giving about ``target`` elements; prime, so it does not alias with tensor dimensions."""
    step = max(2, n // target) | 1
    while any(step % d == 0 for d in range(3, int(step ** 0.5) + 1, 2)):
        step += 2
    return step


class TensorObserver:
    def __init__(self, bins: int = 2048, momentum: float = 0.9, hist_samples: int = HIST_SAMPLES) -> None:
        self.bins = int(bins)
        self.momentum = float(momentum)
        self.hist_samples = int(hist_samples)
        self.min = math.inf
        self.max = -math.inf
        self.ma_min = math.nan
        self.ma_max = math.nan
        self.batches = 0
        self.count = 0
        self.nonfinite = 0
        self.hist = np.zeros(self.bins, np.int64)
        self.hist_lo = 0.0
        self.width = 0.0  # bin width; 0 until the first finite value

    @property
    def hist_hi(self) -> float:
        return self.hist_lo + self.bins * self.width

    def edges(self) -> np.ndarray:
        return self.hist_lo + self.width * np.arange(self.bins + 1, dtype=np.float64)

    # -- updating ---------------------------------------------------------------------------------------
    def update(self, x: np.ndarray, lower: float | None = None) -> None:
        """Observe one batch of the tensor (see :meth:`update_many`)."""
        self.update_many([x], lower)

    def update_many(self, xs: list[np.ndarray], lower: float | None = None) -> None:
        """Observe several batches of the tensor at once.

        Min, max, counts and the moving averages are exactly what one :meth:`update` per batch gives; the
        histogram is grown once for the group and fed a subsample of ``hist_samples`` per batch.  Grouping
        small tensors' batches this way spreads numpy's fixed cost per call over many batches.

        ``lower``: a bound the values cannot go below (0 for a Relu's output).  When the histogram's subsample
        of a single batch already holds that value it *is* the batch's minimum, and the pass over every
        element for the minimum is skipped (max, NaN and +inf checks still see every element).
        """
        parts = [p for p in (np.asarray(x).ravel() for x in xs) if p.size]
        if not parts:
            return
        if len(parts) == 1:
            flat = parts[0]
            sample = self._subsample(flat, 1)
            bmax = float(flat.max())  # NaN and +-inf show up in max and min, so these passes check them
            if lower is not None and float(sample.min()) == lower:
                bmin = lower
            else:
                bmin = float(flat.min())
            mins, maxs = [bmin], [bmax]
        else:
            flat = np.concatenate(parts)
            starts = np.cumsum([0] + [p.size for p in parts[:-1]])
            mins = np.minimum.reduceat(flat, starts).tolist()
            maxs = np.maximum.reduceat(flat, starts).tolist()
            sample = self._subsample(flat, len(parts))
        if not all(map(math.isfinite, mins + maxs)):  # (min() and max() of a list would skip a NaN)
            finite = [p[np.isfinite(p)] for p in parts]
            self.nonfinite += sum(p.size - f.size for p, f in zip(parts, finite))
            parts = [f for f in finite if f.size]
            if not parts:
                return
            flat = np.concatenate(parts)
            mins, maxs = [float(p.min()) for p in parts], [float(p.max()) for p in parts]
            sample = self._subsample(flat, len(parts))
        lo, hi = min(mins), max(maxs)
        m = self.momentum
        for bmin, bmax in zip(mins, maxs):
            if self.batches == 0:
                self.ma_min, self.ma_max = bmin, bmax
            else:
                self.ma_min = m * self.ma_min + (1 - m) * bmin
                self.ma_max = m * self.ma_max + (1 - m) * bmax
            self.batches += 1
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(flat.size)
        self._grow(lo, hi)
        self._add(sample)

    def _subsample(self, flat: np.ndarray, batches: int) -> np.ndarray:
        """What of ``flat`` (``batches`` batches) goes into the histogram: all of it, or an even strided
        subsample (copied: the arithmetic on it runs several times faster contiguous)."""
        target = self.hist_samples * batches
        return flat if flat.size <= target else np.ascontiguousarray(flat[:: _sample_step(flat.size, target)])

    def _grow(self, lo: float, hi: float) -> None:
        if self.width == 0.0:
            span = hi - lo
            if span <= 0:
                span = max(abs(lo) * 1e-6, 1e-8)
                lo -= span / 2
            self.hist_lo = lo
            self.width = span / self.bins * (1 + 1e-9) or 1e-12  # hi falls inside the last bin
            return
        if lo >= self.hist_lo and hi < self.hist_hi:
            return
        k = 0
        while True:
            k += 1
            w = self.width * 2.0**k
            n = max(0, math.ceil((self.hist_lo - lo) / w))
            new_lo = self.hist_lo - n * w
            if new_lo <= lo and new_lo + self.bins * w > hi:
                break
        factor = 2**k
        target = n + np.arange(self.bins) // factor
        merged = np.bincount(target, weights=self.hist, minlength=self.bins)[: self.bins]
        self.hist = np.rint(merged).astype(np.int64)
        self.hist_lo, self.width = new_lo, w

    def _add(self, x: np.ndarray) -> None:
        if max(abs(self.hist_lo), abs(self.hist_hi)) < 1e30:  # float32 is exact enough to pick a bin
            idx = np.subtract(x, np.float32(self.hist_lo), dtype=np.float32)
            idx *= np.float32(1.0 / self.width)
            idx = idx.astype(np.intp)  # values are >= lo (up to rounding to -0.x), so truncation is floor
            np.minimum(idx, self.bins - 1, out=idx)
            np.maximum(idx, 0, out=idx)
            self.hist += np.bincount(idx, minlength=self.bins)
            return
        # extreme ranges (e.g. -3.4e38 masks): float64, in chunks so temporaries stay small
        for start in range(0, x.size, CHUNK):
            part = x[start:start + CHUNK].astype(np.float64)
            part -= self.hist_lo
            part /= self.width
            idx = part.astype(np.int64)  # values are >= 0 here, so truncation is floor
            np.clip(idx, 0, self.bins - 1, out=idx)
            self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: "TensorObserver") -> None:
        """Combine with an observer of other data (same bin count): exact for counts, min and max."""
        if other.count == 0:
            self.nonfinite += other.nonfinite
            return
        if self.count == 0:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in other.__dict__.items()})
            return
        self._grow(other.hist_lo, other.hist_hi - other.width * 1e-9)
        centers = other.hist_lo + other.width * (np.arange(other.bins) + 0.5)
        idx = np.clip(np.floor((centers - self.hist_lo) / self.width).astype(np.int64), 0, self.bins - 1)
        self.hist += np.bincount(idx, weights=other.hist, minlength=self.bins).astype(np.int64)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        total = self.batches + other.batches
        self.ma_min = (self.ma_min * self.batches + other.ma_min * other.batches) / total
        self.ma_max = (self.ma_max * self.batches + other.ma_max * other.batches) / total
        self.batches, self.count = total, self.count + other.count
        self.nonfinite += other.nonfinite

    # -- serialization ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def f(v: float):
            return None if not math.isfinite(v) else float(v)
        nz = np.nonzero(self.hist)[0]
        return {"bins": self.bins, "momentum": self.momentum, "hist_samples": self.hist_samples,
                "min": f(self.min), "max": f(self.max),
                "ma_min": f(self.ma_min), "ma_max": f(self.ma_max), "batches": self.batches, "count": self.count,
                "nonfinite": self.nonfinite, "hist_lo": self.hist_lo, "width": self.width,
                "hist_index": nz.tolist(), "hist_count": self.hist[nz].tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorObserver":
        obs = cls(bins=int(d["bins"]), momentum=float(d["momentum"]),
                  hist_samples=int(d.get("hist_samples", HIST_SAMPLES)))
        obs.min = math.inf if d["min"] is None else float(d["min"])
        obs.max = -math.inf if d["max"] is None else float(d["max"])
        obs.ma_min = math.nan if d["ma_min"] is None else float(d["ma_min"])
        obs.ma_max = math.nan if d["ma_max"] is None else float(d["ma_max"])
        obs.batches, obs.count, obs.nonfinite = int(d["batches"]), int(d["count"]), int(d["nonfinite"])
        obs.hist_lo, obs.width = float(d["hist_lo"]), float(d["width"])
        idx = np.asarray(d["hist_index"], np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= obs.bins):
            raise ValueError("histogram index out of range")
        obs.hist[idx] = np.asarray(d["hist_count"], np.int64)
        return obs
