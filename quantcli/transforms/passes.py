"""Graph passes as objects, and preparation as a list of them.

A :class:`Pass` has a ``name``, declares what it needs from its :class:`PassContext` (:class:`Need`: the
quantization plan and ranges, calibration data, the preparation's results) and whether calibrate and
convert must both apply it (``agree``: it changes the activations whose ranges are measured, so an
artifact made without it does not fit a model made with it).  ``run(model, ctx)`` returns a
:class:`~quantcli.transforms.graph.PassResult`: the new model, typed per-node :class:`Event` s (folded,
equalized, bias shifted, skipped with a reason) and pass-specific data.

:func:`prepare` runs the preparation passes every calibrate and convert applies -- exporter clean-up, the
opset upgrade, BatchNorm folding and (if asked) cross-layer equalization -- and returns a :class:`Prepared`.
Which ``agree`` passes ran is recorded in the calibration artifact (:func:`agreed_passes`), and convert checks
its own list against it.  SmoothQuant needs calibration data: it is :data:`SMOOTHQUANT_PASS`, run after
the others by :meth:`Prepared.then` with the batches (calibrate) or the scales calibrate recorded (convert).
Bias correction runs on a quantization plan: :func:`bias_correction` returns its analytic or empirical pass.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Iterable

import onnx

from .graph import Event, EventKind, PassResult


class Need(str, enum.Enum):
    PLAN = "plan"                # the quantization plan, its ranges and Q/DQ options
    DATA = "data"                # calibration batches
    PREPARATION = "preparation"  # what preparation learned (folded BatchNorm statistics, CLE scales)


@dataclasses.dataclass
class PassContext:
    """What a pass may use beyond the model; a pass reads only what its ``needs`` declare."""

    plan: Any = None                                     # Need.PLAN: QuantPlan
    ranges: dict | None = None                           # Need.PLAN: tensor -> (lo, hi)
    qdq: Any = None                                      # Need.PLAN: QDQOptions
    layers: dict[str, int | None] = dataclasses.field(default_factory=dict)  # layer -> weight axis (plan)
    prepared: Prepared | None = None                     # Need.PREPARATION
    batches: Callable[[], Iterable[dict]] | None = None  # Need.DATA: calibration batches
    recorded: dict = dataclasses.field(default_factory=dict)  # pass name -> the data calibrate recorded for it
    smoothquant: str = "auto"                            # SmoothQuant: auto | on (which groups to smooth)
    on_layer: Callable[[int], None] | None = None        # progress, one call per layer done
    float_means: dict | None = None                      # Need.DATA: layer -> E[y] of the float model, shared


@dataclasses.dataclass(frozen=True)
class Pass:
    """A named graph pass: ``fn(model, ctx) -> PassResult``; ``summary(result)`` is its one-line note (or None)."""

    name: str
    fn: Callable[[onnx.ModelProto, PassContext], PassResult]
    summary: Callable[[PassResult], str | None] = lambda r: None
    agree: bool = False
    needs: frozenset[Need] = frozenset()

    def run(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PassResult:
        return self.fn(model, ctx or PassContext())


def _graph_only(fn: Callable[[onnx.ModelProto], PassResult]) -> Callable[[onnx.ModelProto, PassContext], PassResult]:
    """A pass function over the graph alone (it needs nothing from the context)."""
    return lambda model, ctx: fn(model)


@dataclasses.dataclass
class Prepared:
    """The model as calibrate and convert both see it, and what each preparation pass did."""

    model: onnx.ModelProto
    results: dict[str, PassResult]   # pass name -> its result (events, data; not its model), in the order run
    notes: list[str]

    def data(self, name: str) -> dict:
        """The pass-specific data of pass ``name`` (empty if it did not run)."""
        r = self.results.get(name)
        return r.data if r is not None else {}

    def events(self, *kinds: EventKind) -> list[Event]:
        return [e for r in self.results.values() for e in r.events if not kinds or e.kind in kinds]

    def then(self, p: Pass, ctx: PassContext) -> Prepared:
        """This preparation followed by pass ``p`` (a data-driven preparation pass such as SmoothQuant)."""
        r = p.run(self.model, ctx)
        line = p.summary(r)
        model, r.model = r.model, None
        return Prepared(model, {**self.results, p.name: r}, self.notes + ([line] if line else []))

    @property
    def agreed(self) -> list[str]:
        return [name for name in self.results if name in _AGREE]


def _count(what: str, kind: EventKind = EventKind.CHANGED) -> Callable[[PassResult], str | None]:
    def summary(r: PassResult) -> str | None:
        n = len([e for e in r.events if e.kind == kind])
        return what.format(n=n) if n else None
    return summary


def _preparation_passes() -> list[Pass]:
    from . import prepare as p
    from .equalize import equalize
    from .fold_batchnorm import fold_batchnorm
    from .opset import upgrade_opset

    g = _graph_only
    return [
        Pass("name-nodes", g(p.name_nodes), _count("{n} unnamed node(s) given names"), agree=True),
        Pass("constants-to-initializers", g(p.constants_to_initializers), p.constants_summary, agree=True),
        Pass("fold-constant-shapes", g(p.fold_constant_shapes),
             _count("{n} Reshape/Squeeze/Unsqueeze of constants folded into initializers"), agree=True),
        Pass("matmul-add-to-gemm", g(p.matmul_add_to_gemm), _count("{n} MatMul + bias Add pair(s) turned into Gemm"),
             agree=True),
        Pass("fold-bias-add", g(p.fold_bias_add), _count("{n} bias Add(s) folded into the preceding Conv/Gemm"),
             agree=True),
        Pass("gemm-bias-to-1d", g(p.gemm_bias_to_1d), _count("{n} Gemm bias(es) reshaped to 1-D"), agree=True),
        Pass("opset-13", g(upgrade_opset), lambda r: r.events[0].detail if r.events else None, agree=True),
        Pass("fold-batchnorm", g(fold_batchnorm),
             _count("{n} BatchNormalization node(s) folded into the preceding Conv/Gemm", EventKind.FOLDED),
             agree=True),
        Pass("cross-layer-equalization", g(equalize),
             lambda r: (f"cross-layer equalization: {len(r.changed)} pair(s) equalized, "
                        f"{len(r.skipped)} skipped"), agree=True),
    ]


def _smoothquant(model: onnx.ModelProto, ctx: PassContext) -> PassResult:
    """SmoothQuant (:mod:`.smoothquant`): the scales calibrate recorded, else searched per group on the
    calibration batches (per-channel min / max and a row sample from one statistics pass)."""
    from ..calibration.collect import collect_statistics
    from . import smoothquant as sq

    if SMOOTHQUANT in ctx.recorded:
        return sq.replay(model, ctx.recorded[SMOOTHQUANT])
    groups, skipped = sq.find_groups(model)
    reqs = sq.requests(groups)
    stats = {}
    if reqs:
        collected = collect_statistics(model, reqs, ctx.batches())
        stats = {(r.tensor, r.stat): obs.result() for r, obs in collected.channels.items()}
    return sq.choose(model, groups, skipped, stats, ctx.smoothquant, reduce_range=ctx.qdq.reduce_range,
                     symmetric=ctx.qdq.symmetric_activations)


def _smooth_summary(r: PassResult) -> str | None:
    n = len([e for e in r.events if e.kind == EventKind.SMOOTHED])
    total = len(r.data.get("groups", {}))
    return f"SmoothQuant: {n} of {total} layer input(s) smoothed (alpha searched per layer)" if total else None


SMOOTHQUANT = "smoothquant"
SMOOTHQUANT_PASS = Pass(SMOOTHQUANT, _smoothquant, _smooth_summary, agree=True, needs=frozenset({Need.DATA}))
PREPARE_NAMES = tuple(p.name for p in _preparation_passes())
_AGREE = {p.name for p in _preparation_passes() if p.agree} | {SMOOTHQUANT}
CLE = "cross-layer-equalization"


def preparation(*, cle: bool) -> list[Pass]:
    """The preparation passes for these settings, in order."""
    return [p for p in _preparation_passes() if cle or p.name != CLE]


def run_passes(model: onnx.ModelProto, passes: Iterable[Pass]) -> Prepared:
    results: dict[str, PassResult] = {}
    notes: list[str] = []
    for p in passes:
        r = p.run(model)
        # a result keeps its events and data, not its model: each pass copies the model, and holding every
        # copy cost 8x the weights (MiniLM, 91 MB: ~0.7 GB of calibrate's peak)
        model, r.model = r.model, None
        results[p.name] = r
        line = p.summary(r)
        if line:
            notes.append(line)
    return Prepared(model, results, notes)


def prepare(model: onnx.ModelProto, *, cle: bool = False) -> Prepared:
    """Deterministic clean-up before ranges are measured: names, Constant weights, MatMul+Add -> Gemm, bias
    folding, opset 13, BN folding, and cross-layer equalization if asked (calibrate and convert must agree)."""
    return run_passes(model, preparation(cle=cle))


def agreed_passes(*, cle: bool, smoothquant: bool = False) -> list[str]:
    """Names of the ``agree`` passes that calibrate and convert apply with these settings (recorded in the
    calibration artifact)."""
    return [p.name for p in preparation(cle=cle) if p.agree] + ([SMOOTHQUANT] if smoothquant else [])


def _analytic_bias_correction(model: onnx.ModelProto, ctx: PassContext) -> PassResult:
    """Data-free: E[x] from the BatchNorm folded into each layer's producer (in place on ``model``)."""
    from ..quantize import params as qp
    from .bias_correction import analytic_correction

    reduce_range = ctx.qdq.reduce_range

    def dequantized(w, axis):
        p = qp.weight_params(w, axis=axis, reduce_range=reduce_range)
        return qp.dequantize(qp.quantize_weight(w, p, reduce_range=reduce_range), p)

    events = analytic_correction(model, ctx.layers, ctx.prepared.data("fold-batchnorm"), ctx.prepared.data(CLE),
                                 dequantized)
    return PassResult(model, events)


def _empirical_bias_correction(model: onnx.ModelProto, ctx: PassContext) -> PassResult:
    """Measured on calibration data, layer by layer (:mod:`quantcli.quantize.empirical_bias`)."""
    from ..quantize.empirical_bias import empirical_bias_correction

    work, events = empirical_bias_correction(model, ctx.plan, ctx.ranges, ctx.qdq, ctx.batches(), list(ctx.layers),
                                             on_layer=ctx.on_layer, float_means=ctx.float_means)
    return PassResult(work, events)


def bias_correction(kind: str) -> Pass:
    """The bias-correction pass for ``--bias-correction analytic|empirical``."""
    if kind == "empirical":
        return Pass("bias-correction-empirical", _empirical_bias_correction, needs=frozenset({Need.PLAN, Need.DATA}))
    if kind == "analytic":
        return Pass("bias-correction-analytic", _analytic_bias_correction,
                    needs=frozenset({Need.PLAN, Need.PREPARATION}))
    raise ValueError(f"unknown bias correction {kind!r}")
