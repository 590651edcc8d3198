"""Activation-aware weight scaling for 4-bit blocks (after AWQ, Lin et al. 2023), as a pure function.

Input channels that carry large activations matter more: scaling weight row k by ``s_k`` before rounding (and
the activation by ``1 / s_k``, an exact rewrite) gives those rows finer steps.  With ``a_k`` the RMS of input
channel k over the calibration data (``sqrt(diag(X^T X) / n)``), ``s = a ** alpha`` (normalised to a geometric
mean of 1) and ``alpha`` on a grid in [0, 1], the chosen ``alpha`` minimises the layers' output error on that
data, computed exactly from the Gram matrix: ``sum_n dW[:, n]^T (X^T X) dW[:, n]`` with ``dW = W - Q(s W) / s``.
``alpha = 0`` is plain round to nearest, so the search never does worse than it on the calibration data.
Layers reading the same input share one ``s`` (one Mul in front of all of them).
"""

from __future__ import annotations

import numpy as np

from .blockwise import quantize_blockwise

GRID = 20


def output_error(dw: np.ndarray, gram: np.ndarray) -> float:
    """||X dW||^2 summed over outputs, from G = X^T X."""
    return float(np.sum((gram @ dw) * dw))


def awq_scales(weights: list[np.ndarray], gram: np.ndarray, count: int, block_size: int, *, symmetric: bool = False,
               bits: int = 4, grid: int = GRID) -> tuple[np.ndarray, float, float, float]:
    """``weights``: the [K, N] weights of the layers sharing one input.  Returns (s [K], alpha, error with s,
    error of round to nearest)."""
    gram = np.asarray(gram, np.float64)
    rms = np.sqrt(np.maximum(np.diag(gram) / max(count, 1), 0.0))
    rms = np.where(rms > 0, rms, rms[rms > 0].min() if np.any(rms > 0) else 1.0)
    best = None
    rtn = None
    for alpha in np.linspace(0.0, 1.0, grid + 1):
        s = rms ** alpha
        s = s / np.exp(np.mean(np.log(s)))
        err = 0.0
        for w in weights:
            scaled = (w.astype(np.float64) * s[:, None]).astype(np.float32)
            deq = quantize_blockwise(scaled, block_size, symmetric=symmetric, bits=bits).dequantize().astype(np.float64)
            err += output_error(w - deq / s[:, None], gram)
        if alpha == 0.0:
            rtn = err
        if best is None or err < best[2]:
            best = (s, float(alpha), err)
    return best[0], best[1], best[2], rtn
