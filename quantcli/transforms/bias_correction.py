"""Bias correction: remove the systematic output shift that weight quantization introduces.

A quantized layer computes ``y_q = W_q x + b``; its expected error per output channel is
``E[y_q - y] = (W_q - W) E[x]`` (analytic) or is measured on data (empirical).  Subtracting it from the bias
makes the quantized layer unbiased: ``b' = b - E[y_q - y]``.

* **analytic** (data-free): ``E[x]`` per input channel from the BatchNorm folded into the producing layer:
  its output is ~ N(beta, gamma^2) per channel, so after a Relu ``E[x] = mu Phi(mu/sigma) + sigma phi(mu/sigma)``
  (the mean of a rectified Gaussian), without one ``E[x] = beta``; ``E[x]`` is taken as constant over space.
* **empirical**: ``E[y_q - y]`` per channel measured on calibration data, layer by layer in graph order,
  each layer seeing the corrections of the layers before it (driven by :mod:`quantcli.quantize.empirical_bias`).

Layers: Conv (bias along axis 0), Gemm (1-D bias), MatMul followed by an Add of a constant bias.
A layer without a bias gets one.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from .. import external
from .graph import Event, EventKind, GraphIndex, attr, set_initializer, unique_name
from .layout import layout


def relu_gaussian_mean(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E[max(0, x)] for x ~ N(mu, sigma^2), per element."""
    mu = np.asarray(mu, np.float64)
    sigma = np.abs(np.asarray(sigma, np.float64))
    out = np.maximum(mu, 0.0)
    ok = sigma > 0
    z = mu[ok] / sigma[ok]
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in z]))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    out[ok] = mu[ok] * cdf + sigma[ok] * pdf
    return out


def analytic_shift(node: onnx.NodeProto, w: np.ndarray, wq: np.ndarray, mean_in: np.ndarray) -> np.ndarray:
    """(W_q - W) . E[x] per output channel, E[x] constant over space, for Conv / Gemm / MatMul weights."""
    d = np.asarray(wq, np.float64) - np.asarray(w, np.float64)
    if node.op_type == "Conv":
        group = attr(node, "group", 1)
        cout, cin_g = d.shape[:2]
        per = d.reshape(cout, cin_g, -1).sum(axis=2)                      # [Cout, Cin/g]
        m = np.asarray(mean_in, np.float64).reshape(group, cin_g)          # input channels by group
        gidx = np.arange(cout) // (cout // group)
        return np.einsum("oc,oc->o", per, m[gidx])
    lay = layout(node)  # Gemm / MatMul: a 2-D weight, rows of the product along the output axis
    return np.moveaxis(d, lay.out_axis, 0) @ mean_in


def bias_tensor(model: onnx.ModelProto, node: onnx.NodeProto, idx: GraphIndex) -> tuple[str | None, bool]:
    """Name of the layer's bias initializer and whether it is an Add after a MatMul (None if it has none)."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2] and node.input[2] in idx.initializers:
            return node.input[2], False
        return None, False
    nxt = idx.single_consumer(node.output[0])
    if nxt is not None and nxt.op_type == "Add":
        for i in nxt.input:
            if i in idx.initializers:
                return i, True
    return None, False


def shift_bias(model: onnx.ModelProto, node_name: str, shift: np.ndarray) -> str:
    """b -= shift for the layer ``node_name`` (in place); adds a zero bias to a Conv/Gemm that has none."""
    g = model.graph
    idx = GraphIndex(g)
    node = next(n for n in g.node if n.name == node_name)
    name, _ = bias_tensor(model, node, idx)
    if name is None:
        if node.op_type == "MatMul":
            raise ValueError(f"{node_name}: MatMul without a bias Add")
        name = unique_name(f"{node_name}.bias", {t.name for t in g.initializer} | {o for n in g.node for o in n.output})
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        b = np.zeros(len(shift), np.float32)
    else:
        b = external.array(idx.initializers[name])
    new = (b.astype(np.float64) - np.broadcast_to(shift, b.shape[-1:])).astype(np.float32).reshape(b.shape)
    set_initializer(g, name, new)
    return name


def add_zero_biases(model: onnx.ModelProto) -> list[str]:
    """Give every Conv / Gemm without a bias a zero bias (in place), so a correction has somewhere to go."""
    g = model.graph
    idx = GraphIndex(g)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    added = []
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm") or (len(node.input) > 2 and node.input[2]):
            continue
        w = idx.const(node.input[1]) if len(node.input) > 1 else None
        if w is None or w.ndim < 2:
            continue
        cout = layout(node).channels(w.shape)
        name = unique_name(f"{node.name}.bias", taken)
        set_initializer(g, name, np.zeros(cout, np.float32))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        added.append(node.name)
    return added


def analytic_correction(model: onnx.ModelProto, layers: dict[str, int | None], bn_stats: dict, cle_scales: dict,
                        quantize_weight) -> list[Event]:
    """Data-free correction of ``layers`` (name -> per-channel weight axis or None) in place.

    ``bn_stats``: layer -> (beta, gamma) of its folded BatchNorm output; ``cle_scales``: layer -> s by which CLE
    divided its output channels; ``quantize_weight(w, axis)`` returns the dequantized weight convert will use.
    """
    g = model.graph
    idx = GraphIndex(g)
    report = []
    for name, axis in layers.items():
        node = next(n for n in g.node if n.name == name)
        src = idx.producer.get(node.input[0])
        relu = src is not None and src.op_type == "Relu"
        if relu:
            src = idx.producer.get(src.input[0])
        if src is None or src.name not in bn_stats:
            report.append(Event(EventKind.SKIPPED, name, "skipped (its input has no BatchNorm statistics)"))
            continue
        beta, gamma = bn_stats[src.name]
        s = cle_scales.get(src.name, 1.0)
        mu, sigma = beta / s, gamma / s
        mean_in = relu_gaussian_mean(mu, sigma) if relu else mu
        w = idx.const(node.input[1])
        if w is None:
            continue
        shift = analytic_shift(node, w, quantize_weight(w, axis), mean_in)
        try:
            shift_bias(model, name, shift)
        except ValueError as exc:
            report.append(Event(EventKind.SKIPPED, name, f"skipped ({exc})"))
            continue
        idx = GraphIndex(g)
        top = float(np.max(np.abs(shift)))
        report.append(Event(EventKind.BIAS_SHIFTED, name, f"{name}: bias shifted by up to {top:.3g} (analytic)", top))
    return report
