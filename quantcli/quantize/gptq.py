"""GPTQ (Frantar et al. 2022, "Accurate Post-Training Quantization for Generative Pre-trained Transformers") for
4-bit block weights, as a pure function of the weight and its input's Gram matrix.

For ``y = x W`` (W: [K, N]) and calibration inputs X, the layer's output error ``||X W - X Q||^2`` is a quadratic
form in ``H = 2 X^T X / n``.  GPTQ quantizes W one input row k at a time (in K order) and spreads each row's
rounding error over the rows not yet quantized, weighted by the inverse Hessian:

    d = Hinv[k, k];   e = (W[k] - Q[k]) / d;   W[k+1:] -= Hinv[k, k+1:]^T e

with ``Hinv`` the upper Cholesky factor of ``H^-1`` (after damping: ``H += damp * mean(diag H) * I``; inputs that
are always zero get ``H[k, k] = 1`` and a zero weight row).  Each block of ``block_size`` rows gets its scale and
zero point from the (already error-updated) weights when the block starts, exactly as
:func:`~.blockwise.quantize_blockwise` computes them, so the result packs into the same ``MatMulNBits`` layout.
Rows are taken in their natural order (no act-order: it would need MatMulNBits' deprecated ``g_idx``).
"""

from __future__ import annotations

import numpy as np

from .blockwise import BlockQuant, block_params, levels, pack_codes

DAMP = 0.01


def gptq_quantize(w: np.ndarray, gram: np.ndarray, count: int, block_size: int = 32, *, symmetric: bool = False,
                  bits: int = 4, damp: float = DAMP) -> BlockQuant:
    """``w`` [K, N]; ``gram`` = X^T X over ``count`` input rows X [count, K]."""
    w = np.array(w, np.float64)
    k, n = w.shape
    h = 2.0 * np.asarray(gram, np.float64) / max(count, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(k)
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    kb = -(-k // block_size)
    codes = np.zeros((n, kb, block_size), np.uint8)
    scales = np.ones((n, kb), np.float32)
    zps = np.zeros((n, kb), np.uint8)
    for b in range(kb):
        lo, hi = b * block_size, min((b + 1) * block_size, k)
        block = np.zeros((n, block_size))
        block[:, :hi - lo] = w[lo:hi].T
        scale32, zp = block_params(block, symmetric, bits)
        scales[:, b], zps[:, b] = scale32, zp
        scale = scale32.astype(np.float64)
        for r in range(lo, hi):
            q = np.clip(np.round(w[r] / scale) + zp, 0, levels(bits))
            codes[:, b, r - lo] = q
            err = (w[r] - (q - zp) * scale) / hinv[r, r]
            w[r + 1:] -= np.outer(hinv[r, r + 1:], err)
    return pack_codes(codes, scales, zps, k, block_size, symmetric, bits)
