"""Static INT8 conversion: plan, ranges, bias correction, per-node rules and the --max-drop search.

Called by :func:`quantcli.pipeline.convert` and :func:`quantcli.pipeline.analyze` once the model is prepared and
its calibration artifact is at hand.  :func:`builder` returns a cached ``build(extra_exclusions, only)`` so that
the sensitivity sweep and the bisection rebuild nothing twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import onnx

from .calibration.artifact import CalibrationArtifact
from .data.sources import Dataset, input_specs
from .errors import QuantcliError
from .quantize.policy import (ACT_MATMUL_REASON, PlanOptions, QuantPlan, is_excluded, plan, range_conflicts,
                              resolve_presets)
from .quantize.qdq import QDQOptions, insert_qdq
from .cpu import detect as detect_cpu
from .transforms.passes import CLE, Prepared
from .recipe import (ActMatmul, Activations, BiasCorrection, CalibrateSettings, ConvertSettings, NodePrecision,
                     NodeRule, Weights)


Progress = Callable[[str, int], Callable[[int], None]]


def _no_progress(desc: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def builder(model, prep: Prepared, settings: ConvertSettings, per_channel: bool, reduce_range: bool,
             artifact: CalibrationArtifact, calibration, calib_settings, progress: Progress, notes: list[str]):
    """A cached ``build(extra_exclusions=(), only=None) -> (plan, QDQ model, report)`` for these settings."""
    fused: dict[str, bool] = {}  # per heavy node: does ONNX Runtime fuse it (probed once, shared by the builds)

    @functools.lru_cache(maxsize=None)
    def build(extra: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
        s2 = dataclasses.replace(settings, exclude=list(settings.exclude) + list(extra))
        return static_int8(model, prep, s2, per_channel, reduce_range, artifact, calibration, calib_settings,
                            progress, notes, only=only, fused=fused)
    return build


def eval_dataset(model, settings: ConvertSettings, calib_settings, artifact, what: str,
                  labels: str | None = None) -> Dataset:
    data = settings.eval_data or (calib_settings.data if calib_settings and calib_settings.data else None) \
        or artifact.settings.get("data")
    if not data or not Path(data).exists():
        raise QuantcliError(f"{what} needs evaluation data: pass --eval-data PATH (labels in it give accuracy, "
                            "else agreement with FP32 is the metric)")
    return Dataset(data, input_specs(model), labels_path=labels)


def sensitivities_alone(prep: Prepared, qplan: QuantPlan, build, evaluator, feeds_shape: dict,
                        progress: Progress) -> list:
    """(a) of the analysis: each weighted node quantized alone."""
    from .sensitivity import NodeSensitivity
    from .validate.coverage import heavy_macs

    macs = heavy_macs(prep.model, feeds_shape)
    total = sum(macs.values()) or 1
    nodes = [n for n, op in qplan.quantized_nodes.items() if op in ("Conv", "MatMul", "Gemm")]
    advance = progress("sensitivity", len(nodes))
    rows = []
    for name in nodes:
        score = evaluator.score(build((), (name,))[1])
        rows.append(NodeSensitivity(name, qplan.quantized_nodes[name], macs.get(name, 0) / total, score.drop,
                                    score.sqnr_db, None))
        advance(1)
    return rows


MATMUL_OPS = ("MatMul", "Gemm")
AUTO_SQNR_MARGIN_DB = 3.0  # half a bit of output SQNR
AUTO_EVAL_SAMPLES = 256    # measured on at most this many samples (as empirical bias correction): bounded memory


def auto_weight_granularity(model, settings: ConvertSettings, build, make_build, artifact, calib_settings,
                            notes: list[str]):
    """--weights auto: per-tensor weights for MatMul/Gemm where measuring shows it costs nothing.

    ONNX Runtime's QGemm / QLinearMatMul run faster with per-tensor weights than with per-channel ones (the
    per-column path of its integer GEMM; measured on digits_mlp at batch 1: x0.62 of FP32 against x0.75),
    while QLinearConv runs the same either way.  So convolutions keep per-channel weights, and MatMul/Gemm
    weights go per-tensor when, on the evaluation data, the model's metric is not lower and its output SQNR
    is within AUTO_SQNR_MARGIN_DB of the per-channel model.  Node rules that set ``weights`` still win.
    ``build`` is the per-channel builder (cached); returns the builder of the choice.
    """
    from .sensitivity import Evaluator

    built = build()
    qplan = built[0]
    candidates = [ws.node for ws in qplan.weights
                  if ws.axis is not None and qplan.quantized_nodes.get(ws.node) in MATMUL_OPS]
    if not candidates:
        return build
    try:
        ev = Evaluator(model, eval_dataset(model, settings, calib_settings, artifact, "--weights auto"),
                       limit=AUTO_EVAL_SAMPLES)
    except QuantcliError:
        notes.append("weights auto: no evaluation data to measure per-tensor MatMul/Gemm weights: per-channel kept")
        return build
    rules = [NodeRule(match=op, weights=Weights.PER_TENSOR) for op in MATMUL_OPS]
    alt_build = make_build(dataclasses.replace(settings, nodes=rules + list(settings.nodes)))
    alt = alt_build()
    switched = [ws.node for ws in alt[0].weights if ws.node in candidates and ws.axis is None]
    if not switched:
        return build
    base, cand = ev.score(built[1]), ev.score(alt[1])
    detail = (f"output SQNR {cand.sqnr_db:.1f} dB vs {base.sqnr_db:.1f} dB per-channel, {ev.metric_name} "
              f"{cand.metric:.2f}% vs {base.metric:.2f}%")
    if cand.metric >= base.metric and cand.sqnr_db >= base.sqnr_db - AUTO_SQNR_MARGIN_DB:
        notes.append(f"weights auto: per-tensor for {len(switched)} MatMul/Gemm (faster in ONNX Runtime's integer "
                     f"GEMM; {detail}); per-channel for the rest")
        return alt_build
    notes.append(f"weights auto: per-channel kept for MatMul/Gemm (per-tensor would give {detail})")
    return build


def mixed_precision(model, prep: Prepared, settings: ConvertSettings, qplan, new_model, report, build,
                     artifact, calib_settings, notes: list[str]):
    """convert --max-drop: keep the fewest most sensitive nodes in float so that the drop is within budget."""
    from .sensitivity import Evaluator, rank, search_exclusions

    t0 = time.perf_counter()
    ev = Evaluator(model, eval_dataset(model, settings, calib_settings, artifact, "convert --max-drop"))
    full = ev.score(new_model)
    search = {"metric": ev.metric_name, "max_drop": settings.max_drop, "all_int8_drop": full.drop,
              "float_nodes": [], "drop": full.drop, "steps": [], "evaluations": 0, "seconds": 0.0}
    if full.drop > settings.max_drop + 1e-9:
        shapes = {k: v[:1].shape for k, v in ev.batches[0].items()}
        ranking = [r.node for r in rank(sensitivities_alone(prep, qplan, build, ev, shapes, _no_progress))]
        excluded, score, _, steps = search_exclusions(ranking, lambda ex: build(ex)[1], ev, settings.max_drop)
        qplan, new_model, report = build(excluded)
        search.update(float_nodes=list(excluded), drop=score.drop, steps=steps,
                      recipe_fragment="[convert]\nexclude = [" + ", ".join(
                          f'"{n}"' for n in list(settings.exclude) + list(excluded)) + "]\n")
        if score.drop > settings.max_drop + 1e-9:
            notes.append(f"--max-drop {settings.max_drop:g}: not reachable even with {len(excluded)} node(s) in "
                         f"float (drop {score.drop:.2f} pts)")
        else:
            notes.append(f"--max-drop {settings.max_drop:g}: {len(excluded)} node(s) kept in float "
                         f"({', '.join(excluded)}); {ev.metric_name} drop {full.drop:.2f} -> {score.drop:.2f} pts")
    else:
        notes.append(f"--max-drop {settings.max_drop:g}: all-INT8 drop {full.drop:.2f} pts is within budget")
    search["evaluations"] = ev.evaluations
    search["seconds"] = time.perf_counter() - t0
    return qplan, new_model, report, search


def static_int8(model, prep: Prepared, settings: ConvertSettings, per_channel: bool, reduce_range: bool,
                 artifact: CalibrationArtifact, calibration, calib_settings: CalibrateSettings | None,
                 progress: Progress, notes: list[str], only: tuple[str, ...] | None = None,
                 fused: dict[str, bool] | None = None) -> tuple[QuantPlan, onnx.ModelProto, list[str]]:
    """Plan, ranges, bias correction, Q/DQ insertion; returns (plan, QDQ model, bias-correction report).
    ``fused`` caches, across calls with other exclusions, which heavy nodes ONNX Runtime fuses."""
    from .quantize import params as qp
    from .transforms.bias_correction import add_zero_biases, analytic_correction

    symmetric = settings.activations == Activations.SYMMETRIC
    work = prep.model
    rules = settings.nodes
    by_precision = {p: tuple(r.match for r in rules if r.precision == p) for p in NodePrecision}
    if by_precision[NodePrecision.FP32] or by_precision[NodePrecision.FP16]:
        settings = dataclasses.replace(settings, exclude=list(settings.exclude) + list(
            by_precision[NodePrecision.FP32] + by_precision[NodePrecision.FP16]))
    bc = settings.bias_correction
    if bc != BiasCorrection.OFF:
        work = copy.deepcopy(work)
        add_zero_biases(work)
    granularity = {r.match: r.weights == Weights.PER_CHANNEL for r in rules
                   if r.precision == NodePrecision.INT8 and r.weights is not None}
    qplan_options = PlanOptions(per_channel=per_channel, symmetric_activations=symmetric,
                                exclude=resolve_presets(work, settings.exclude), only=only,
                                granularity=tuple(granularity.items()), act_matmul=quantize_act_matmul(settings))
    qplan = plan(work, qplan_options)
    reasons: dict[str, str] = {}  # nodes planned float here, and why (kept through the re-plans below)
    if qplan_options.act_matmul and any(t not in artifact.observers for t in qplan.calibrated_tensors()):
        alt = plan(work, dataclasses.replace(qplan_options, act_matmul=False))
        if all(t in artifact.observers for t in alt.calibrated_tensors()):  # calibrated for attention in float
            qplan_options, qplan = dataclasses.replace(qplan_options, act_matmul=False), alt
            reasons.update({n: NO_ACT_RANGES_REASON for n, why in alt.float_nodes.items() if why == ACT_MATMUL_REASON})
    qplan.float_nodes.update(reasons)
    ranges = _ranges(artifact, qplan.calibrated_tensors(), settings, symmetric, calibration, notes)
    conflicts = range_conflicts(work, qplan, ranges)
    if conflicts:  # plan again with those nodes in float, and say why
        reasons.update(conflicts)
        qplan = plan(work, dataclasses.replace(qplan_options, exclude=qplan_options.exclude + tuple(conflicts)))
        qplan.float_nodes.update(reasons)
        ranges = _ranges(artifact, qplan.calibrated_tensors(), settings, symmetric, calibration, notes)
    options = QDQOptions(symmetric_activations=symmetric, reduce_range=reduce_range)
    unfused = _unfused(work, qplan, ranges, options, {} if fused is None else fused)
    if unfused:  # ONNX Runtime would run these in float behind their Q/DQ: plan again with them in float
        reasons.update({n: UNFUSED_REASON for n in unfused})
        qplan = plan(work, dataclasses.replace(qplan_options, exclude=qplan_options.exclude + tuple(conflicts)
                                               + tuple(unfused)))
        qplan.float_nodes.update(reasons)
        ranges = _ranges(artifact, qplan.calibrated_tensors(), settings, symmetric, calibration, notes)
    ranges = _node_method_ranges(work, qplan, ranges, artifact, settings, symmetric)
    axes = {ws.node: ws.axis for ws in qplan.weights if ws.input_index == 1}
    layers = [n.name for n in work.graph.node if n.name in axes]
    report: list[str] = []
    if bc == BiasCorrection.EMPIRICAL:
        data = (calib_settings.data if calib_settings and calib_settings.data else artifact.settings.get("data"))
        if not data or not Path(data).exists():
            notes.append(f"empirical bias correction needs the calibration data ({data or 'not recorded'} is not "
                         "there): used analytic bias correction instead; pass --data to measure it")
            bc = BiasCorrection.ANALYTIC
    if bc == BiasCorrection.EMPIRICAL:
        ds = Dataset(data, input_specs(model))
        batches = list(ds.batches(ds.default_batch_size(None), limit=256))
        from .calibration.empirical import empirical_bias_correction

        work, report = empirical_bias_correction(work, qplan, ranges, options, batches, layers,
                                                 on_layer=progress("bias correction", len(layers))
                                                 if only is None else None)
    elif bc == BiasCorrection.ANALYTIC:
        def dequantized(w, axis):
            p = qp.weight_params(w, axis=axis, reduce_range=reduce_range)
            return qp.dequantize(qp.quantize_weight(w, p, reduce_range=reduce_range), p)

        report = analytic_correction(work, {n: axes[n] for n in layers}, prep.data("fold-batchnorm"), prep.data(CLE),
                                     dequantized)
    qdq = insert_qdq(work, qplan, ranges, options).model
    if by_precision[NodePrecision.FP16]:
        qdq = _half_nodes(qdq, by_precision[NodePrecision.FP16])
    return qplan, qdq, report


def quantize_act_matmul(settings: ConvertSettings) -> bool:
    """--act-matmul: auto quantizes MatMuls of two activations only where integer kernels compute faster than
    FP32 (VNNI/AMX, ARM dot product): elsewhere quantizing both inputs at run time is pure overhead (on the
    AVX2 transformer sample, attention in float measured x1.09 of FP32 against x1.17, and more accurate)."""
    if settings.act_matmul == ActMatmul.AUTO:
        return detect_cpu().int8_compute_fast
    return settings.act_matmul == ActMatmul.INT8


NO_ACT_RANGES_REASON = ("MatMul of two activations: the calibration has no ranges for its inputs (made with "
                        "attention in float; re-run calibrate with --act-matmul int8)")
UNFUSED_REASON = "ONNX Runtime would run it in float behind its Q/DQ (no integer kernel for it here)"


def _unfused(work: onnx.ModelProto, qplan: QuantPlan, ranges: dict, options: QDQOptions,
             fused: dict[str, bool]) -> list[str]:
    """Heavy nodes of the plan that ONNX Runtime's CPU optimizer does not fuse into an integer kernel,
    checked on a probe Q/DQ model (fusion depends on the graph, not on the exact ranges) unless ``fused``
    already knows every one of them (it learns the probed ones: other exclusions rarely change a node's
    fusion, and --max-drop builds a dozen plans)."""
    from .quantize.policy import HEAVY
    from .validate.coverage import integer_status

    heavy = [n for n, op in qplan.quantized_nodes.items() if op in HEAVY]
    if any(n not in fused for n in heavy):
        fused.update(integer_status(insert_qdq(work, qplan, ranges, options).model, heavy))
    return [n for n in heavy if not fused[n]]


def _node_tensors(model: onnx.ModelProto, qplan: QuantPlan, pattern: str) -> set[str]:
    """Activation tensors read or written by the nodes matching ``pattern`` (absorbed Relu outputs included)."""
    outputs = {n.name: n.output[0] for n in model.graph.node}
    names: set[str] = set()
    for node in model.graph.node:
        if is_excluded(node, (pattern,)):
            names |= set(node.input) | set(node.output)
            names |= {outputs[act] for act, prod in qplan.absorbed.items() if prod == node.name}
    return names


def _node_method_ranges(model, qplan: QuantPlan, ranges: dict, artifact: CalibrationArtifact,
                        settings: ConvertSettings, symmetric: bool) -> dict:
    """Per-node range methods ([[convert.nodes]] method/percentile) for the tensors those nodes touch."""
    rules = [r for r in settings.nodes if r.precision == NodePrecision.INT8 and (r.method or r.percentile)]
    if not rules:
        return ranges
    ranges = dict(ranges)
    for r in rules:
        method = r.method or settings.method
        method = method.value if method else artifact.settings["method"]
        pct = r.percentile if r.percentile is not None else (settings.percentile or 99.99)
        for t in sorted(_node_tensors(model, qplan, r.match) & set(ranges)):
            ranges[t] = artifact.range_of(t, method, pct, symmetric)
    return ranges


def _half_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> onnx.ModelProto:
    """Run the nodes matching ``patterns`` in FP16 inside an otherwise INT8/FP32 model (casts around them)."""
    from .quantize.half import convert_to_half
    others = tuple(n.name for n in model.graph.node if not is_excluded(n, patterns))
    half, _ = convert_to_half(model, "fp16", keep_nodes=others)
    return half


def _ranges(artifact: CalibrationArtifact, needed: list[str], settings: ConvertSettings, symmetric: bool,
            calibration, notes: list[str]) -> dict[str, tuple[float, float]]:
    missing = [t for t in needed if t not in artifact.observers]
    if missing:
        hint = (" with --activations symmetric" if settings.activations == Activations.SYMMETRIC
                and artifact.settings.get("activations") != "symmetric" else " with this quantcli version")
        raise QuantcliError(f"{calibration or 'calibration'}: has no statistics for tensor '{missing[0]}' "
                            f"({len(missing)} missing); re-run quantcli calibrate{hint}")
    method = settings.method.value if settings.method else None
    line = f"ranges: {method or artifact.settings.get('method')} over {artifact.samples} calibration samples"
    if line not in notes:
        if method and method != artifact.settings.get("method"):
            notes.append(f"ranges re-derived from the calibration statistics with method '{method}'")
        notes.append(line)
    return artifact.ranges(method, settings.percentile, symmetric=symmetric)
