"""Choices made by measuring candidate models on evaluation data: ``--weights auto`` and ``--max-drop``.

* :func:`auto_weight_granularity` -- per-tensor weights for MatMul/Gemm where measuring shows it costs
  nothing: ONNX Runtime's QGemm / QLinearMatMul run faster with per-tensor weights than per-channel ones
  (the per-column path of its integer GEMM), while QLinearConv runs the same either way.  Convolutions keep
  per-channel weights; MatMul/Gemm go per-tensor when the metric is not lower and the output SQNR is within
  :data:`AUTO_SQNR_MARGIN_DB` of the per-channel model.  Node rules that set ``weights`` still win.
* :func:`mixed_precision` -- ``--max-drop``: keep the fewest most sensitive nodes in float so that the drop is
  within budget: nodes ranked by each quantized alone on the first RANK_SAMPLES evaluation samples (the ranking
  only needs their order, and costs one model per node), then bisection over the ranking on the whole set
  (:func:`quantcli.sensitivity.search_exclusions`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import onnx

from .. import external
from ..errors import QuantcliError
from ..recipe import BiasCorrection, NodeRule, Weights
from ..settings import Resolved
from ..transforms.passes import Prepared
from .static import Built, Progress, StaticBuilder, no_progress

MATMUL_OPS = ("MatMul", "Gemm")
AUTO_SQNR_MARGIN_DB = 3.0  # half a bit of output SQNR
AUTO_EVAL_SAMPLES = 256    # measured on at most this many samples (as empirical bias correction): bounded memory
EVAL_VALUES = 1 << 24      # ...and on the leading samples whose FP32 outputs hold about this many values (64 MB):
#                            PP-OCRv6 rec's 40 x 18710 scores a line held ~380 MB of FP32 outputs over 128 lines
BC_GUARD_SAMPLES = 32      # empirical bias correction is checked against leaving it out on this many held samples
BC_PREFIX_FRACTIONS = (1 / 4, 1 / 2)  # ...and against keeping it for these shares of the leading layers
BC_PREFIX_MARGIN_DB = 1.0  # a share wins only by this much over both all and none (PP-OCRv6 det: +0.7 dB, but -1.1 IoU)
RANK_SAMPLES = 64          # --max-drop ranks nodes (each quantized alone) on at most this many samples, bisects on
RANK_MIN_SAMPLES = 8       # all; at least this many, and fewer than 64 where the ranking would run more than
RANK_GMACS = 2000.0        # this many giga-MACs of the model in all (nodes x samples x GMACs a sample): counted, so
#                            the choice is deterministic.  YOLOX (83 Convs, 3.2 GMACs an image, its detection F1 as
#                            --metric, 96 eval images, machine loaded ~4.5): ranked on 64 images ~180 of 220 s quiet;
#                            on 16: 9 Convs float, 375 s loaded; on 8: 7 float (drop 0.73), 295 s loaded.


@dataclasses.dataclass
class SearchResult:
    """What ``--max-drop`` found: the nodes kept float, the drop before and after, each bisection step."""

    metric: str
    max_drop: float
    all_int8_drop: float
    drop: float
    float_nodes: list[str] = dataclasses.field(default_factory=list)
    steps: list[dict] = dataclasses.field(default_factory=list)
    evaluations: int = 0            # on the whole evaluation set
    rank_evaluations: int = 0       # nodes quantized alone, on the first rank_samples samples
    rank_samples: int = 0
    seconds: float = 0.0
    recipe_fragment: str = ""
    # the ranking the bisection walked, worst first (node, op, mac_share, alone_drop, alone_sqnr_db on the first
    # RANK_SAMPLES samples; graph_index: the node's place among the ranked nodes in graph order)
    ranking: list[dict] = dataclasses.field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.drop <= self.max_drop + 1e-9


def eval_data(res: Resolved, what: str) -> str:
    """The evaluation data path (``--eval-data``, else the calibration data), or a clear error."""
    data = res.eval_data
    if not data or not Path(data).exists():
        raise QuantcliError(f"{what} needs evaluation data: pass --eval-data PATH (labels in it give accuracy, "
                            "else agreement with FP32 is the metric)")
    return data


def sensitivities_alone(prep: Prepared, built: Built, build: StaticBuilder, evaluator, feeds_shape: dict,
                        progress: Progress, macs: dict[str, int] | None = None) -> list:
    """Each weighted node quantized alone: its metric drop and output SQNR (``macs``: each node's, if known)."""
    from ..sensitivity import AloneScorer, NodeSensitivity
    from ..validate.coverage import heavy_macs

    macs = macs if macs is not None else heavy_macs(prep.model, feeds_shape)
    total = sum(macs.values()) or 1
    quantized = built.plan.quantized_nodes
    nodes = ranked_nodes(built)
    advance = progress("sensitivity", len(nodes))
    scorer = AloneScorer(build((), ()).model, evaluator, nodes)  # runs only what each node changes
    rows = []
    for name in nodes:
        score = scorer.score(build((), (name,)).model, name)
        rows.append(NodeSensitivity(name, quantized[name], macs.get(name, 0) / total, score.drop, score.sqnr_db, None))
        advance(1)
    return rows


def ranked_nodes(built: Built) -> list[str]:
    """The nodes a sensitivity ranking quantizes one at a time: the weighted ones."""
    return [n for n, op in built.plan.quantized_nodes.items() if op in ("Conv", "MatMul", "Gemm")]


def rank_samples(nodes: int, gmacs_per_sample: float) -> int:
    """How many evaluation samples the ranking of ``nodes`` candidates runs on: RANK_SAMPLES, fewer (down to
    RANK_MIN_SAMPLES) where that many would run more than RANK_GMACS."""
    if nodes <= 0 or gmacs_per_sample <= 0:
        return RANK_SAMPLES
    return int(min(RANK_SAMPLES, max(RANK_MIN_SAMPLES, RANK_GMACS / (gmacs_per_sample * nodes))))


def ranked_dicts(rows: list) -> list[dict]:
    """NodeSensitivity rows (in graph order) -> dicts worst first, each with its ``graph_index``."""
    from ..sensitivity import rank

    where = {r.node: i for i, r in enumerate(rows)}
    return [dict(dataclasses.asdict(r), graph_index=where[r.node]) for r in rank(rows)]


def auto_weight_granularity(model: onnx.ModelProto, build: StaticBuilder) -> tuple[StaticBuilder, str | None]:
    """--weights auto: ``build`` is the per-channel builder; returns the builder of the choice and a note."""
    from ..sensitivity import Evaluator

    if external.has_external(model):  # decided before building anything
        return build, ("weights auto: per-channel kept for MatMul/Gemm (per-tensor is not measured on a model with "
                       "external data: that would hold two converted models and their sessions at once)"
                       if any(n.op_type in MATMUL_OPS for n in model.graph.node) else None)
    probe = build.probe()  # candidates compared without bias correction; the choice gets it once, later
    built = probe()
    candidates = [ws.node for ws in built.plan.weights
                  if ws.axis is not None and built.plan.quantized_nodes.get(ws.node) in MATMUL_OPS]
    if not candidates:
        return build, None
    try:
        ev = Evaluator(model, *build.held(eval_data(build.res, "--weights auto"), AUTO_EVAL_SAMPLES),
                       max_values=EVAL_VALUES)
    except QuantcliError:
        return build, "weights auto: no evaluation data to measure per-tensor MatMul/Gemm weights: per-channel kept"
    rules = [NodeRule(match=op, weights=Weights.PER_TENSOR) for op in MATMUL_OPS]
    alt = probe.with_rules(rules)()
    switched = [ws.node for ws in alt.plan.weights if ws.node in candidates and ws.axis is None]
    if not switched:
        return build, None
    base, cand = ev.score(built.model), ev.score(alt.model)
    detail = (f"output SQNR {cand.sqnr_db:.1f} dB vs {base.sqnr_db:.1f} dB per-channel, {ev.metric_name} "
              f"{cand.metric:.2f}% vs {base.metric:.2f}%" + ("" if probe is build else ", before bias correction"))
    if cand.metric >= base.metric and cand.sqnr_db >= base.sqnr_db - AUTO_SQNR_MARGIN_DB:
        return build.with_rules(rules), (f"weights auto: per-tensor for {len(switched)} MatMul/Gemm (faster in "
                                         f"ONNX Runtime's integer GEMM; {detail}); per-channel for the rest")
    return build, f"weights auto: per-channel kept for MatMul/Gemm (per-tensor would give {detail})"


def guard_bias_correction(model: onnx.ModelProto, build: StaticBuilder) -> tuple[StaticBuilder, str | None]:
    """How many of the corrected layers keep their empirical bias correction: the first ``k`` in graph order, ``k``
    from BC_PREFIX_FRACTIONS of them (and none, and all), scored by the mean per-slice output SQNR
    (:class:`~quantcli.metrics.SliceFidelity`; the whole output's where it has no slices) on held samples the
    correction did not fit (:func:`_unseen`).  All of them are kept where that and the whole output's SQNR are not
    lower than with none; a share replaces that choice where it does not lower the whole output's SQNR below none's
    and beats both all and none by BC_PREFIX_MARGIN_DB (on 8 images, PP-OCRv6 det's first 42 of 83 layers scored
    21.4 dB against 20.7 all and 17.7 none, yet its mask IoU vs FP32 fell 94.6 -> 93.5% on 96 pages: all kept).  The shifts of the first ``k`` layers are exactly what
    correcting ``k`` layers makes (:meth:`StaticBuilder.bias_prefix`): no data pass is repeated.

    Measured: on PicoDet (layout, 800x608, 103 layers) correcting every layer collapsed the first output (cosine
    0.24 against FP32: nothing was written) while without it the model kept 43.5% detection F1; on PP-OCRv6 rec it
    lowered the SQNR 16.4 -> 8.9 dB (text accuracy 99.0 -> 92.7%).  On YOLOv8n (64 layers) correcting all of them
    raised the output SQNR (28.4 -> 29.1 dB: the box coordinates in pixels) and lowered the class-score rows
    (mean per-slice 10.0 -> 9.6 dB) and detection F1 vs FP32 (81.9 -> 72.4% on 384 images): the shifts of the
    neck and head layers, fitted over every grid cell, mostly background, pushed the foreground scores down (mean
    score error at cells FP32 scores > 0.1: -0.0037 uncorrected, -0.0087 all corrected).  Its first 16 layers
    (backbone, feature maps of 160x160 to 40x40) help: per-slice 11.8 dB, F1 86.3% (-0.0023); first 32: 10.6 dB,
    80.8%; first 48: 10.2 dB, 76.2%."""
    from ..sensitivity import Evaluator

    if build.res.convert.bias_correction != BiasCorrection.EMPIRICAL:  # analytic is data-free: as asked
        return build, None
    layers = build.corrected_layers()
    if not layers:
        return build, None
    if build.res.convert.metric and build.res.convert.max_drop is not None:
        return _guard_by_task(model, build, layers)
    try:
        data = eval_data(build.res, "bias correction")
        batches, labels, unseen = _unseen(build, data)
        ev = Evaluator(model, batches, labels, max_values=EVAL_VALUES)
    except QuantcliError:
        return build, None
    n = len(layers)
    ks = _prefix_counts(n)
    scores = {k: ev.score(build.bias_prefix(k)().model, slices=True) for k in ks}
    floor = scores[0].sqnr_db

    def merit(k: int) -> float:
        sc = scores[k]
        return sc.slice_sqnr_db if np.isfinite(sc.slice_sqnr_db) else sc.sqnr_db

    best = n if scores[n].sqnr_db >= floor and merit(n) >= merit(0) else 0
    partial = [k for k in ks if 0 < k < n and scores[k].sqnr_db >= floor
               and merit(k) >= max(merit(n), merit(0)) + BC_PREFIX_MARGIN_DB]
    if partial:
        best = max(partial, key=merit)  # first maximum: ties go to more layers (ks is in decreasing order)
    if best == n:
        return build, None
    cand = " / ".join(f"{k}: {merit(k):.1f}" for k in ks)
    what = "mean per-slice output SQNR" if np.isfinite(scores[best].slice_sqnr_db) else "output SQNR"
    head = ("bias correction left out" if best == 0 else
            f"bias correction kept for the first {best} of {n} corrected layers")
    held = f"{ev.samples} held samples" + (" it did not fit" if unseen else " (the ones it fitted: no others)")
    return build.bias_prefix(best), (f"{head}: {what} on {held}, by leading "
                                     f"layers corrected, {cand} dB (whole output {scores[best].sqnr_db:.1f} dB; "
                                     f"all corrected {scores[n].sqnr_db:.1f}, none {floor:.1f})")


def _prefix_counts(n: int) -> list[int]:
    """How many leading corrected layers the guard tries: all, BC_PREFIX_FRACTIONS of them, none (most first)."""
    return sorted({n, 0} | {max(1, int(np.ceil(n * f))) for f in BC_PREFIX_FRACTIONS}, reverse=True)


def task_evaluator(model: onnx.ModelProto, build: StaticBuilder):
    """``--max-drop``'s evaluator (its task metric, if any, on the whole evaluation set), made once per convert:
    the bias-correction guard and the search share its FP32 outputs."""
    from ..sensitivity import Evaluator
    from ..task_metric import load_task_metric

    if "max_drop_evaluator" not in build.shared:
        s = build.res.convert
        build.shared["max_drop_evaluator"] = Evaluator(
            model, *build.held(eval_data(build.res, "convert --max-drop"), None),
            task=load_task_metric(s.metric) if s.metric else None)
    return build.shared["max_drop_evaluator"]


def _guard_by_task(model: onnx.ModelProto, build: StaticBuilder, layers: list[str]):
    """With ``--max-drop --metric``, the user's metric on the evaluation set chooses how many leading layers keep
    their correction (ties: the output SQNR, then more layers).  The SQNR on held calibration samples chose
    differently on different samples for YOLOv8n (the guard on 32 evaluation images kept every layer: F1 75.6%
    all-INT8, against 89.2% with the first 16 kept on calibration images), and the metric is what the budget is
    judged on."""
    ev = task_evaluator(model, build)
    n = len(layers)
    ks = _prefix_counts(n)
    scores = {k: ev.score(build.bias_prefix(k)().model) for k in ks}
    best = max(ks, key=lambda k: (round(scores[k].metric, 6), scores[k].sqnr_db))  # first maximum: more layers
    build.shared["guarded_score"] = scores[best]  # the all-INT8 model the search starts from: not scored again
    if best == n:
        return build, None
    head = ("bias correction left out" if best == 0 else
            f"bias correction kept for the first {best} of {n} corrected layers")
    cand = " / ".join(f"{k}: {scores[k].metric:.2f}" for k in ks)
    return build.bias_prefix(best), (f"{head}: {ev.metric_name} on the {ev.samples} evaluation samples, by leading "
                                     f"layers corrected, {cand}")


def _unseen(build: StaticBuilder, data: str) -> tuple[list[dict], object, bool]:
    """The held samples the guard measures on, as many as bias correction fitted its shifts on, at most
    BC_GUARD_SAMPLES (8 for inputs of 250k values and more: 6 candidates x 32 PicoDet pages took minutes): where
    ``data`` is the calibration data, those after the ones it fitted (on YOLOv8n those 8 images said the opposite of
    the next ones: mean per-slice SQNR 12.0 dB with it vs 10.4 without, against 9.6 vs 10.2 on 31; the first 16 of
    64 layers corrected won on 8, 13 and 31 unseen images alike); the first fitted ones where the data holds no
    others (magika's 128 samples, all fitted).  Returns the batches, their labels and whether they are unseen."""
    fitted = build.bias_correction_samples(data)
    count = min(BC_GUARD_SAMPLES, fitted)  # as many as bias correction's budget takes (PicoDet at 800x608: 8)
    if data != build.res.calibration_data:
        return *build.held(data, count), True
    batches, labels = build.held(data, fitted + count)
    skip, seen = 0, 0
    while skip < len(batches) and seen < fitted:
        seen += len(next(iter(batches[skip].values())))
        skip += 1
    if skip >= len(batches):
        return *build.held(data, count), False
    return batches[skip:], (labels[seen:] if labels is not None else None), True


def mixed_precision(model: onnx.ModelProto, prep: Prepared, build: StaticBuilder) -> tuple[Built, SearchResult, str]:
    """convert --max-drop: keep the fewest most sensitive nodes in float so that the drop is within budget.

    The ranking and the bisection measure models as they will be written (with a ranking measured without
    bias correction, outlier_cnn needed 4 float nodes instead of 3).  Where bias correction is what breaks the budget
    (measured: on YOLOv8n empirical bias correction lowered detection F1 by 9 points, before the guard), the
    uncorrected model is used instead when it meets the budget or does better."""
    from ..metrics import degenerate_reference

    t0 = time.perf_counter()
    s = build.res.convert
    ev = task_evaluator(model, build)
    why = degenerate_reference(ev.ref_metric, ev.classes) if ev.kind == "labels" else None
    if why:
        raise QuantcliError(f"convert --max-drop: {why}")
    built = build()
    full = build.shared.pop("guarded_score", None) or ev.score(built.model)
    search = SearchResult(ev.metric_name, s.max_drop, full.drop, full.drop)
    probe = build.probe()
    if full.drop > s.max_drop + 1e-9:
        shapes = {k: v[:1].shape for k, v in ev.batches[0].items()}
        from ..validate.coverage import heavy_macs

        macs = heavy_macs(prep.model, shapes)
        ranker = ev.subset(rank_samples(len(ranked_nodes(built)), sum(macs.values()) / 1e9))
        rows = sensitivities_alone(prep, built, build, ranker, shapes, no_progress, macs)
        search.ranking = ranked_dicts(rows)
        ranking = [r["node"] for r in search.ranking]
        search.rank_evaluations, search.rank_samples = ranker.evaluations, ranker.samples
        built, excluded, score, steps, bc_note = _bisect(build, probe, ranking, ev, s.max_drop, full)
        search.float_nodes, search.drop, search.steps = list(excluded), score.drop, steps
        search.recipe_fragment = "[convert]\nexclude = [" + ", ".join(
            f'"{n}"' for n in list(s.exclude) + list(excluded)) + "]\n"
        if not search.met:
            note = (f"--max-drop {s.max_drop:g}: not reachable even with {len(excluded)} node(s) in float "
                    f"(drop {score.drop:.2f} pts)")
        else:
            note = (f"--max-drop {s.max_drop:g}: {len(excluded)} node(s) kept in float ({', '.join(excluded)}); "
                    f"{ev.metric_name} drop {full.drop:.2f} -> {score.drop:.2f} pts")
        note += bc_note
    else:
        note = f"--max-drop {s.max_drop:g}: all-INT8 drop {full.drop:.2f} pts is within budget"
    search.evaluations, search.seconds = ev.evaluations, time.perf_counter() - t0
    return built, search, note + _metric_hint(ev)


def _metric_hint(ev) -> str:
    """Where the drop was top-1 agreement over an output's last axis that may hold no class scores (a detector's box
    rows, a map: YOLOX's all-INT8 "drop" was 13 points there while its detection F1 against FP32 was 98%; a
    sentence embedding of unit rows), say so: only the user's task metric judges those."""
    from ..metrics import is_distribution

    r = ev.ref[0]
    unit_rows = r.ndim == 2 and bool(np.allclose(np.linalg.norm(r.astype(np.float64), axis=-1), 1.0, atol=1e-3))
    if not ((ev.kind == "positions" and not is_distribution(r)) or (ev.kind == "samples" and unit_rows)):
        return ""
    return (f"; the drop was {ev.metric_name} over the last axis of the first output {list(r.shape)}: meaningful "
            "for class scores, not for boxes, maps or embeddings (for those pass your task metric: --metric "
            "FILE.py:FUNCTION)")


def _bisect(build: StaticBuilder, probe: StaticBuilder, ranking: list[str], ev, budget: float, full):
    """Fewest float nodes within budget, with bias correction; where that cannot meet the budget, without it if
    that meets it or does better.  ``full``: the all-INT8 model's score (not measured again).  (The search without
    bias correction used to run after every search, for fewer float nodes: ~5 more scorings of the whole set;
    the correction guard now decides on held samples whether the correction helps.)"""
    from ..sensitivity import search_exclusions

    excluded, score, _, steps = search_exclusions(ranking, lambda ex: build(ex).model, ev, budget, known={0: full})
    if probe is build or score.drop <= budget + 1e-9:
        return build(excluded), excluded, score, steps, ""
    p_excluded, p_score, _, p_steps = search_exclusions(ranking, lambda ex: probe(ex).model, ev, budget)
    steps = _label(steps, "on") + _label(p_steps, "off")
    if p_score.drop < score.drop - 1e-9:
        return probe(p_excluded), p_excluded, p_score, steps, (
            f"; bias correction left out (with it: {len(excluded)} node(s) float, drop {score.drop:.2f} pts; "
            f"without: {len(p_excluded)}, drop {p_score.drop:.2f})")
    return build(excluded), excluded, score, steps, ""


def _label(steps: list[dict], correction: str) -> list[dict]:
    """Each bisection step says whether its candidate had bias correction."""
    for step in steps:
        step["bias_shifts"] = correction
    return steps
