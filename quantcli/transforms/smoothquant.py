"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models").

A layer ``Y = X W`` (X: activations [..., C], W: [C, N]) computes the same with ``X' = X / s`` and
``W' = diag(s) W`` for any per-input-channel ``s > 0``.  Transformer activations carry a few outlier channels,
which one per-tensor activation scale cannot resolve next to the rest; weights are quantized per output channel,
so moving part of each input channel's range into the weight's row evens X at little cost to W.  With
migration strength ``alpha``:

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)      (max|W_j| over every layer that reads X)

``alpha`` is searched per group of layers sharing one input (attention's Q, K and V read the same tensor), on
calibration rows of X: every candidate of :data:`ALPHAS` and "not smoothed" (s = 1) is scored by the relative
output error of the quantized layers, ``sum_l ||Q(X/s) Q(diag(s) W_l) - X W_l||^2 / ||X W_l||^2``, with
activations quantized per tensor over the range X/s has on all the calibration data (from per-channel min / max)
and weights per output channel, as convert does.  :func:`decide` states when ``auto`` smooths a group.

Where ``1/s`` goes, so that the model computes the same in FP32 (tested with ONNX Runtime):

* into the producer of X when X feeds only these layers: a LayerNormalization's scale and bias, a decomposed
  LayerNorm's final Mul / Add constants, a bias Add after a MatMul/Gemm, or a MatMul/Gemm's output columns;
* otherwise into an explicit ``Mul(X, 1/s)`` in front of the layers, a float elementwise op in ONNX Runtime
  (a post-LN transformer's LayerNorm output is also its residual stream, which must not change).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx

from ..calibration.requests import Stat, StatRequest
from ..quantize import params as qp
from .graph import Event, EventKind, GraphIndex, PassResult, attr, set_initializer, unique_name
from .layout import layout

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# auto smooths a group when its unsmoothed quantized output error is worth lowering at all ...
MIN_ERROR = 1e-4     # relative MSE (output SQNR 40 dB): below it a layer is far more accurate than the INT8 model
                     # around it (the samples' CNN / MLP heads: 1.5e-6..5.5e-6; MiniLM's layers: 1e-4..4e-3)
# ... and its best candidate leaves at most this share of that error:
KEEP_FOLDED = 0.95   # 1/s folded into the producer: free at run time, so a 5% lower error is enough
KEEP_MUL = 0.75      # an explicit Mul costs a float pass over X at run time: it must remove a quarter of the error
SCALE_LIMITS = (1e-5, 1e5)


@dataclasses.dataclass
class Group:
    """Layers (MatMul/Gemm with a constant 2-D weight) reading the activation ``tensor`` as their input A."""

    tensor: str
    layers: list[onnx.NodeProto]
    fold: list[tuple[str, int]] | None  # (initializer, axis) to divide by s, or None: an explicit Mul
    producer: str = ""                   # what 1/s is folded into (node name), for the report

    def weights(self, idx: GraphIndex) -> list[np.ndarray]:
        """Each layer's weight oriented [C, N] (input channels first)."""
        out = []
        for n in self.layers:
            w = idx.const(n.input[1]).astype(np.float64)
            out.append(w if layout(n).in_axis == 0 else w.T)
        return out


def find_groups(model: onnx.ModelProto) -> tuple[list[Group], list[tuple[str, str]]]:
    """Every activation read by MatMul/Gemm layers with constant weights, and the layers skipped (with why)."""
    g = model.graph
    idx = GraphIndex(g)
    uses = {name: len(idx.consumers.get(name, [])) for name in idx.initializers}
    readers: dict[str, list[onnx.NodeProto]] = {}
    skipped = []
    for node in g.node:
        why = _layer_reason(node, idx, uses)
        if why == "":
            readers.setdefault(node.input[0], []).append(node)
        elif why:
            skipped.append((node.name, why))
    groups = []
    for x, layers in readers.items():
        channels = {idx.const(n.input[1]).shape[layout(n).in_axis] for n in layers}
        if len(channels) != 1:
            skipped += [(n.name, f"layers reading '{x}' disagree on its channel count") for n in layers]
            continue
        c = channels.pop()
        exclusive = x not in idx.graph_outputs and all(n in layers for n in idx.consumers.get(x, []))
        fold = _fold_targets(idx, x, c, uses) if exclusive else None
        producer = idx.producer[x].name if fold else ""
        groups.append(Group(x, layers, fold, producer))
    return groups, skipped


def _layer_reason(node: onnx.NodeProto, idx: GraphIndex, uses: dict) -> str | None:
    """'' for a layer SmoothQuant can rescale, a reason for one it cannot, None for other nodes."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    w = idx.const(node.input[1])
    if w is None or node.input[0] in idx.initializers:
        return None  # two activations (attention) or a constant input: not a weighted layer
    if w.ndim != 2 or w.dtype != np.float32:
        return "weight is not a 2-D float32 matrix"
    if node.op_type == "Gemm" and (attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0):
        return "Gemm with transA or alpha"
    if uses.get(node.input[1], 0) > 1:
        return "weight shared with other nodes"
    return ""


def _fold_targets(idx: GraphIndex, x: str, c: int, uses: dict) -> list[tuple[str, int]] | None:
    """Constants of X's producer whose division by s (along ``axis``) divides X by s, or None."""
    node = idx.producer.get(x)
    if node is None:
        return None
    if node.op_type == "LayerNormalization":
        names = [n for n in node.input[1:3] if n]
        ok = attr(node, "axis", -1) in (-1,) and all(_vector(idx, n, c, uses) for n in names)
        return [(n, -1) for n in names] if ok else None
    if node.op_type in ("Mul", "Add"):
        consts = [i for i in node.input[:2] if idx.const(i) is not None]
        if len(consts) != 1 or not _vector(idx, consts[0], c, uses):
            return None
        if node.op_type == "Mul":
            return [(consts[0], -1)]
        other = next(i for i in node.input[:2] if i != consts[0])
        if idx.single_consumer(other) is not node:
            return None
        inner = _fold_targets(idx, other, c, uses)
        return None if inner is None else inner + [(consts[0], -1)]
    lay = layout(node) if node.op_type in ("MatMul", "Gemm") else None
    if lay is None or _layer_reason(node, idx, uses) != "" or idx.const(node.input[1]).shape[lay.out_axis] != c:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not _vector(idx, bias, c, uses):
        return None
    return [(node.input[1], lay.out_axis)] + ([(bias, -1)] if bias else [])


def _vector(idx: GraphIndex, name: str, c: int, uses: dict) -> bool:
    """A float32 constant used once that broadcasts along the last axis as [C] (or a scalar)."""
    v = idx.const(name)
    return (v is not None and uses.get(name, 0) == 1 and v.dtype == np.float32
            and (v.size == 1 or (v.size == c and v.shape[-1] == c)))


def requests(groups: list[Group], rows: int = 512) -> list[StatRequest]:
    """What the search needs of the statistics pass, per group input: per-channel min and max and a row sample."""
    return [StatRequest(gr.tensor, stat, axis=-1, limit=rows) for gr in groups
            for stat in (Stat.CHANNEL_MIN, Stat.CHANNEL_MAX, Stat.ROWS)]


def migration_scales(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha); 1 where either is 0; clipped to :data:`SCALE_LIMITS`."""
    a, w = np.asarray(act_absmax, np.float64), np.asarray(w_absmax, np.float64)
    s = np.ones_like(a)
    ok = (a > 0) & (w > 0)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *SCALE_LIMITS)


def output_error(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, weights: list[np.ndarray], s: np.ndarray, *,
                 reduce_range: bool = False, symmetric: bool = False, refs: list[np.ndarray] | None = None) -> float:
    """sum over layers of ||Q(X/s) Q(diag(s) W) - X W||^2 / ||X W||^2 on ``rows`` of X (float32 products; ``refs``:
    the X W already computed); X/s is quantized per tensor over [min_j lo_j/s_j, max_j hi_j/s_j] (its range on
    all the data), weights per output channel."""
    x = rows / s
    p = qp.activation_params(float(np.min(lo / s)), float(np.max(hi / s)), symmetric=symmetric)
    xq = qp.dequantize(qp.quantize(x, p), p)
    err = 0.0
    for w, ref in zip(weights, refs if refs is not None else [rows @ w for w in weights]):
        ws = w * s[:, None]
        wp = qp.weight_params(ws, axis=1, reduce_range=reduce_range)
        wq = qp.dequantize(qp.quantize_weight(ws, wp, reduce_range=reduce_range), wp)
        err += float(np.sum((xq @ wq - ref) ** 2, dtype=np.float64) / max(np.sum(ref ** 2, dtype=np.float64), 1e-30))
    return err


@dataclasses.dataclass
class Choice:
    """The search's outcome for one group: ``alpha`` None = not smoothed; errors per candidate."""

    alpha: float | None
    scales: np.ndarray
    errors: dict[float | None, float]


def search(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, weights: list[np.ndarray], *,
           reduce_range: bool = False, symmetric: bool = False) -> Choice:
    """Score "not smoothed" and every alpha of :data:`ALPHAS`; the best alpha and its scales."""
    act = np.maximum(np.abs(lo), np.abs(hi))
    w_absmax = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
    candidates = {None: np.ones(len(act))} | {a: migration_scales(act, w_absmax, a) for a in ALPHAS}
    rows = np.asarray(rows, np.float32)
    refs = [rows @ w.astype(np.float32) for w in weights]
    errors = {a: output_error(rows, lo, hi, weights, s, reduce_range=reduce_range, symmetric=symmetric, refs=refs)
              for a, s in candidates.items()}
    best = min(ALPHAS, key=lambda a: (errors[a], a))
    return Choice(best, candidates[best], errors)


def decide(choice: Choice, folded: bool, mode: str) -> Choice:
    """``on`` smooths with the best alpha; ``auto`` only where the unsmoothed quantized output error is at least
    :data:`MIN_ERROR` and the best alpha lowers it to at most :data:`KEEP_FOLDED` of that where 1/s folds into the
    producer, :data:`KEEP_MUL` where it needs an explicit Mul (which costs time)."""
    if mode == "on":
        return choice
    keep = KEEP_FOLDED if folded else KEEP_MUL
    if choice.errors[None] >= MIN_ERROR and choice.errors[choice.alpha] <= keep * choice.errors[None]:
        return choice
    return Choice(None, np.ones_like(choice.scales), choice.errors)


def apply_scales(model: onnx.ModelProto, scales: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with each group input ``tensor`` divided by ``scales[tensor]`` (folded or by a Mul) and its
    layers' weight rows multiplied by it; a copy."""
    model = copy.deepcopy(model)
    g = model.graph
    groups = {gr.tensor: gr for gr in find_groups(model)[0]}
    idx = GraphIndex(g)
    taken = set(idx.initializers) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for x in sorted(scales):
        gr, s = groups.get(x), np.asarray(scales[x], np.float64)
        if gr is None:
            raise ValueError(f"'{x}' is not the input of layers SmoothQuant can rescale in this model")
        c = idx.const(gr.layers[0].input[1]).shape[layout(gr.layers[0]).in_axis]
        if s.shape != (c,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"the scales of '{x}' are not {c} positive finite numbers")
        for n in gr.layers:
            w = idx.const(n.input[1])
            set_initializer(g, n.input[1], layout(n).scale_in(w.astype(np.float64), s).astype(np.float32))
        if gr.fold is None:
            _insert_mul(g, gr, s, taken)
            continue
        for name, axis in gr.fold:
            set_initializer(g, name, _divided(idx.const(name), s, axis))
    return model


def _divided(v: np.ndarray, s: np.ndarray, axis: int) -> np.ndarray:
    v = v.astype(np.float64)
    if v.size == 1:
        v = np.full(len(s), float(v.reshape(())))
    shape = [1] * v.ndim
    shape[axis] = -1
    return (v / s.reshape(shape)).astype(np.float32)


def _insert_mul(g: onnx.GraphProto, gr: Group, s: np.ndarray, taken: set[str]) -> None:
    """X -> Mul(X, 1/s) -> the group's layers, placed right before the first of them (topological order)."""
    const = unique_name(f"{gr.tensor}.smooth_scale", taken)
    out = unique_name(f"{gr.tensor}.smoothed", taken)
    set_initializer(g, const, (1.0 / s).astype(np.float32))
    names = {n.name for n in gr.layers}
    first = next(i for i, n in enumerate(g.node) if n.name in names)
    g.node.insert(first, onnx.helper.make_node("Mul", [gr.tensor, const], [out],
                                               name=unique_name(f"{gr.layers[0].name}/smooth", taken)))
    for n in g.node:
        if n.name in names:
            n.input[0] = out


def event(gr: Group, choice: Choice, lo: np.ndarray, hi: np.ndarray) -> Event:
    """The report line for one group."""
    layers = ", ".join(n.name for n in gr.layers)
    err0 = choice.errors[None]
    if choice.alpha is None:
        best = min(ALPHAS, key=lambda a: (choice.errors[a], a))
        if err0 < MIN_ERROR:
            why = f"quantized output error {err0:.3g} is below {MIN_ERROR:g} already"
        else:
            need = (KEEP_FOLDED if gr.fold else KEEP_MUL)
            why = (f"the best alpha, {best:g}, changes the quantized output error {err0:.3g} -> "
                   f"{choice.errors[best]:.3g}; auto needs {100 * (1 - need):.0f}% less"
                   f"{'' if gr.fold else ' for an explicit Mul'}")
        return Event(EventKind.SKIPPED, layers, f"not smoothed ({why})")
    act = np.maximum(np.abs(lo), np.abs(hi))
    spread0, spread1 = _spread(act), _spread(act / choice.scales)
    where = f"folded into {gr.producer}" if gr.fold else "explicit Mul"
    err1 = choice.errors[choice.alpha]
    return Event(EventKind.SMOOTHED, gr.layers[0].name,
                 f"{layers}: smoothed, alpha {choice.alpha:g} ({where}), input channel spread x{spread0:.1f} -> "
                 f"x{spread1:.1f}, quantized output error {err0:.3g} -> {err1:.3g}", choice.alpha)


def _spread(r: np.ndarray) -> float:
    pos = r[r > 0]
    return float(pos.max() / pos.min()) if pos.size else 1.0


def choose(model: onnx.ModelProto, groups: list[Group], skipped: list[tuple[str, str]], stats: dict, mode: str, *,
           reduce_range: bool = False, symmetric: bool = False) -> PassResult:
    """Search and decide every group on ``stats`` ((tensor, Stat) -> array, from :func:`requests`), apply the
    scales; the result's data records them (and each group's report line) for :func:`replay`."""
    idx = GraphIndex(model.graph)
    scales, record, events = {}, {}, []
    for gr in groups:
        lo, hi, rows = (stats[(gr.tensor, st)] for st in (Stat.CHANNEL_MIN, Stat.CHANNEL_MAX, Stat.ROWS))
        choice = search(rows, lo, hi, gr.weights(idx), reduce_range=reduce_range, symmetric=symmetric)
        choice = decide(choice, gr.fold is not None, mode)
        ev = event(gr, choice, lo, hi)
        events.append(ev)
        record[gr.tensor] = {"alpha": choice.alpha, "event": [ev.kind.value, ev.node, ev.detail],
                             "scales": None if choice.alpha is None else [float(v) for v in choice.scales]}
        if choice.alpha is not None:
            scales[gr.tensor] = choice.scales
    events += [Event(EventKind.SKIPPED, n, why) for n, why in skipped]
    return PassResult(apply_scales(model, scales), events, {"groups": record})


def replay(model: onnx.ModelProto, data: dict) -> PassResult:
    """The scales calibrate chose (its pass data, from the calibration artifact), applied again: the same model
    and report lines without the data."""
    groups = data.get("groups", {})
    scales = {x: np.asarray(g["scales"], np.float64) for x, g in groups.items() if g.get("scales") is not None}
    events = [Event(EventKind(g["event"][0]), g["event"][1], g["event"][2], g.get("alpha")) for g in groups.values()]
    return PassResult(apply_scales(model, scales), events, {"groups": groups})
