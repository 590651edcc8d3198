"""Quantization schemes, each returning one :class:`SchemeResult` shape: static INT8, dynamic INT8, weight-only
INT4, FP16/BF16.

:func:`apply_scheme` picks the scheme the resolved settings ask for.  A new scheme (e.g. INT4 weight-only) is
one more function here with the same signature and result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from ..calibration.artifact import CalibrationArtifact
from ..recipe import ActMatmul, NodePrecision, WeightAlgorithm, Weights
from ..settings import Resolved
from ..transforms.graph import Event, EventKind
from ..transforms.passes import CLE, SMOOTHQUANT, Prepared
from . import reasons
from .policy import is_excluded, resolve_presets
from .reasons import Reason, Why
from .search import SearchResult, auto_weight_granularity, guard_bias_correction, mixed_precision
from .static import Progress, StaticBuilder, no_progress


@dataclasses.dataclass
class SchemeResult:
    model: onnx.ModelProto
    quantized: dict[str, str]               # node -> op type ("*" -> count for FP16/BF16)
    float_nodes: dict[str, Why]             # node -> why it stays float
    absorbed: list[str] = dataclasses.field(default_factory=list)
    quantized_tensors: int = 0
    events: list[Event] = dataclasses.field(default_factory=list)  # per layer: CLE, bias correction
    notes: list[str] = dataclasses.field(default_factory=list)
    search: SearchResult | None = None

    @property
    def transforms(self) -> list[str]:
        """The per-layer lines of the report (CLE pairs and skips, bias shifts)."""
        return [str(e) for e in self.events]


def half(model: onnx.ModelProto, res: Resolved) -> SchemeResult:
    from .half import convert_to_half

    new_model, rep = convert_to_half(model, res.convert.precision.value, keep_nodes=tuple(res.convert.exclude),
                                     keep_op_types=None)
    kept = {n: reasons.EXCLUDED if why == reasons.EXCLUDED.detail else Why(Reason.HALF_KEPT, why)
            for n, why in rep.kept_float}
    notes = list(rep.notes)
    if rep.clamped_initializers:
        notes.append(f"{len(rep.clamped_initializers)} initializer(s) clamped to the half range: "
                     + ", ".join(rep.clamped_initializers[:5]))
    return SchemeResult(new_model, {"*": f"{rep.converted_nodes} nodes"}, kept, notes=notes)


def dynamic(prep: Prepared, res: Resolved) -> SchemeResult:
    from .dynamic import quantize_dynamic

    r, quantized, kept = quantize_dynamic(prep.model, per_channel=res.per_channel, reduce_range=res.reduce_range,
                                          exclude=resolve_presets(prep.model, res.convert.exclude))
    return SchemeResult(r.model, quantized, kept)


def int4(prep: Prepared, res: Resolved, progress: Progress = no_progress) -> SchemeResult:
    from .int4 import accuracy_level, plan_int4, quantize_int4

    from ..errors import QuantcliError
    from .blockwise import BLOCK_SIZES

    s = res.convert
    if s.block_size not in BLOCK_SIZES:
        raise QuantcliError(f"--block-size {s.block_size}: MatMulNBits takes a power of two: "
                            f"{', '.join(map(str, BLOCK_SIZES))}")
    grams, how = None, "round to nearest"
    planned = plan_int4(prep.model, res)
    if s.algorithm != WeightAlgorithm.RTN:
        grams, samples = _input_grams(prep.model, [n for n in planned[0] if n.op_type != "Gather"], res, progress)
        how = f"{s.algorithm.value.upper()} on {samples} calibration samples"
    model, quantized, kept, notes = quantize_int4(prep.model, res, grams, planned)
    gathers = sum(op == "Gather" for op in quantized.values())
    note = (f"int4 weight-only: {len(quantized) - gathers} MatMul/Gemm weight(s)"
            f"{f' and {gathers} embedding table(s) (GatherBlockQuantized)' if gathers else ''} in {s.block_size}-value blocks "
            f"({'symmetric' if s.symmetric_weights else 'zero point per block'}), {how}; "
            f"MatMulNBits accuracy_level {accuracy_level(res.cpu)} on this CPU")
    return SchemeResult(model, quantized, kept, notes=[note] + notes)


def _input_grams(model: onnx.ModelProto, nodes: list, res: Resolved, progress: Progress) -> tuple[dict, int]:
    """X^T X of each layer's input over the calibration data, from one statistics pass (GPTQ's Hessians)."""
    from ..calibration.collect import collect_statistics
    from ..calibration.requests import Stat, StatRequest
    from ..data.sources import Dataset, input_specs
    from ..errors import QuantcliError

    data = res.calibration_data
    if not data:
        raise QuantcliError(f"convert --algorithm {res.convert.algorithm.value} needs calibration data: pass --data PATH")
    cal = res.calibrate
    ds = Dataset(data, input_specs(model), config=res.data)
    bs = ds.default_batch_size(cal.batch_size if cal else None)
    limit = cal.samples if cal else None
    requests = list(dict.fromkeys(StatRequest(n.input[0], Stat.GRAM, axis=-1) for n in nodes))
    got = collect_statistics(model, requests, ds.batches(bs, limit),
                             on_batch=progress("GPTQ statistics", ds.count_used(bs, limit)))
    return {r.tensor: (got.channels[r].result(), got.channels[r].count) for r in requests}, got.samples


def static(model: onnx.ModelProto, prep: Prepared, res: Resolved, artifact: CalibrationArtifact, *,
           calibration: str | Path | None = None, progress: Progress = no_progress) -> SchemeResult:
    s = res.convert
    if any(r.precision == NodePrecision.INT4 for r in s.nodes):
        from ..errors import QuantcliError

        raise QuantcliError("node rules with precision=int4 need --precision int4 (weight-only)")
    notes: list[str] = []
    build = StaticBuilder(model, prep, res, artifact, calibration=calibration, progress=progress)
    if s.weights == Weights.AUTO and res.per_channel:
        build, note = auto_weight_granularity(model, build)
        notes += [note] if note else []
    build, note = guard_bias_correction(model, build)  # with --max-drop --metric, by that metric
    notes += [note] if note else []
    built = build()
    search = None
    if s.max_drop is not None:
        built, search, note = mixed_precision(model, prep, build)
        notes.append(note)
    notes = built.notes + notes
    act_float = [n for n, why in built.plan.float_nodes.items() if why.reason == Reason.ACT_MATMUL]
    if act_float and s.act_matmul == ActMatmul.AUTO:
        why = (f"their head dimension is below {res.act_matmul_min_dim}, where int8 kernels run slower than float "
               "even on this CPU" if res.act_matmul else "this CPU computes int8 no faster than FP32")
        notes.append(f"act-matmul auto: {len(act_float)} MatMul(s) of two activations (attention) kept float: "
                     f"{why}, so quantizing their inputs at run time would only add time; --act-matmul int8 "
                     "quantizes them")
    if built.events:
        shifted = sum(e.kind == EventKind.BIAS_SHIFTED for e in built.events)
        notes.append(f"bias correction ({s.bias_correction.value}): {shifted} layer(s) corrected")
    float_nodes = dict(built.plan.float_nodes)
    float_nodes.update(_rule_reasons(prep.model, res, float_nodes))
    for rank_i, name in enumerate(search.float_nodes if search else [], 1):
        float_nodes[name] = Why(Reason.MAX_DROP, f"kept float by the --max-drop search (sensitivity rank {rank_i})")
    return SchemeResult(built.model, dict(built.plan.quantized_nodes), float_nodes, sorted(built.plan.absorbed),
                        len(built.plan.activations) + len(built.plan.shared), list(built.events), notes, search)


def _rule_reasons(model: onnx.ModelProto, res: Resolved, float_nodes: dict[str, Why]) -> dict[str, Why]:
    """Nodes kept float by a per-node rule (fp32 / fp16) say so instead of "excluded"."""
    out = {}
    for node in model.graph.node:
        for r in res.convert.nodes:
            if r.precision != NodePrecision.INT8 and node.name in float_nodes and (
                    is_excluded(node, (r.match,)) or node.name in resolve_presets(model, (r.match,))):
                out[node.name] = Why(Reason.NODE_RULE, "runs in FP16 (node rule)" if r.precision == NodePrecision.FP16
                                     else "kept FP32 (node rule)")
    return out


def preparation_events(prep: Prepared) -> tuple[dict[str, Why], list[Event]]:
    """BatchNorms left unfolded (float, with the reason), the CLE pairs and SmoothQuant's layer inputs, each with
    what was skipped (per-layer report lines)."""
    unfolded = {n: Why(Reason.NOT_FOLDED, why) for n, why in prep.results["fold-batchnorm"].skipped}
    events: list[Event] = []
    for name, verb in ((CLE, "equalized"), (SMOOTHQUANT, "smoothed")):
        r = prep.results.get(name)
        if r is not None:
            events += [e for e in r.events if e.kind != EventKind.SKIPPED] + [
                e if e.detail.startswith("not ") else dataclasses.replace(e, detail=f"not {verb} ({e.detail})")
                for e in r.events if e.kind == EventKind.SKIPPED]
    return unfolded, events


def apply_scheme(model: onnx.ModelProto, prep: Prepared | None, res: Resolved,
                 artifact: CalibrationArtifact | None, *, calibration=None, progress: Progress = no_progress
                 ) -> SchemeResult:
    if res.scheme == "half":
        return half(model, res)
    if res.scheme == "static":
        result = static(model, prep, res, artifact, calibration=calibration, progress=progress)
    else:
        result = dynamic(prep, res) if res.scheme == "dynamic" else int4(prep, res, progress)
    unfolded, cle_events = preparation_events(prep)
    result.float_nodes = {**unfolded, **result.float_nodes}
    result.events = cle_events + result.events
    return result
