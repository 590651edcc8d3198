"""GPTQ (Frantar et al. 2022, "Accurate Post-Training Quantization for Generative Pre-trained Transformers") for
4-bit block weights, as a pure function of the weight and its input's Gram matrix.

For ``y = x W`` (W: [K, N]) and calibration inputs X, the layer's output error ``||X W - X Q||^2`` is a quadratic
form in ``H = 2 X^T X / n``.  GPTQ quantizes W one input row k at a time and spreads each row's rounding error over
the rows not yet quantized, weighted by the inverse Hessian:

    d = Hinv[k, k];   e = (W[k] - Q[k]) / d;   W[k+1:] -= Hinv[k, k+1:]^T e

with ``Hinv`` the upper Cholesky factor of ``H^-1`` (after damping: ``H += damp * mean(diag H) * I``; inputs that
are always zero get ``H[k, k] = 1`` and a zero weight row).  Updates are applied lazily, a batch of rows at a time
(the paper's blocked form: the same numbers, far less memory traffic).

Row order: natural (K order; each block of ``block_size`` rows gets its scale and zero point from the already
error-updated weights when the block starts, exactly as :func:`~.blockwise.quantize_blockwise` computes them), or
with ``act_order`` the rows with the largest ``H[k, k]`` first (the paper's act-order).  MatMulNBits dequantizes
block by block in K order (its ``g_idx`` input is deprecated), so under act-order each block's scale and zero point
are fixed up front from the original weights ("static groups") and only the rounding follows the permuted order.
Either way the result packs into the same ``MatMulNBits`` layout.
"""

from __future__ import annotations

import numpy as np

from .blockwise import BlockQuant, block_params, levels, pack_codes

DAMP = 0.01
LAZY = 128  # rows per lazy update batch


def gptq_quantize(w: np.ndarray, gram: np.ndarray, count: int, block_size: int = 32, *, symmetric: bool = False,
                  bits: int = 4, damp: float = DAMP, act_order: bool = False, clip: bool = False) -> BlockQuant:
    """``w`` [K, N]; ``gram`` = X^T X over ``count`` input rows X [count, K].  ``clip``: each block's range is
    searched (:func:`~.blockwise.block_params`), its rows' errors weighted by ``H[k, k]``."""
    w = np.array(w, np.float64)
    k, n = w.shape
    h = 2.0 * np.asarray(gram, np.float64) / max(count, 1)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(k)
    kb = -(-k // block_size)
    imp = np.zeros(kb * block_size)
    imp[:k] = np.diag(h)
    scales = np.ones((n, kb), np.float32)
    zps = np.zeros((n, kb))
    fixed = np.zeros(kb, bool)
    if act_order:
        order = np.argsort(-np.diag(h), kind="stable")
        padded = np.zeros((kb * block_size, n))
        padded[:k] = w
        scales[:], zps[:] = block_params(padded.reshape(kb, block_size, n).transpose(2, 0, 1), symmetric, bits,
                                         clip=clip, importance=imp.reshape(kb, block_size))
        fixed[:] = True
    else:
        order = np.arange(k)
    wp, hp = w[order], h[np.ix_(order, order)]
    hinv = np.linalg.cholesky(np.linalg.inv(hp)).T  # upper factor of H^-1 (permuted)
    block_of = order // block_size
    codes = np.zeros((n, kb * block_size), np.uint8)
    top = levels(bits)
    for lo in range(0, k, LAZY):
        hi = min(lo + LAZY, k)
        err = np.zeros((hi - lo, n))
        for r in range(lo, hi):
            b = block_of[r]
            if not fixed[b]:  # natural order: the block starts here, its rows are wp[r:r + block_size]
                block = np.zeros((block_size, n))
                rows = wp[r:min(r + block_size, k)]
                block[:len(rows)] = rows
                scales[:, b], zps[:, b] = block_params(block.T, symmetric, bits, clip=clip,
                                                       importance=imp[r:r + block_size])
                fixed[b] = True
            scale, zp = scales[:, b].astype(np.float64), zps[:, b]
            q = np.clip(np.round(wp[r] / scale) + zp, 0, top)
            codes[:, order[r]] = q
            e = (wp[r] - (q - zp) * scale) / hinv[r, r]
            wp[r + 1:hi] -= np.outer(hinv[r, r + 1:hi], e)
            err[r - lo] = e
        wp[hi:] -= hinv[lo:hi, hi:].T @ err
    return pack_codes(codes.reshape(n, kb, block_size), scales, zps, k, block_size, symmetric, bits)
