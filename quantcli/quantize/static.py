"""Static INT8: plan, ranges, bias correction, Q/DQ insertion and per-node rules -- one :class:`Built` model.

:class:`StaticBuilder` holds what every build of one convert shares (the prepared model, the resolved
settings, the calibration artifact, which heavy nodes ONNX Runtime fuses, the bias-correction batches) and
caches its builds by ``(extra exclusions, only)``, so the sensitivity sweep, ``--weights auto`` and the
``--max-drop`` bisection rebuild nothing twice.

A build plans the Q/DQ (:mod:`~quantcli.quantize.policy`), then plans again with these nodes in float, each
for a stated reason: attention MatMuls the artifact has no ranges for, Concats whose inputs' ranges differ
too much for one scale, and heavy nodes ONNX Runtime's optimizer would not fuse into an integer kernel.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .. import external
from ..calibration.artifact import CalibrationArtifact
from ..calibration.estimators import silu_range
from ..errors import QuantcliError
from ..recipe import BiasCorrection, NodePrecision, Weights
from ..settings import Resolved
from ..transforms.bias_correction import bias_tensor
from ..transforms.graph import Event, EventKind, GraphIndex, set_initializer
from ..transforms.passes import Need, PassContext, Prepared, bias_correction
from . import reasons
from .policy import (HEAVY, MAX_DEPTHWISE_AMPLIFICATION, PlanOptions, QuantPlan, depthwise_amplification,
                     elementwise_source, is_depthwise, is_excluded, plan, range_conflicts, resolve_presets, silu_inputs)
from .flat import flat_range, reader_function
from .gelu import write_gelus
from .hardswish import write_hardswishes
from .qdq import QDQOptions, insert_qdq

Progress = Callable[[str, int], Callable[[int], None]]


def no_progress(desc: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclasses.dataclass
class Built:
    """One static INT8 build: its plan, the Q/DQ model, the bias-correction events and notes."""

    plan: QuantPlan
    model: onnx.ModelProto
    events: list[Event]
    notes: list[str]


class StaticBuilder:
    """``builder(extra=(), only=None) -> Built``: the model with ``extra`` nodes also in float, or with only the
    heavy nodes ``only`` quantized (sensitivity analysis); cached, except the ``only`` builds: each is scored once,
    and holding them all held one model per quantized node (MiniLM's --max-drop search: 5.9 GB RSS)."""

    def __init__(self, model: onnx.ModelProto, prep: Prepared, res: Resolved, artifact: CalibrationArtifact, *,
                 calibration: str | Path | None = None, progress: Progress = no_progress,
                 _shared: dict | None = None) -> None:
        self.model, self.prep, self.res, self.artifact = model, prep, res, artifact
        self.calibration, self.progress = calibration, progress
        # shared by every builder of one convert: ONNX Runtime's fusion verdicts, bias-correction batches
        self.shared = _shared if _shared is not None else {"fused": {}, "held": {}, "float_means": {}, "hardswish": {}}
        self._cache: dict[tuple, Built] = {}
        self._probe: StaticBuilder | None = None
        self._bc_parts: tuple | None = None  # the default build's model before / after bias correction (bias_prefix)
        self._bc_layers: frozenset[str] | None = None  # bias_prefix: only these layers are corrected, in every build

    def __call__(self, extra: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> Built:
        key = (tuple(extra), only)
        if only is not None:
            return self._build(*key)
        if key not in self._cache:
            self._cache[key] = self._build(*key)
        return self._cache[key]

    def with_rules(self, rules: list) -> StaticBuilder:
        """A builder with these per-node rules before the settings' own (sharing the fusion verdicts)."""
        return self._variant(nodes=list(rules) + list(self.res.convert.nodes))

    def probe(self) -> StaticBuilder:
        """This builder without bias correction: what searches compare candidates with.  Empirical bias
        correction is a pass over the data per corrected layer, and was most of a convert's time when
        every candidate ran it (PP-OCRv6 rec, 66 layers: 475 of 518 s, twice for ``--weights auto``); the
        chosen model gets it once, at the end."""
        if self.res.convert.bias_correction == BiasCorrection.OFF:
            return self
        if self._probe is None:  # one per builder: --weights auto and the guard share its builds
            self._probe = self._variant(bias_correction=BiasCorrection.OFF)
        return self._probe

    def _variant(self, **convert_changes) -> StaticBuilder:
        conv = dataclasses.replace(self.res.convert, **convert_changes)
        variant = StaticBuilder(self.model, self.prep, self.res.with_convert(conv), self.artifact,
                                calibration=self.calibration, progress=self.progress, _shared=self.shared)
        variant._bc_layers = self._bc_layers
        return variant

    def _build(self, extra: tuple[str, ...], only: tuple[str, ...] | None) -> Built:
        s = self.res.convert
        fp16 = tuple(r.match for r in s.nodes if r.precision == NodePrecision.FP16)
        floats = tuple(r.match for r in s.nodes if r.precision == NodePrecision.FP32) + fp16
        work = self.prep.model
        if s.bias_correction != BiasCorrection.OFF:
            from ..transforms.bias_correction import add_zero_biases

            work = copy.deepcopy(work)
            add_zero_biases(work)
        granularity = {r.match: r.weights == Weights.PER_CHANNEL for r in s.nodes
                       if r.precision == NodePrecision.INT8 and r.weights is not None}
        options = PlanOptions(per_channel=self.res.per_channel, symmetric_activations=self.res.symmetric,
                              exclude=resolve_presets(work, list(s.exclude) + list(extra) + list(floats)), only=only,
                              granularity=tuple(granularity.items()), act_matmul=self.res.act_matmul,
                              act_matmul_min_dim=self.res.act_matmul_min_dim)
        qplan, ranges = self._plan(work, options)
        qdq_options = QDQOptions(symmetric_activations=self.res.symmetric, reduce_range=self.res.reduce_range)
        plain = work
        work, events, bc_note = self._bias_correction(work, qplan, ranges, qdq_options, only)
        notes = self._range_notes(qplan) + ([bc_note] if bc_note else [])
        if not extra and only is None and any(e.kind == EventKind.BIAS_SHIFTED for e in events):
            self._bc_parts = (plain, work, qplan, ranges, qdq_options, fp16)
        qdq, (gelus, hardswishes, float_swishes) = _written(insert_qdq(work, qplan, ranges, qdq_options).model, fp16,
                                                            self.shared)
        if gelus:
            notes.append(f"{gelus} GELU(s) after a DequantizeLinear written as one Gelu op each: ONNX Runtime does not "
                         "fuse x * 0.5 * (1 + erf(x / sqrt 2)) itself once its input is dequantized")
        if hardswishes:
            notes.append(f"{hardswishes} HardSwish(es) after a DequantizeLinear written as integer Add and Mul: "
                         "ONNX Runtime has no integer HardSwish and ran them in float between the integer layers")
        if float_swishes:
            notes.append(f"{float_swishes} HardSwish(es) after a DequantizeLinear left in float: no integer Add "
                         "and Mul gave the float result's output level on every input level")
        return Built(qplan, qdq, events, notes)

    def corrected_layers(self) -> list[str]:
        """The layers bias correction shifted in the default build, in the order it corrected them."""
        return [e.node for e in self().events if e.kind == EventKind.BIAS_SHIFTED]

    def bias_prefix(self, k: int) -> StaticBuilder:
        """This builder with the bias shifts of only the first ``k`` corrected layers kept.  Empirical correction
        goes in graph order, each layer measured with the corrections before it, so these are exactly the shifts
        correcting ``k`` layers would make: no data pass is repeated.  Its other builds (``--max-drop``'s
        candidates with nodes in float, the ranking's nodes alone) correct only those ``k`` layers too: they
        corrected every layer, so the search measured candidates unlike the model the guard had chosen (YOLOv8n,
        first 16 of 64 layers kept, all 64 corrected being 75.6% F1 all-INT8 against 89.2%: its candidates had all
        64 corrected, and --max-drop took 105 s instead of 70 s for the same 57 float Convs)."""
        layers = self.corrected_layers()
        if k >= len(layers) or self._bc_parts is None:
            return self
        if k <= 0:
            return self.probe()
        plain, work, qplan, ranges, qdq_options, fp16 = self._bc_parts
        model = copy.deepcopy(work)
        idx = GraphIndex(model.graph)
        before = GraphIndex(plain.graph)
        nodes = {n.name: n for n in model.graph.node}
        for name in layers[k:]:
            bias, _ = bias_tensor(model, nodes[name], idx)
            old = before.initializers.get(bias)
            set_initializer(model.graph, bias, external.array(old) if old is not None else
                            np.zeros_like(external.array(idx.initializers[bias])))
        qdq, _ = _written(insert_qdq(model, qplan, ranges, qdq_options).model, fp16, self.shared)
        full = self()
        kept = set(layers[:k])
        events = [e for e in full.events if e.kind != EventKind.BIAS_SHIFTED or e.node in kept]
        variant = self._variant()
        variant._bc_layers = frozenset(kept)
        variant._cache[((), None)] = Built(full.plan, qdq, events, list(full.notes))
        return variant

    def _plan(self, work: onnx.ModelProto, options: PlanOptions) -> tuple[QuantPlan, dict]:
        """Plan, then plan again with the nodes that must stay float (each with its reason); the ranges."""
        artifact = self.artifact
        qplan = plan(work, options)
        why: dict[str, reasons.Why] = {}
        if options.act_matmul and any(t not in artifact.observers for t in qplan.calibrated_tensors()):
            alt = plan(work, dataclasses.replace(options, act_matmul=False))
            if all(t in artifact.observers for t in alt.calibrated_tensors()):  # calibrated for attention in float
                options, qplan = dataclasses.replace(options, act_matmul=False), alt
                why.update({n: reasons.NO_ACT_RANGES for n, w in alt.float_nodes.items()
                            if w.reason == reasons.Reason.ACT_MATMUL})
        qplan.float_nodes.update(why)
        ranges = self._ranges(qplan)
        qdq_options = QDQOptions(symmetric_activations=self.res.symmetric, reduce_range=self.res.reduce_range)
        for check in (lambda: range_conflicts(work, qplan, ranges),
                      lambda: self._amplified(work, qplan, ranges),
                      lambda: dict.fromkeys(_unfused(work, qplan, ranges, qdq_options, self.shared["fused"]),
                                            reasons.UNFUSED)):
            found = check()
            if found:  # plan again with those nodes in float, and say why
                why.update(found)
                options = dataclasses.replace(options, exclude=options.exclude + tuple(found))
                qplan = plan(work, options)
                qplan.float_nodes.update(why)
                ranges = self._ranges(qplan)
        return qplan, self._node_method_ranges(work, qplan, ranges)

    def _amplified(self, work: onnx.ModelProto, qplan: QuantPlan,
                   ranges: dict[str, tuple[float, float]]) -> dict[str, reasons.Why]:
        """Quantized depthwise Convs that amplify their input's quantization noise past MAX_DEPTHWISE_AMPLIFICATION
        times their output's step (:func:`~quantcli.quantize.policy.depthwise_amplification`), measured on the
        samples bias correction reads; none without calibration data.

        Where such a layer stays float and an activation lies between it and the quantized output of the layer
        before (:func:`~quantcli.quantize.policy.elementwise_source`), that output's noise passes the activation
        and is amplified alike: the layer before stays float too (it fuses only with a Q on its output) where its
        own step, amplified, passes the same limit (that step from the range it is quantized with).  On PicoDet the
        depthwise layers alone in float left that noise in place (detection F1 vs FP32 62.3% on 96 pages); with the
        three pointwise Convs before them also float (their outputs' noise 59-133x the depthwise output's step)
        83.3%, and x0.87 of FP32's latency instead of x0.99 (no Q/DQ pair left between the float layers).  Not
        applied where the depthwise layer itself stays quantized: PP-LCNet's (doc-orientation) worst, 18x from its
        input and 38x from the layer before (its range not yet clamped at HardSwish's -3), gave output SQNR 52.9 dB,
        54.4 with that layer float, accuracy 100% either way, and that pointwise Conv (2.6% of the MACs) would run
        in float."""
        idx = GraphIndex(work.graph)
        dws = [n for n in work.graph.node if qplan.quantized_nodes.get(n.name) == "Conv" and is_depthwise(n, idx)]
        data = self.res.calibration_data
        if not dws or not data or not Path(data).exists():
            return {}
        cache = self._channel_ranges(work, [t for n in dws for t in (n.input[0], n.output[0])], data)
        out = {}
        for n in dws:
            rho = depthwise_amplification(*cache[n.input[0]], *cache[n.output[0]])
            if rho >= MAX_DEPTHWISE_AMPLIFICATION:
                out[n.name] = reasons.Why(reasons.Reason.AMPLIFIED, (
                    f"depthwise: in a tenth of its channels the noise of its per-tensor quantized input comes out "
                    f"{rho:.0f}x its output's quantization step (per-channel gains spread; limit "
                    f"{MAX_DEPTHWISE_AMPLIFICATION:.0f}x)"))
        for n in [n for n in dws if n.name in out]:  # the layer before, where an activation lies between
            src = elementwise_source(n.input[0], idx)
            node = idx.producer.get(src) if src else None
            if (node is None or node.name in out or node.name not in qplan.quantized_nodes
                    or src not in qplan.activations):
                continue
            lo, hi = ranges[qplan.activations[src]]  # the range it is quantized with (clamped where flat)
            rho = depthwise_amplification(*cache[n.input[0]], *cache[n.output[0]],
                                          noise_range=max(hi, 0.0) - min(lo, 0.0))
            if rho >= MAX_DEPTHWISE_AMPLIFICATION:
                out[node.name] = reasons.Why(reasons.Reason.AMPLIFIED, (
                    f"its output reaches depthwise {n.name} through an activation; in a tenth of that layer's "
                    f"channels its output's quantization noise comes out {rho:.0f}x the depthwise output's step "
                    f"(limit {MAX_DEPTHWISE_AMPLIFICATION:.0f}x)"))
        return out

    def _channel_ranges(self, work: onnx.ModelProto, tensors: list[str], data: str) -> dict:
        """Per-channel minima and maxima (axis 1) of ``tensors`` over the samples bias correction reads, cached
        across the builds of one convert: tensor -> (minima, maxima)."""
        cache = self.shared.setdefault("channel_ranges", {})
        wanted = [t for t in dict.fromkeys(tensors) if t not in cache]
        if wanted:
            from ..calibration.collect import collect_statistics
            from ..calibration.requests import Stat, StatRequest

            reqs = [StatRequest(t, st, 1) for t in wanted for st in (Stat.CHANNEL_MIN, Stat.CHANNEL_MAX)]
            got = collect_statistics(work, reqs, self._batches(data))
            for t in wanted:
                cache[t] = (got.channels[StatRequest(t, Stat.CHANNEL_MIN, 1)].result(),
                            got.channels[StatRequest(t, Stat.CHANNEL_MAX, 1)].result())
        return cache

    def _ranges(self, qplan: QuantPlan) -> dict[str, tuple[float, float]]:
        artifact, s = self.artifact, self.res.convert
        needed = qplan.calibrated_tensors()
        missing = [t for t in needed if t not in artifact.observers]
        if missing:
            hint = (" with --activations symmetric" if self.res.symmetric
                    and artifact.settings.get("activations") != "symmetric" else " with this quantcli version")
            raise QuantcliError(f"{self.calibration or 'calibration'}: has no statistics for tensor '{missing[0]}' "
                                f"({len(missing)} missing); re-run quantcli calibrate{hint}")
        method = s.method.value if s.method else None
        ranges = artifact.ranges(method, s.percentile, symmetric=self.res.symmetric)
        silu = self._silu_tensors(qplan)
        if silu:
            ranges = dict(ranges)
            cache = self.shared.setdefault("silu_ranges", {})
            for t in silu:
                if t not in cache:
                    cache[t] = silu_range(artifact.observers[t], *ranges[t])
                ranges[t] = cache[t]
        flat = self._flat_tensors(qplan)
        if flat:
            ranges = dict(ranges)
            cache = self.shared.setdefault("flat_ranges", {})
            for t, (nodes, result) in flat.items():
                key = (t, ranges[t])
                if key not in cache:
                    cache[key] = flat_range(self.prep.model, nodes, t, result, *ranges[t])
                    if cache[key] != ranges[t]:
                        self.shared.setdefault("flat_clamped", set()).add(t)
                ranges[t] = cache[key]
        return ranges

    def _flat_tensors(self, qplan: QuantPlan) -> dict[str, tuple[list[onnx.NodeProto], str]]:
        """The quantized tensors read only by an activation that is flat past a point
        (:func:`~quantcli.quantize.flat.reader_function`: HardSwish and its decomposed forms, HardSigmoid), whose
        range is clamped there (:func:`~quantcli.quantize.flat.flat_range`); not the SiLU inputs (their own rule,
        whatever the range method) nor with symmetric activations (a range [-a, a] has no side to narrow alone)."""
        if self.res.symmetric:
            return {}
        readers = self.shared.setdefault("flat_readers", {})
        wanted = [t for t in qplan.calibrated_tensors() if t not in readers]
        if wanted:
            idx = GraphIndex(self.prep.model.graph)
            for t in wanted:
                readers[t] = reader_function(idx, t)
        silu = self._silu_inputs()
        return {t: readers[t] for t in qplan.calibrated_tensors() if readers[t] is not None and t not in silu}

    def _silu_inputs(self) -> set[str]:
        """Every SiLU input of the prepared model (:func:`~quantcli.quantize.policy.silu_inputs`), found once."""
        if "silu" not in self.shared:
            self.shared["silu"] = silu_inputs(self.prep.model)
        return self.shared["silu"]

    def _silu_tensors(self, qplan: QuantPlan) -> list[str]:
        """The quantized tensors read only by a SiLU (:func:`~quantcli.quantize.policy.silu_inputs`) whose minmax
        range gets the lower bound minimizing the SiLU output's error
        (:func:`~quantcli.calibration.estimators.silu_range`): not with another range method (asked for) nor
        with symmetric activations (a range [-a, a] has no side to narrow alone).

        These conv outputs must be quantized for ONNX Runtime to fuse the Conv into QLinearConv, and their
        minmax ranges are mostly the SiLU's flat negative side (YOLOv8n's second conv: [-205, 191] -> [-4.1, 191]).
        Measured on the zoo (F1 vs FP32 on 384 images, text = FP32 on 384 captchas): YOLOv8n (57 SiLU inputs)
        86.3 -> 89.2% (NNCF MIXED, which leaves them float, 87.0%; all of them float here 89.5%); YOLOX (74)
        98.1 -> 98.4% (NNCF MIXED 98.6%); CRNN captcha reader (11) 97.4 -> 98.2%; PP-OCRv6 rec (3) 99.0 -> 99.0%
        on its 96 lines (99.2 -> 99.2% on 384).  Clamping them at a fixed -6..-12 instead, measured with every layer
        bias-corrected (before the guard, :func:`~quantcli.quantize.search.guard_bias_correction`), had lowered
        YOLOv8n; under the guard -8 gave 88.8%."""
        method = (self.res.convert.method.value if self.res.convert.method else None) or \
            self.artifact.settings.get("method")
        if method != "minmax" or self.res.symmetric:
            return []
        return sorted(self._silu_inputs() & set(qplan.activations.values()))

    def _range_notes(self, qplan: QuantPlan) -> list[str]:
        artifact, method = self.artifact, self.res.convert.method
        method = method.value if method else None
        notes = [f"ranges re-derived from the calibration statistics with method '{method}'"] if (
            method and method != artifact.settings.get("method")) else []
        silu = self._silu_tensors(qplan)
        flat = len(set(self._flat_tensors(qplan)) & self.shared.get("flat_clamped", set()))
        return notes + [f"ranges: {method or artifact.settings.get('method')} over {artifact.samples} "
                        "calibration samples" + (f"; {len(silu)} SiLU input(s) narrowed to the range minimizing "
                                                 "the SiLU output's error" if silu else "")
                        + (f"; {flat} input(s) of activations flat past a point (HardSwish below -3, "
                           "HardSigmoid past its linear part) clamped there" if flat else "")]

    def _node_method_ranges(self, model: onnx.ModelProto, qplan: QuantPlan, ranges: dict) -> dict:
        """Per-node range methods ([[convert.nodes]] method/percentile) for the tensors those nodes touch."""
        s = self.res.convert
        rules = [r for r in s.nodes if r.precision == NodePrecision.INT8 and (r.method or r.percentile)]
        if not rules:
            return ranges
        ranges = dict(ranges)
        for r in rules:
            method = r.method or s.method
            method = method.value if method else self.artifact.settings["method"]
            pct = r.percentile if r.percentile is not None else (s.percentile or 99.99)
            for t in sorted(_node_tensors(model, qplan, r.match) & set(ranges)):
                ranges[t] = self.artifact.range_of(t, method, pct, self.res.symmetric)
        return ranges

    def _bias_correction(self, work: onnx.ModelProto, qplan: QuantPlan, ranges: dict, options: QDQOptions,
                         only: tuple[str, ...] | None) -> tuple[onnx.ModelProto, list[Event], str | None]:
        bc = self.res.convert.bias_correction
        if bc == BiasCorrection.OFF:
            return work, [], None
        step = bias_correction(bc.value)
        data = self.res.calibration_data
        note = None
        if Need.DATA in step.needs and (not data or not Path(data).exists()):
            recorded = data or (self.artifact.settings.get("data") if self.artifact is not None else None)
            note = (f"empirical bias correction needs the calibration data ({recorded or 'not recorded'} is not "
                    "there): used analytic bias correction instead; pass --data to measure it")
            step = bias_correction(BiasCorrection.ANALYTIC.value)
        axes = {ws.node: ws.axis for ws in qplan.weights if ws.input_index == 1}
        layers = {n.name: axes[n.name] for n in work.graph.node
                  if n.name in axes and (self._bc_layers is None or n.name in self._bc_layers)}
        on_layer = self.progress("bias correction", len(layers)) if only is None and Need.DATA in step.needs else None
        ctx = PassContext(plan=qplan, ranges=ranges, qdq=options, layers=layers, prepared=self.prep,
                          batches=lambda: self._batches(data), on_layer=on_layer,
                          float_means=self.shared["float_means"])
        r = step.run(work, ctx)
        return r.model, r.events, note

    def held(self, data: str, limit: int | None, labels: str | None = None) -> tuple[list[dict], object]:
        """The first ``limit`` samples of ``data`` as batches, with their labels: read once per convert and
        shared by empirical bias correction, --weights auto and --max-drop where they measure on the same
        data."""
        key = (str(data), labels, limit)
        if key not in self.shared["held"]:
            from ..data.sources import Dataset, class_count, input_specs
            from ..sensitivity import held_batches

            self.shared["held"][key] = held_batches(Dataset(data, input_specs(self.model), labels_path=labels,
                                                            classes=class_count(self.model), config=self.res.data),
                                                    limit)
        return self.shared["held"][key]

    def _batches(self, data: str) -> list[dict]:
        return self.held(data, self.bias_correction_samples(data))[0]

    def bias_correction_samples(self, data: str) -> int:
        """How many calibration samples empirical bias correction's budget takes (:func:`sample_budget`), from
        the size of one: only those are read (PP-OCRv4 det at 480x480 held all 128 samples, 354 MB, for 8)."""
        from .empirical_bias import BUDGET_VALUES, MAX_SAMPLES, MIN_SAMPLES

        first = self.held(data, 1)[0][0]
        per = sum(int(np.size(v)) for v in first.values()) / max(len(next(iter(first.values()))), 1)
        return int(min(MAX_SAMPLES, max(MIN_SAMPLES, -(-BUDGET_VALUES // max(per, 1)) + 1)))


def _unfused(work: onnx.ModelProto, qplan: QuantPlan, ranges: dict, options: QDQOptions,
             fused: dict[str, bool]) -> list[str]:
    """Heavy nodes of the plan that ONNX Runtime's CPU optimizer does not fuse into an integer kernel,
    checked on a probe Q/DQ model (fusion depends on the graph, not on the exact ranges) unless ``fused``
    already knows every one of them (it learns the probed ones: other exclusions rarely change a node's
    fusion, and --max-drop builds a dozen plans)."""
    from ..validate.coverage import integer_status

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


def _written(qdq: onnx.ModelProto, fp16: tuple[str, ...],
             shared: dict) -> tuple[onnx.ModelProto, tuple[int, int, int]]:
    """The Q/DQ model as written, with how many GELUs and HardSwishes were rewritten: decomposed GELUs after a
    DequantizeLinear as one Gelu op (:func:`~quantcli.quantize.gelu.write_gelus`), HardSwishes after one as
    integer Add and Mul (:func:`~quantcli.quantize.hardswish.write_hardswishes`; the third count: HardSwishes left
    in float as no integer gate was exact; its verdicts kept in ``shared``, the builder's per-convert state);
    neither where nodes run in FP16, where the FP16 nodes are converted instead."""
    if fp16:
        return _half_nodes(qdq, fp16), (0, 0, 0)
    return qdq, (write_gelus(qdq), *write_hardswishes(qdq, shared.setdefault("hardswish", {})))


def _half_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> onnx.ModelProto:
    """Run the nodes matching ``patterns`` in FP16 inside an otherwise INT8/FP32 model (casts around them)."""
    from .half import convert_to_half

    others = tuple(n.name for n in model.graph.node if not is_excluded(n, patterns))
    half, _ = convert_to_half(model, "fp16", keep_nodes=others)
    return half
