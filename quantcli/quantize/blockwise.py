"""Block-wise 4- or 8-bit weight quantization (round to nearest) in ONNX Runtime's ``MatMulNBits`` layout.

For ``Y = A @ W`` with ``W`` of shape [K, N], each output column n is cut along K into blocks of
``block_size`` values; each block gets a scale and (asymmetric) a zero point.  With ``L = 2**bits - 1`` levels
(15 for 4 bits, 255 for 8) and ``m = 2**(bits - 1)`` (8, 128)::

    asymmetric:  scale = (max - min) / L,     zp = clip(round(-min / scale), 0, L)    (0 lies on the grid)
    symmetric:   scale = max|w| / (m - 1),    zp = m                                   (codes -(m-1)..m-1 around m)
    q = clip(round(w / scale) + zp, 0, L),    w ~ (q - zp) * scale

which is how ``MatMulNBits`` (domain com.microsoft) dequantizes: ``B`` is uint8 [N, k_blocks, block_size * bits / 8]
(4 bits: two codes per byte, the lower K index in the low nibble); ``scales`` float [N * k_blocks];
``zero_points`` uint8, packed the same way per column (absent: m).  K is padded with zeros to a whole number of
blocks.  Large weights are rounded a slice of columns at a time (same numbers, bounded temporaries).

With ``clip`` each block's range is shrunk by the factor of CLIP_GRID (1.0 included, so never worse) that gives
the smallest rounding error, optionally weighted per K row (``importance``: the mean squared input of that row
when calibration data is at hand): on 4-bit blocks the full range spends levels on one or two extreme values.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .params import row_slices

BLOCK_SIZES = (16, 32, 64, 128, 256)
BITS = (4, 8)


def levels(bits: int) -> int:
    return (1 << bits) - 1


@dataclasses.dataclass
class BlockQuant:
    packed: np.ndarray              # uint8 [N, k_blocks, block_size * bits / 8]
    scales: np.ndarray              # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, k_blocks * bits / 8 (rounded up)] packed; None when symmetric
    codes: np.ndarray               # uint8 [N, k_blocks, block_size]: unpacked codes
    zp: np.ndarray                  # uint8 [N, k_blocks]: unpacked zero points
    k: int
    block_size: int
    bits: int = 4

    def dequantize(self) -> np.ndarray:
        """W as MatMulNBits computes with it: [K, N] float32."""
        w = (self.codes.astype(np.float32) - self.zp[..., None].astype(np.float32)) * self.scales[..., None]
        return np.ascontiguousarray(w.reshape(w.shape[0], -1)[:, :self.k].T)


def pack_bits(a: np.ndarray, bits: int) -> np.ndarray:
    """8 bits: as is; 4 bits: two values per byte along the last axis (padded to even), the first in the low nibble."""
    if bits == 8:
        return a.astype(np.uint8)
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return (a[..., 0::2] | (a[..., 1::2] << 4)).astype(np.uint8)


def block_params(blocks: np.ndarray, symmetric: bool, bits: int = 4, *, clip: bool = False,
                 importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (as float) of each block along the last axis of ``blocks``.

    ``clip``: instead of the block's full range, the range shrunk by the factor in CLIP_GRID (1 included) whose
    rounding error ``sum importance * (w - dequant(q(w)))^2`` is smallest, block by block (a few outliers no longer
    set a step too coarse for the rest).  ``importance``: a weight per position of the last axis (broadcast
    against ``blocks``, e.g. the mean squared input of each of the block's K rows); default 1."""
    blocks = np.asarray(blocks, np.float64)
    if not clip:
        return _range_params(blocks, symmetric, bits, 1.0)
    best = best_err = None
    for f in CLIP_GRID:
        scale, zp = _range_params(blocks, symmetric, bits, f)
        sc = scale.astype(np.float64)[..., None]
        q = np.clip(np.round(blocks / sc) + zp[..., None], 0, levels(bits))
        d2 = (blocks - (q - zp[..., None]) * sc) ** 2
        err = (d2 if importance is None else d2 * importance).sum(axis=-1)
        if best is None:
            best, best_err = (scale, zp), err
        else:
            better = err < best_err
            best = (np.where(better, scale, best[0]), np.where(better, zp, best[1]))
            best_err = np.where(better, err, best_err)
    return best[0].astype(np.float32), best[1]


CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _range_params(blocks: np.ndarray, symmetric: bool, bits: int, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    top = levels(bits)
    if symmetric:
        mid = float(1 << (bits - 1))
        scale = shrink * np.abs(blocks).max(axis=-1) / (mid - 1)
        zp = np.full(scale.shape, mid)
    else:
        lo = shrink * np.minimum(blocks.min(axis=-1), 0.0)
        hi = shrink * np.maximum(blocks.max(axis=-1), 0.0)
        scale = (hi - lo) / top
        zp = np.clip(np.round(-lo / np.where(scale > 0, scale, 1.0)), 0, top)
    return np.where(scale > 0, scale, 1.0).astype(np.float32), zp


def pack_codes(codes: np.ndarray, scales: np.ndarray, zps: np.ndarray, k: int, block_size: int,
               symmetric: bool, bits: int = 4) -> BlockQuant:
    """Codes [N, k_blocks, block_size], scales and zero points [N, k_blocks] in MatMulNBits' layout."""
    zps = zps.astype(np.uint8)
    return BlockQuant(pack_bits(codes, bits), scales.astype(np.float32), None if symmetric else pack_bits(zps, bits),
                      codes, zps, k, block_size, bits)


def quantize_blockwise(w: np.ndarray, block_size: int = 32, *, symmetric: bool = False, bits: int = 4,
                       clip: bool = False, importance: np.ndarray | None = None) -> BlockQuant:
    """Round-to-nearest ``bits``-bit quantization of ``w`` [K, N] in blocks of ``block_size`` along K; ``clip``
    searches each block's range (:func:`block_params`), ``importance`` [K] weighs its rows' errors."""
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block_size}")
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    w = np.asarray(w, np.float32)
    k, n = w.shape
    imp = None
    if importance is not None:
        kb = -(-k // block_size)
        imp = np.zeros(kb * block_size)
        imp[:k] = importance
        imp = imp.reshape(kb, block_size)
    parts = [_round_columns(w[:, sl], block_size, symmetric, bits, clip, imp) for sl in row_slices(n, k)]
    codes, scale, zp = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return pack_codes(codes, scale, zp, k, block_size, symmetric, bits)


def _round_columns(w: np.ndarray, block_size: int, symmetric: bool, bits: int, clip: bool = False,
                   importance: np.ndarray | None = None):
    """Codes, scales and zero points of the columns of ``w`` [K, n] (a slice of a weight's columns)."""
    k, n = w.shape
    kb = -(-k // block_size)
    cols = np.zeros((n, kb * block_size), np.float32)
    cols[:, :k] = w.T
    blocks = cols.reshape(n, kb, block_size).astype(np.float64)
    scale, zp = block_params(blocks, symmetric, bits, clip=clip, importance=importance)
    q = np.clip(np.round(blocks / scale[..., None].astype(np.float64)) + zp[..., None], 0, levels(bits))
    return q.astype(np.uint8), scale, zp
