"""HardSwish after a DequantizeLinear, rewritten for ONNX Runtime's integer Add and Mul.

ONNX Runtime has no integer HardSwish on CPU.  Between two QLinearConvs a HardSwish runs as DequantizeLinear,
HardSigmoid, Mul and QuantizeLinear in float (Paddle2ONNX's ``x * Clip(x + 3, 0, 6) / 6`` as six float ops):
PP-LCNet's 4-way orientation classifier (doc-orientation in the zoo; AMD EPYC with AVX2 only, 1 thread, batch
1) spent 2.9 of its 6.7 ms there, and was x1.13-1.16 of FP32's latency at 2 threads.

A HardSwish is ``x * g(x)`` with the gate ``g(x) = clip(alpha * x + beta, 0, M)`` (1/6, 1/2, 1), and its input
is one of 256 quantization levels, so the gate can be computed by integer ops ONNX Runtime fuses: ``alpha * x``
is the same 8-bit tensor dequantized with ``alpha`` times its scale, ``+ beta`` a QLinearAdd with a quantized
constant, and the clip is what QuantizeLinear's saturation does on a [0, M] grid of 256 levels; ``x * g`` is then
a QLinearMul into the QuantizeLinear that was already there.  The gate's steps of M / 255 can put the output one
level off the float result on some input levels, so the rewrite is made only where a gate near the HardSwish's
(:func:`fit_gate`) gives every one of the 256 input levels the output level the float ops give: it changes no
value, only where ONNX Runtime computes it.  On an AMD EPYC with AVX2 only, 2 threads, batch 1, latency as a
ratio to FP32 before -> after, metric unchanged: doc-orientation x1.24 -> x0.97 (9 of 24 HardSwishes exact),
layout-picodet x0.93 -> x0.71 (32 of 68), ppocr-cls x1.95 -> x1.62 (1 of 9).

The same rewrite of a squeeze-excite gate ``x * HardSigmoid(s)`` is not made: the gate then is the output's only
scale, and its values sit in a small part of [0, M] (ppocr-cls: 0.11-0.33 of [0, 1]), so its step was up to 0.9%
of it; output SQNR 24.8 -> 24.3 dB for that one gate.

:func:`write_hardswishes` finds a HardSwish by what it computes, not by how it is spelled: the elementwise ops that
read a dequantized tensor alone (:func:`~quantcli.quantize.flat.reader_function`) are evaluated with ONNX Runtime
on that tensor's 256 levels, and a result equal to ``x * g(x)`` for such a gate (to 1e-4 of it) is rewritten
where it goes to one QuantizeLinear and an exact integer gate exists.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..transforms.graph import GraphIndex, remove_unused_initializers, unique_name
from .flat import evaluate_function, reader_function

TOLERANCE = 1e-4  # largest difference from the fitted gate, relative to its upper value M
# uint8 only: ONNX Runtime (1.32, x86-64) fuses DequantizeLinear -> Add / Mul -> QuantizeLinear into QLinearAdd /
# QLinearMul for uint8 but leaves int8 (symmetric activations) as float ops, which would make the rewrite slower
_LEVELS = {TensorProto.UINT8: (0, 255, np.uint8)}


def write_hardswishes(model: onnx.ModelProto, cache: dict | None = None) -> tuple[int, int]:
    """Rewrite, in place, each HardSwish after a DequantizeLinear whose output is quantized into ONNX Runtime's
    integer Add and Mul where that gives the same output level on every input level (the module's docstring);
    returns how many were rewritten and how many were left in float because no integer gate did.

    ``cache`` (one per convert) keeps each verdict by the ops and the two quantizations: every build of a
    convert (--max-drop's candidates) meets the same HardSwishes, and each verdict costs an ONNX Runtime session
    (layout-picodet: 1.0 s for its 68 per build)."""
    g = model.graph
    idx = GraphIndex(g)
    taken = {t for n in g.node for t in (*n.input, *n.output, n.name)} | set(idx.initializers)
    gone: set[int] = set()
    at: dict[int, list[onnx.NodeProto]] = {}
    inits: list[onnx.TensorProto] = []
    count = inexact = 0
    cache = {} if cache is None else cache
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        levels = _levels(idx, dq)
        if levels is None:
            continue
        found = reader_function(idx, dq.output[0])
        if found is None:
            continue
        nodes, result = found
        if not any(n.op_type in ("HardSwish", "Mul") for n in nodes):  # no product: no session for a Relu
            continue
        elem, scale, x = levels
        out = _quantized(idx, result, elem)
        if out is None:
            continue
        key = (tuple(n.SerializeToString() for n in nodes), dq.input[0], scale, float(x[0]), out)
        if key not in cache:
            cache[key] = _verdict(model, nodes, dq.output[0], result, x, out, elem)
        gate = cache[key]
        if gate == "inexact":
            inexact += 1
        if not isinstance(gate, tuple):
            continue
        gone |= {id(n) for n in nodes}
        at[id(nodes[0])] = _swish_nodes(dq, scale, gate, elem, result, taken, inits)
        count += 1
    if not count:
        return 0, inexact
    kept: list[onnx.NodeProto] = []
    for n in g.node:
        kept += at.get(id(n), [])
        if id(n) not in gone:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(inits)
    remove_unused_initializers(g)  # the replaced ops' constants (3, 6, 1/6, HardSigmoid has none)
    return count, inexact


def _verdict(model: onnx.ModelProto, nodes: list[onnx.NodeProto], tensor: str, result: str, x: np.ndarray,
             out: tuple[float, int], elem: int) -> tuple[float, float, float] | str | None:
    """The exact integer gate for the ops ``nodes`` reading ``tensor`` on its levels ``x`` (:func:`fit_gate`),
    "inexact" if they compute a HardSwish but no integer gate is exact, None if they compute none."""
    y = evaluate_function(model, nodes, tensor, result, x)
    gate = None if y is None else _swish_gate(x, y)
    if gate is None:
        return None
    return fit_gate(x, y, gate, out, elem) or "inexact"


def _per_tensor(idx: GraphIndex, node: onnx.NodeProto) -> tuple[int, float, int] | None:
    """(element type, scale, zero point) of a per-tensor 8-bit QuantizeLinear or DequantizeLinear with constant
    parameters of a type in _LEVELS; None otherwise."""
    if len(node.input) < 3:
        return None
    zp = idx.initializers.get(node.input[2])
    scale = idx.scalar(node.input[1])
    if zp is None or zp.data_type not in _LEVELS or int(np.prod(zp.dims)) != 1 or not scale or scale <= 0:
        return None
    return zp.data_type, scale, int(numpy_helper.to_array(zp).reshape(-1)[0])


def _levels(idx: GraphIndex, dq: onnx.NodeProto) -> tuple[int, float, np.ndarray] | None:
    """(element type, scale, the float32 values of its 256 levels) of a per-tensor 8-bit DequantizeLinear of an
    activation (not of an initializer); None otherwise."""
    params = None if dq.input[0] in idx.initializers else _per_tensor(idx, dq)
    if params is None:
        return None
    elem, scale, z = params
    lo, hi, _ = _LEVELS[elem]
    return elem, scale, ((np.arange(lo, hi + 1, dtype=np.float64) - z) * scale).astype(np.float32)


def _swish_gate(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """(alpha, beta, M) where y = x * clip(alpha * x + beta, 0, M) on these levels (to TOLERANCE), else None."""
    nz = x != 0
    if not np.all(np.abs(y[~nz]) <= 1e-12):
        return None
    gate = _clipped_line(x[nz], y[nz].astype(np.float64) / x[nz])
    if gate is None or not np.all(np.abs(x * _clip(x, gate) - y) <= TOLERANCE * gate[2] * np.abs(x) + 1e-12):
        return None
    return gate


def _clipped_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """(alpha, beta, M) with y = clip(alpha * x + beta, 0, M) on every point, alpha > 0 and beta != 0; None if
    no such line holds (or the line cannot be found: fewer than two points strictly inside (0, M))."""
    y = np.asarray(y, np.float64)
    m = float(y.max()) if y.size else 0.0
    if not m > 0 or y.min() < -TOLERANCE * m:
        return None
    inside = (y > TOLERANCE * m) & (y < m * (1 - TOLERANCE))
    if np.count_nonzero(inside) < 2 or np.ptp(x[inside]) == 0:
        return None
    alpha, beta = np.polyfit(np.asarray(x[inside], np.float64), y[inside], 1)
    gate = (float(alpha), float(beta), m)
    if not alpha > 0 or abs(beta) <= TOLERANCE * m:  # a Relu or a plain Clip: ONNX Runtime drops those itself
        return None
    return gate if np.all(np.abs(_clip(x, gate) - y) <= TOLERANCE * m) else None


def _clip(x: np.ndarray, gate: tuple[float, float, float]) -> np.ndarray:
    alpha, beta, m = gate
    return np.clip(alpha * np.asarray(x, np.float64) + beta, 0.0, m)


def _quantized(idx: GraphIndex, t: str, elem: int) -> tuple[float, int] | None:
    """(scale, zero point) of the one per-tensor QuantizeLinear of element type ``elem`` that ``t`` goes to
    (QLinearMul's inputs and output share it); None if ``t`` goes elsewhere."""
    q = idx.single_consumer(t)
    params = _per_tensor(idx, q) if q is not None and q.op_type == "QuantizeLinear" else None
    if params is None or params[0] != elem:
        return None
    return params[1], params[2]


def fit_gate(x: np.ndarray, y: np.ndarray, gate: tuple[float, float, float], out: tuple[float, int],
             elem: int) -> tuple[float, float, float] | None:
    """A gate (alpha', beta', M) whose integer version gives, on every input level ``x``, the output level the
    float ops give (``y`` quantized with ``out``'s scale and zero point); None if there is none near ``gate``.

    The gate's steps of M / 255 put x * gate one output level off the float result on a few input levels with
    the fitted line.  Few, but not harmless: PP-PicoDet (layout-picodet in the zoo) lost 5.5 pt of F1 against
    FP32 (84.9 -> 79.4) with 68 such rewrites, and still 3.4 pt with the 10 of them whose changed levels held
    under 0.1% of the values.  alpha' and beta' are free (a scale and a constant in the rewrite), so they are
    searched within 5% of alpha and half a gate step of beta, and only an exact one is used: the rewrite then
    changes no output, only where ONNX Runtime computes it (PicoDet: 32 of 68 exact, F1 unchanged)."""
    alpha, beta, m = gate
    lo, hi, _ = _LEVELS[elem]
    s_out, z_out = out
    xs = np.asarray(x, np.float64)
    target = np.clip(np.rint(np.asarray(y, np.float64) / s_out) + z_out, lo, hi)
    step = m / (hi - lo)
    alphas = alpha * (1 + np.linspace(-0.05, 0.05, 101))[:, None, None]
    betas = beta + step * np.linspace(-0.5, 0.5, 41)[None, :, None]
    g_q = np.clip(np.rint((alphas * xs + betas) / step), 0, hi - lo) * step
    exact = np.all(np.clip(np.rint(xs * g_q / s_out) + z_out, lo, hi) == target, axis=-1)
    if not exact.any():
        return None
    near = np.abs(alphas[..., 0] / alpha - 1) + np.abs(betas[..., 0] - beta) / step  # the nearest exact one
    i, j = np.unravel_index(np.argmin(np.where(exact, near, np.inf)), exact.shape)
    return float(alphas[i, 0, 0]), float(betas[0, j, 0]), m


def _swish_nodes(dq: onnx.NodeProto, scale: float, gate: tuple[float, float, float], elem: int, result: str,
                 taken: set[str], inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The ops computing the gate from ``dq``'s integer input (``scale``: its scale), then x * gate into
    ``result``."""
    alpha, beta, m = gate
    lo, hi, dtype = _LEVELS[elem]
    base = dq.output[0]

    def name(suffix: str) -> str:
        return unique_name(f"{base}_{suffix}", taken)

    def init(suffix: str, value, np_type) -> str:
        n = name(suffix)
        inits.append(numpy_helper.from_array(np.array(value, np_type), n))
        return n

    ax = name("gate_ax")       # alpha * x: the same integers, alpha times the scale
    b = name("gate_beta")      # beta: the extreme level, 255 steps of |beta| / 255 from the zero point
    pre = name("gate_linear")  # alpha * x + beta
    g_q = name("gate_quantized")
    gate_out = name("gate")
    g_s, g_z = init("gate_scale", m / 255.0, np.float32), init("gate_zero_point", lo, dtype)
    return [
        helper.make_node("DequantizeLinear", [dq.input[0], init("gate_alpha_scale", alpha * scale, np.float32),
                                              dq.input[2]], [ax], name=name("gate_alpha_dq")),
        helper.make_node("DequantizeLinear", [init("gate_beta_quantized", hi if beta > 0 else lo, dtype),
                                              init("gate_beta_scale", abs(beta) / 255.0, np.float32),
                                              init("gate_beta_zero_point", lo if beta > 0 else hi, dtype)],
                         [b], name=name("gate_beta_dq")),
        helper.make_node("Add", [ax, b], [pre], name=name("gate_add")),
        # saturation to the [0, M] grid is the clip
        helper.make_node("QuantizeLinear", [pre, g_s, g_z], [g_q], name=name("gate_q")),
        helper.make_node("DequantizeLinear", [g_q, g_s, g_z], [gate_out], name=name("gate_dq")),
        helper.make_node("Mul", [dq.output[0], gate_out], [result], name=name("hardswish_mul")),
    ]
