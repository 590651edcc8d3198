"""From ranges to quantization parameters, and quantizing weights and biases.

ONNX QuantizeLinear: ``q = saturate(round_half_to_even(x / scale) + zero_point)``;
DequantizeLinear: ``x = (q - zero_point) * scale``.

* Activations, asymmetric uint8: the range [lo, hi] is widened to contain 0 (so 0 is exact);
  ``scale = (hi - lo) / 255``, ``zero_point = round(-lo / scale)`` clamped to [0, 255].
* Activations, symmetric int8: ``scale = max(|lo|, |hi|) / 127``, ``zero_point = 0``.
* Weights, symmetric int8 on the narrow range [-127, 127] (``reduce_range``: [-63, 63], 7 bits, for
  the u8s8 saturation of AVX2 kernels without VNNI): ``scale = max|w| / 127`` per output channel
  (or per tensor), ``zero_point = 0``.
* Bias, int32: ``scale = input_scale * weight_scale``, ``zero_point = 0``.  If a bias value would not fit
  in int32 (tiny weight scale, large bias), that channel's weight scale is raised until it fits.

A zero range (constant-zero tensor, all-zero weight channel) gets scale 1.0 so that no scale is 0.

Large weights are reduced and quantized :data:`CHUNK_VALUES` values at a time (a slice of channels, or of
rows): the same numbers, with temporaries the size of a slice instead of several copies of the weight.
"""

from __future__ import annotations

import dataclasses

import numpy as np

INT32_LIMIT = 2**31 - 1
CHUNK_VALUES = 1 << 22  # values per slice of a large weight (16 MB as float32)


def row_slices(n_rows: int, row_values: int) -> list[slice]:
    """Slices of the first axis holding about CHUNK_VALUES values each (one slice for a small array)."""
    step = max(1, CHUNK_VALUES // max(row_values, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, max(n_rows, 1), step)]


@dataclasses.dataclass(frozen=True)
class QParams:
    scale: np.ndarray        # float32, scalar or 1-D (per channel)
    zero_point: np.ndarray   # uint8 / int8 / int32, same shape as scale
    axis: int | None = None  # channel axis for per-channel parameters

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype


def activation_params(lo: float, hi: float, *, symmetric: bool = False) -> QParams:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    if symmetric:
        a = max(-lo, hi)
        scale = a / 127.0 if a > 0 else 1.0
        return QParams(np.array(scale, np.float32), np.array(0, np.int8))
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    scale = np.float32(scale)
    if scale == 0 or not np.isfinite(scale):  # underflow / overflow of float32
        scale = np.float32(np.finfo(np.float32).tiny if hi > lo else 1.0)
    zp = int(np.clip(np.round(-lo / float(scale)), 0, 255))
    return QParams(np.array(scale, np.float32), np.array(zp, np.uint8))


def weight_params(w: np.ndarray, *, axis: int | None, reduce_range: bool = False) -> QParams:
    """Symmetric int8 parameters for a weight; ``axis`` None means per tensor."""
    qmax = 63.0 if reduce_range else 127.0
    w = np.asarray(w)
    if axis is None:
        flat = w.reshape(w.shape[0] if w.ndim else 1, -1) if w.size else w
        amax = np.array(max(np.max(np.abs(np.asarray(flat[sl], np.float64))) for sl in row_slices(*flat.shape))
                        if w.size else 0.0)
    else:
        chans = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.concatenate([np.max(np.abs(np.asarray(chans[sl], np.float64)), axis=1)
                               for sl in row_slices(*chans.shape)])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, np.int8), axis)


def quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """QuantizeLinear as ONNX defines it (round half to even, saturate)."""
    info = np.iinfo(p.dtype)
    scale, zp = _broadcast(p, np.ndim(x))
    q = np.rint(np.asarray(x, np.float32) / scale) + zp
    return np.clip(q, info.min, info.max).astype(p.dtype)


def dequantize(q: np.ndarray, p: QParams) -> np.ndarray:
    scale, zp = _broadcast(p, np.ndim(q))
    return ((q.astype(np.int64) - zp.astype(np.int64)) * scale.astype(np.float32)).astype(np.float32)


def quantize_weight(w: np.ndarray, p: QParams, *, reduce_range: bool = False) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim == 0 or w.size <= CHUNK_VALUES:
        return _quantize_weight(w, p, reduce_range)
    out = np.empty(w.shape, np.int8)
    for sl in row_slices(w.shape[0], w.size // w.shape[0]):
        per_row = p.axis == 0 and np.ndim(p.scale) == 1
        part = QParams(p.scale[sl], p.zero_point[sl], 0) if per_row else p
        out[sl] = _quantize_weight(w[sl], part, reduce_range)
    return out


def _quantize_weight(w: np.ndarray, p: QParams, reduce_range: bool) -> np.ndarray:
    q = quantize(w, p)
    if reduce_range:
        q = np.clip(q, -63, 63).astype(np.int8)
    return np.clip(q, -127, 127).astype(np.int8)


def bias_params(bias: np.ndarray, input_scale: float, wp: QParams, *,
                reduce_range: bool = False) -> tuple[QParams, QParams]:
    """int32 bias parameters; returns (bias params, possibly raised weight params)."""
    b = np.asarray(bias, np.float64).reshape(-1)
    wscale = np.asarray(wp.scale, np.float64)
    if wscale.ndim == 0:
        wscale = np.full(1, float(wscale))
    need = np.abs(b) / (float(input_scale) * INT32_LIMIT * 0.5)  # keep 2x headroom
    if wscale.size == 1:
        need = np.array([need.max() if need.size else 0.0])
    raised = np.maximum(wscale, need)
    new_wp = wp
    if np.any(raised > wscale):
        scale = raised.astype(np.float32).reshape(np.shape(wp.scale)) if np.ndim(wp.scale) else \
            np.array(raised[0], np.float32)
        new_wp = QParams(scale, wp.zero_point, wp.axis)
    bscale = (np.float32(input_scale) * np.asarray(new_wp.scale, np.float32)).astype(np.float32)
    return QParams(bscale, np.zeros(bscale.shape, np.int32), 0 if bscale.ndim else None), new_wp


def quantize_bias(bias: np.ndarray, bp: QParams) -> np.ndarray:
    b = np.asarray(bias, np.float64)
    scale = np.asarray(bp.scale, np.float64)
    q = np.rint(b / scale)
    return np.clip(q, -INT32_LIMIT, INT32_LIMIT).astype(np.int32)


def _broadcast(p: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, zp = np.asarray(p.scale), np.asarray(p.zero_point)
    if p.axis is None or scale.ndim == 0:
        return scale, zp
    shape = [1] * ndim
    shape[p.axis] = -1
    return scale.reshape(shape), zp.reshape(shape)
