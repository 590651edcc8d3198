"""Block-wise 4-bit weight quantization (round to nearest) in ONNX Runtime's ``MatMulNBits`` layout.

For ``Y = A @ W`` with ``W`` of shape [K, N], each output column n is cut along K into blocks of
``block_size`` values; each block gets a scale and (asymmetric) a zero point::

    asymmetric:  scale = (max - min) / 15,   zp = clip(round(-min / scale), 0, 15)   (0 lies on the grid)
    symmetric:   scale = max|w| / 7,         zp = 8                                  (codes -7..7 around 8)
    q = clip(round(w / scale) + zp, 0, 15),  w ~ (q - zp) * scale

which is how ``MatMulNBits`` (domain com.microsoft) dequantizes: ``B`` is uint8 [N, k_blocks, block_size / 2]
with two codes per byte, the lower K index in the low nibble; ``scales`` float [N * k_blocks]; ``zero_points``
uint8 [N * ceil(k_blocks / 2)], two per byte, low nibble first (absent: 8).  K is padded with zeros to a
whole number of blocks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BITS = 4
LEVELS = (1 << BITS) - 1  # 15
BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclasses.dataclass
class BlockQuant:
    packed: np.ndarray           # uint8 [N, k_blocks, block_size // 2]
    scales: np.ndarray           # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks / 2)] packed, None when symmetric (8)
    codes: np.ndarray            # uint8 [N, k_blocks, block_size]: unpacked codes
    zp: np.ndarray               # uint8 [N, k_blocks]: unpacked zero points
    k: int
    block_size: int

    def dequantize(self) -> np.ndarray:
        """W as MatMulNBits computes with it: [K, N] float32."""
        w = (self.codes.astype(np.float32) - self.zp[..., None].astype(np.float32)) * self.scales[..., None]
        return np.ascontiguousarray(w.reshape(w.shape[0], -1)[:, :self.k].T)


def _pack_pairs(a: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis (padded to even), the first in the low nibble."""
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return (a[..., 0::2] | (a[..., 1::2] << 4)).astype(np.uint8)


def block_params(blocks: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (as float) of each block along the last axis of ``blocks``."""
    blocks = np.asarray(blocks, np.float64)
    if symmetric:
        scale = np.abs(blocks).max(axis=-1) / 7.0
        zp = np.full(scale.shape, 8.0)
    else:
        lo = np.minimum(blocks.min(axis=-1), 0.0)
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scale = (hi - lo) / LEVELS
        zp = np.clip(np.round(-lo / np.where(scale > 0, scale, 1.0)), 0, LEVELS)
    return np.where(scale > 0, scale, 1.0).astype(np.float32), zp


def pack_codes(codes: np.ndarray, scales: np.ndarray, zps: np.ndarray, k: int, block_size: int,
               symmetric: bool) -> BlockQuant:
    """Codes [N, k_blocks, block_size], scales and zero points [N, k_blocks] in MatMulNBits' layout."""
    zps = zps.astype(np.uint8)
    return BlockQuant(_pack_pairs(codes), scales.astype(np.float32), None if symmetric else _pack_pairs(zps),
                      codes, zps, k, block_size)


def quantize_blockwise(w: np.ndarray, block_size: int = 32, *, symmetric: bool = False) -> BlockQuant:
    """RTN 4-bit quantization of ``w`` [K, N] in blocks of ``block_size`` along K."""
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block_size}")
    w = np.asarray(w, np.float32)
    k, n = w.shape
    kb = -(-k // block_size)
    cols = np.zeros((n, kb * block_size), np.float32)
    cols[:, :k] = w.T
    blocks = cols.reshape(n, kb, block_size).astype(np.float64)
    scale, zp = block_params(blocks, symmetric)
    q = np.clip(np.round(blocks / scale[..., None].astype(np.float64)) + zp[..., None], 0, LEVELS).astype(np.uint8)
    return pack_codes(q, scale, zp, k, block_size, symmetric)
