"""The Python API: :func:`calibrate`, :func:`convert`, :func:`compare`, and :func:`run` for all three.

The CLI calls these and tests use them; they return result objects and never print.  Each step checks
its inputs first (files, data against the model, output path), does its work in memory, and writes
its outputs atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import modelio
from .calibration.artifact import CalibrationArtifact, load_artifact
from .calibration.collect import collect_statistics
from .cpu import detect as detect_cpu
from .data.sources import Dataset, input_specs
from .errors import InternalError, QuantcliError
from .int8 import (auto_weight_granularity, builder, eval_dataset, mixed_precision, quantize_act_matmul,
                   sensitivities_alone)
from .manifest import build_manifest
from .metrics import FidelityAccumulator, agreement_count, topk_correct
from .quantize.policy import ACT_MATMUL_REASON, PlanOptions, plan, resolve_presets
from .recipe import (AcceptSettings, ActMatmul, Activations, CalibrateSettings, NodePrecision, to_plain, CompareSettings,
                     ConvertSettings, Mode, Precision, Recipe, ReduceRange, Weights)
from .results import (CalibrationResult, CompareResult, ConvertResult, CoverageSummary, Criterion, InspectResult,
                      OutputCheck, OutputFidelity, RunResult)
from .runtime.bench import compare_latency
from .runtime.session import make_session
from .runtime.session import run as run_session
from .transforms.passes import CLE, Prepared, agreed_passes, prepare

Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def _no_progress(desc: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# -- preparation shared by calibrate and convert ------------------------------------------------------
def calibration_tensors(prepared: onnx.ModelProto, activations: Activations = Activations.ASYMMETRIC,
                        act_matmul: bool | None = None) -> list[str]:
    """The tensors convert needs ranges for with this activation scheme, plus the outputs of layout ops
    (which normally share their input's range but need their own when ``--exclude`` cuts them off).

    Asymmetric activations absorb Relu/Clip into their producer's range, so the producer's own output
    is not needed: tapping fewer tensors keeps ONNX Runtime's Conv+Relu fusions in the tap model.  The
    inputs of MatMuls of two activations are observed only where convert will quantize them (``act_matmul``,
    default: what ``--act-matmul auto`` decides on this CPU).
    """
    if act_matmul is None:
        act_matmul = quantize_act_matmul(ConvertSettings())
    p = plan(prepared, PlanOptions(symmetric_activations=activations == Activations.SYMMETRIC, act_matmul=act_matmul))
    return sorted(set(p.calibrated_tensors()) | set(p.shared))


def _open_dataset(path: str | None, model: onnx.ModelProto, what: str, **kw) -> Dataset:
    if not path:
        raise QuantcliError(f"{what}: no data given (use --data PATH or set it in the recipe)")
    return Dataset(path, input_specs(model), **kw)


# -- calibrate ------------------------------------------------------------------------------------------
def calibrate(model_path: str | Path, out_path: str | Path, settings: CalibrateSettings, *,
              convert_settings: ConvertSettings | None = None,
              progress: Progress = _no_progress) -> CalibrationResult:
    """Observe the tensors that convert, with ``convert_settings`` (activation scheme, CLE), will quantize."""
    t0 = time.perf_counter()
    model = modelio.load_model(model_path)
    out = modelio.check_output_path(out_path, model_path, settings.data)
    artifact, pass_seconds = _calibrate_model(model, str(model_path), settings, progress,
                                              convert_settings or ConvertSettings())
    modelio.write_text_atomic(out, artifact.to_json())
    ranges = artifact.ranges()
    return CalibrationResult(str(out), artifact.model_sha256, artifact.samples, len(artifact.observers),
                             settings.method.value, time.perf_counter() - t0, ranges, pass_seconds,
                             artifact.manifest)


def _calibrate_model(model: onnx.ModelProto, model_path: str, settings: CalibrateSettings, progress: Progress,
                     conv: ConvertSettings, tensors: list[str] | None = None,
                     prepared: onnx.ModelProto | None = None) -> tuple[CalibrationArtifact, float]:
    dataset = _open_dataset(settings.data, model, "calibrate")
    prepared = prepared if prepared is not None else prepare(model, cle=conv.cle).model
    act_matmul = quantize_act_matmul(conv)
    tensors = tensors if tensors is not None else calibration_tensors(prepared, conv.activations, act_matmul)
    if not tensors:
        raise QuantcliError(f"{model_path}: nothing to calibrate (no quantizable Conv/MatMul/Gemm with float inputs)")
    bs = dataset.default_batch_size(settings.batch_size)
    used = dataset.count_used(bs, settings.samples)
    if used == 0:
        raise QuantcliError(f"{settings.data}: fewer samples than the model's fixed batch size {bs}")
    advance = progress("calibrating", used)
    observers, seen, pass_seconds = collect_statistics(prepared, tensors, dataset.batches(bs, settings.samples),
                                                       bins=settings.bins, expected_batches=-(-used // bs),
                                                       on_batch=advance)
    cal_settings = {"method": settings.method.value, "percentile": settings.percentile, "bins": settings.bins,
                    "batch_size": bs, "data": str(settings.data), "samples": settings.samples,
                    "activations": conv.activations.value, "cle": conv.cle, "act_matmul": act_matmul}
    sha = modelio.file_sha256(model_path)
    artifact = CalibrationArtifact(sha, str(model_path), seen, cal_settings, observers,
                                   build_manifest(model_path, sha, {"calibrate": cal_settings}),
                                   agreed_passes(cle=conv.cle))
    return artifact, pass_seconds


# -- convert --------------------------------------------------------------------------------------------
def convert(model_path: str | Path, out_path: str | Path, settings: ConvertSettings, *,
            calibration: str | Path | None = None, calib_settings: CalibrateSettings | None = None,
            progress: Progress = _no_progress) -> ConvertResult:
    t0 = time.perf_counter()
    model = modelio.load_model(model_path)
    out = modelio.check_output_path(out_path, model_path, calibration)
    cpu = detect_cpu()
    notes: list[str] = []
    transforms: list[str] = []
    float_nodes: dict[str, str] = {}
    quantized: dict[str, str] = {}
    absorbed: list[str] = []
    n_tensors = 0
    search = None
    artifact = None
    prepared = model
    reduce_range = settings.reduce_range == ReduceRange.ON or (
        settings.reduce_range == ReduceRange.AUTO and cpu.u8s8_saturates)
    if settings.precision == Precision.INT8 and settings.reduce_range == ReduceRange.AUTO:
        notes.append(f"CPU INT8 path: {cpu.int8_path}; weights {'7-bit (reduce range)' if reduce_range else 'full 8-bit'}")
    if settings.precision == Precision.INT8 and cpu.int8_speed_note:
        notes.append(f"speed: {cpu.int8_speed_note}")

    if settings.precision in (Precision.FP16, Precision.BF16):
        from .quantize.half import convert_to_half

        new_model, rep = convert_to_half(model, settings.precision.value, keep_nodes=tuple(settings.exclude),
                                         keep_op_types=None)
        float_nodes = {n: why for n, why in rep.kept_float}
        quantized = {"*": f"{rep.converted_nodes} nodes"}
        notes += list(rep.notes)
        if rep.clamped_initializers:
            notes.append(f"{len(rep.clamped_initializers)} initializer(s) clamped to the half range: "
                         + ", ".join(rep.clamped_initializers[:5]))
    else:
        prep = prepare(model, cle=settings.cle)
        prepared = prep.model
        notes += prep.notes
        float_nodes.update(prep.results["fold-batchnorm"].skipped)
        if CLE in prep.results:
            cle = prep.results[CLE]
            transforms += cle.changed + [f"{n}: not equalized ({why})" for n, why in cle.skipped]
        per_channel = settings.weights != Weights.PER_TENSOR
        if per_channel and modelio.model_opset(prepared) < 13:
            per_channel = False
            notes.append("per-channel weights need opset 13: using per-tensor weights")
        if settings.mode == Mode.DYNAMIC:
            from .quantize.dynamic import quantize_dynamic

            r, quantized, kept = quantize_dynamic(prepared, per_channel=per_channel, reduce_range=reduce_range,
                                                  exclude=resolve_presets(prepared, settings.exclude))
            new_model = r.model
            float_nodes.update(kept)
        else:
            artifact = _artifact_for(model, model_path, prep, settings, calibration, calib_settings, progress)
            def make_build(s: ConvertSettings):
                return builder(model, prep, s, per_channel, reduce_range, artifact, calibration, calib_settings,
                               progress, notes)

            build = make_build(settings)
            if settings.weights == Weights.AUTO and per_channel:
                build = auto_weight_granularity(model, settings, build, make_build, artifact, calib_settings, notes)
            qplan, new_model, bc_report = build()
            if settings.max_drop is not None:
                qplan, new_model, bc_report, search = mixed_precision(model, prep, settings, qplan, new_model,
                                                                       bc_report, build, artifact, calib_settings,
                                                                       notes)
            transforms += bc_report
            act_float = [n for n, why in qplan.float_nodes.items() if why == ACT_MATMUL_REASON]
            if act_float and settings.act_matmul == ActMatmul.AUTO:
                notes.append(f"act-matmul auto: {len(act_float)} MatMul(s) of two activations (attention) kept float: "
                             "this CPU computes int8 no faster than FP32, so quantizing their inputs at run time "
                             "would only add time; --act-matmul int8 quantizes them")
            if bc_report:
                notes.append(f"bias correction ({settings.bias_correction.value}): "
                             f"{sum('shifted' in line for line in bc_report)} layer(s) corrected")
            quantized, absorbed = dict(qplan.quantized_nodes), sorted(qplan.absorbed)
            float_nodes.update(qplan.float_nodes)
            from .quantize.policy import is_excluded

            for node in prep.model.graph.node:
                for r in settings.nodes:
                    if r.precision != NodePrecision.INT8 and node.name in float_nodes and (
                            is_excluded(node, (r.match,)) or node.name in resolve_presets(prep.model, (r.match,))):
                        float_nodes[node.name] = ("runs in FP16 (node rule)" if r.precision == NodePrecision.FP16
                                                  else "kept FP32 (node rule)")
            for rank_i, name in enumerate(search["float_nodes"] if search else [], 1):
                float_nodes[name] = f"kept float by the --max-drop search (sensitivity rank {rank_i})"
            n_tensors = len(qplan.activations) + len(qplan.shared)

    new_model.producer_name = "quantcli"
    from . import __version__
    new_model.producer_version = __version__
    manifest = build_manifest(model_path, modelio.file_sha256(model_path), {
        "convert": _settings_dict(settings), "calibration": str(calibration) if calibration else None,
        "calibrate": _plain(calib_settings) if calib_settings and calibration is None else None})
    _set_metadata(new_model, "quantcli.manifest", json.dumps(manifest, sort_keys=True))
    data_path = (calib_settings.data if calib_settings and calib_settings.data else None) or (
        artifact.settings.get("data") if artifact is not None else None)
    feeds = _validation_feeds(model, data_path)
    checks = _write_validated(new_model, model, out, feeds)
    coverage = None
    if settings.precision == Precision.INT8:
        coverage = _coverage(new_model, feeds, prepared)
    return ConvertResult(str(out), settings.precision.value, settings.mode.value, _settings_dict(settings),
                         quantized, float_nodes, absorbed, n_tensors, modelio.model_size_bytes(model_path),
                         modelio.model_size_bytes(out), checks, coverage, notes, cpu.summary(),
                         time.perf_counter() - t0, transforms, manifest, search)


def _settings_dict(settings: ConvertSettings) -> dict:
    return _plain(settings)


def _plain(settings) -> dict:
    """A settings dataclass as plain JSON-able values (enums by value)."""
    return to_plain(settings)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _artifact_for(model, model_path, prep: Prepared, settings: ConvertSettings, calibration,
                  calib_settings: CalibrateSettings | None, progress: Progress) -> CalibrationArtifact:
    """The calibration artifact: loaded (and checked against this model and settings) or made now."""
    if calibration is not None:
        artifact = load_artifact(calibration)
        sha = modelio.file_sha256(model_path)
        if artifact.model_sha256 != sha:
            raise QuantcliError(f"{calibration}: made for another model (sha256 {artifact.model_sha256[:12]}..., "
                                f"{model_path} is {sha[:12]}...); re-run quantcli calibrate on this model")
        _check_passes(calibration, artifact.passes, prep.agreed)
        return artifact
    if calib_settings is not None and calib_settings.data:
        artifact, _ = _calibrate_model(model, str(model_path), calib_settings, progress, settings,
                                       prepared=prep.model)
        return artifact
    raise QuantcliError("convert: static INT8 needs ranges: give --calibration CALIB.json or --data PATH "
                        "(or use --mode dynamic, or --precision fp16)")


def _check_passes(calibration, calibrated: list[str], converting: list[str]) -> None:
    """Calibrate and convert must apply the same ``agree`` passes (they change the activations measured)."""
    if calibrated == converting:
        return
    only_cal = [p for p in calibrated if p not in converting]
    only_conv = [p for p in converting if p not in calibrated]
    if CLE in only_cal + only_conv:
        on = "on" if CLE in calibrated else "off"
        raise QuantcliError(f"{calibration}: calibrated with cross-layer equalization {on}, but convert has it "
                            f"{'on' if CLE in converting else 'off'}; run calibrate and convert with the same --cle")
    raise QuantcliError(f"{calibration}: calibrated with preparation passes that differ from convert's "
                        f"(only in the calibration: {', '.join(only_cal) or '-'}; only in convert: "
                        f"{', '.join(only_conv) or '-'}); re-run quantcli calibrate")


def _validation_feeds(model: onnx.ModelProto, data_path: str | None) -> dict[str, np.ndarray]:
    """One batch-1 input for the post-write check: the first data sample, else seeded synthetic data."""
    specs = input_specs(model)
    if data_path and Path(data_path).exists():
        try:
            ds = Dataset(data_path, specs)
            return next(ds.batches(1, limit=1))
        except QuantcliError:
            pass
    rng = np.random.default_rng(0)
    feeds = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        shape[:1] = [1] if shape else []
        if s.dtype.kind == "f":
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            feeds[s.name] = np.zeros(shape, s.dtype)
    return feeds


def _write_validated(new_model: onnx.ModelProto, reference: onnx.ModelProto, out: Path,
                     feeds: dict[str, np.ndarray]) -> list[OutputCheck]:
    """Checker, ONNX Runtime load and one forward pass against the FP32 model, then the atomic rename."""
    data = modelio.serialize_model(new_model)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise InternalError(f"the converted model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    try:
        qs = make_session(new_model, what="converted model")
    except QuantcliError as exc:
        raise InternalError(str(exc)) from None
    ref = run_session(make_session(reference, what="input model"), feeds, what="input model")
    got = run_session(qs, feeds, what="converted model")
    checks = []
    for o, r, q in zip(qs.get_outputs(), ref, got):
        if np.shape(r) != np.shape(q):
            raise InternalError(f"converted model output '{o.name}' has shape {np.shape(q)}, FP32 has {np.shape(r)}")
        if np.issubdtype(np.asarray(q).dtype, np.floating) and not np.isfinite(q).all() and np.isfinite(r).all():
            raise InternalError(f"converted model output '{o.name}' has NaN/Inf where the FP32 model has none")
        acc = FidelityAccumulator()
        if np.issubdtype(np.asarray(r).dtype, np.number):
            acc.update(r, q)
        checks.append(OutputCheck(o.name, acc.cosine, acc.sqnr_db, acc.max_abs))
    modelio.write_bytes_atomic(out, data)
    return checks


# -- compare --------------------------------------------------------------------------------------------
def compare(fp32_path: str | Path, quant_path: str | Path, settings: CompareSettings, *,
            progress: Progress = _no_progress) -> CompareResult:
    fp32 = modelio.load_model(fp32_path)
    quant = modelio.load_model(quant_path)
    names_a = [s.name for s in input_specs(fp32)]
    names_b = [s.name for s in input_specs(quant)]
    if sorted(names_a) != sorted(names_b):
        raise QuantcliError(f"{quant_path}: inputs {names_b} do not match the FP32 model's {names_a}")
    ds = _open_dataset(settings.data, fp32, "compare", labels_path=settings.labels)
    sa = make_session(fp32, threads=settings.threads, what=str(fp32_path), spinning=False)
    sb = make_session(quant, threads=settings.threads, what=str(quant_path), spinning=False)
    out_names = [o.name for o in sa.get_outputs()]
    if [o.name for o in sb.get_outputs()] != out_names:
        raise QuantcliError(f"{quant_path}: outputs differ from the FP32 model's ({', '.join(out_names)})")
    bs = ds.default_batch_size(None)
    total = ds.count_used(bs)
    advance = progress("evaluating", total)
    fid = [FidelityAccumulator() for _ in out_names]
    agree = [0 for _ in out_names]
    argmaxable = [True for _ in out_names]
    correct = {1: [0, 0], 5: [0, 0]}
    classes = None
    seen = 0
    first = None
    for feeds in ds.batches(bs):
        n = len(next(iter(feeds.values())))
        if first is None:
            first = {k: v[:1] for k, v in feeds.items()}
        ra = run_session(sa, feeds, what=str(fp32_path))
        rb = run_session(sb, feeds, what=str(quant_path))
        for i, (a, b) in enumerate(zip(ra, rb)):
            fid[i].update(a, b)
            if np.ndim(a) >= 2 and np.shape(a)[-1] > 1 and np.shape(a)[0] == n:
                agree[i] += agreement_count(a, b)
            else:
                argmaxable[i] = False
        if ds.labels is not None:
            labels = ds.labels[seen:seen + n]
            logits_a, logits_b = ra[0].reshape(n, -1), rb[0].reshape(n, -1)
            classes = logits_a.shape[1]
            for k in (1, 5):
                if k <= classes:
                    correct[k][0] += topk_correct(logits_a, labels, k)
                    correct[k][1] += topk_correct(logits_b, labels, k)
        seen += n
        advance(n)
    outputs = [OutputFidelity(name, agree[i] / seen if argmaxable[i] else None, fid[i].cosine, fid[i].sqnr_db,
                              fid[i].max_abs) for i, name in enumerate(out_names)]
    top1 = top5 = None
    if ds.labels is not None:
        top1 = (100.0 * correct[1][0] / seen, 100.0 * correct[1][1] / seen)
        if classes and classes > 5:
            top5 = (100.0 * correct[5][0] / seen, 100.0 * correct[5][1] / seen)
    lat_a, lat_b = compare_latency(sa, sb, first, runs=settings.runs, warmup=settings.warmup)
    notes = []
    ratio = lat_b.ratio_to(lat_a)
    if ratio > 1.05:  # beyond the run-to-run noise of sub-millisecond models
        why = detect_cpu().int8_speed_note or "`quantcli inspect` shows what runs outside integer kernels"
        notes.append(f"the quantized model is x{ratio:.2f} the FP32 latency here; {why}")
    return CompareResult(str(fp32_path), str(quant_path), seen, top1, top5, outputs,
                         (lat_a.median_ms, lat_b.median_ms), (lat_a.p90_ms, lat_b.p90_ms), settings.threads,
                         (modelio.model_size_bytes(fp32_path), modelio.model_size_bytes(quant_path)),
                         settings.max_drop,
                         build_manifest(fp32_path, modelio.file_sha256(fp32_path), {"compare": _plain(settings)}),
                         notes, ratio)


# -- run: the whole job from one recipe ------------------------------------------------------------------
def run(recipe: Recipe, *, progress: Progress = _no_progress) -> RunResult:
    """calibrate -> convert -> compare from one recipe, then check the recipe's acceptance criteria."""
    where = recipe.source or "recipe"
    if not recipe.run.model:
        raise QuantcliError(f"{where}: [run] model is not set (or pass --model)")
    if not recipe.run.output:
        raise QuantcliError(f"{where}: [run] output is not set (or pass -o)")
    if not recipe.compare.data:
        raise QuantcliError(f"{where}: [compare] data is not set: run needs evaluation data (or pass --eval-data)")
    model, output = recipe.run.model, recipe.run.output
    modelio.check_output_path(output, model)
    static = recipe.convert.precision == Precision.INT8 and recipe.convert.mode == Mode.STATIC
    cal = None
    if static:
        if not recipe.calibrate.data:
            raise QuantcliError(f"{where}: [calibrate] data is not set: static INT8 needs calibration data")
        cal_path = recipe.run.calibration or f"{output}.calib.json"
        cal = calibrate(model, cal_path, recipe.calibrate, convert_settings=recipe.convert, progress=progress)
    conv = convert(model, output, recipe.convert, calibration=cal.output if cal else None,
                   calib_settings=recipe.calibrate, progress=progress)
    cmp = compare(model, output, recipe.compare, progress=progress)
    criteria = acceptance(recipe.accept, conv, cmp)
    return RunResult(recipe.to_dict(), cal, conv, cmp, criteria,
                     build_manifest(model, modelio.file_sha256(model), recipe.to_dict()))


def acceptance(accept: AcceptSettings, conv: ConvertResult, cmp: CompareResult) -> list[Criterion]:
    out = []
    max_drop = accept.max_drop if accept.max_drop is not None else cmp.max_drop
    if max_drop is not None:
        out.append(Criterion(f"max {cmp.metric} drop", max_drop, cmp.drop, cmp.drop <= max_drop + 1e-9, " pts"))
    if accept.min_int8_coverage is not None:
        share = 100.0 * conv.coverage.mac_share if conv.coverage else 0.0
        out.append(Criterion("min INT8 MAC coverage", accept.min_int8_coverage, share,
                             share >= accept.min_int8_coverage - 1e-9, "%"))
    if accept.max_latency_ratio is not None:
        out.append(Criterion("max latency ratio", accept.max_latency_ratio, cmp.latency_ratio,
                             cmp.latency_ratio <= accept.max_latency_ratio))
    if accept.max_size_mb is not None:
        mb = conv.size_after / 1e6
        out.append(Criterion("max model size", accept.max_size_mb, mb, mb <= accept.max_size_mb, " MB"))
    return out


# -- inspect ----------------------------------------------------------------------------------------------
def _coverage(model: onnx.ModelProto, feeds: dict[str, np.ndarray], reference: onnx.ModelProto | None = None):
    from .validate.coverage import int8_coverage

    cov = int8_coverage(model, {k: v.shape for k, v in feeds.items()}, reference=reference, feeds=feeds)
    return CoverageSummary(cov.integer_nodes, cov.float_heavy, cov.dq_left, cov.mac_share, cov.macs_total)


def inspect(model_path: str | Path, *, data: str | None = None, min_coverage: float | None = None) -> InspectResult:
    """Let ONNX Runtime optimize ``model_path`` for the CPU and report what runs in integer kernels."""
    model = modelio.load_model(model_path)
    feeds = _validation_feeds(model, data)
    cpu = detect_cpu()
    return InspectResult(str(model_path), {k: list(v.shape) for k, v in feeds.items()}, _coverage(model, feeds),
                         cpu.summary(), cpu.int8_path, min_coverage,
                         build_manifest(model_path, modelio.file_sha256(model_path), {"inspect": {"data": data}}))


# -- analyze ----------------------------------------------------------------------------------------------
def analyze(model_path: str | Path, settings: ConvertSettings, *, calibration: str | Path | None = None,
            calib_settings: CalibrateSettings | None = None, labels: str | None = None,
            progress: Progress = _no_progress):
    """Per-node sensitivity: (a) each node quantized alone, (b) each node's SQNR inside the all-INT8 model."""
    from .results import AnalyzeResult
    from .sensitivity import Evaluator, node_output_sqnr, rank

    t0 = time.perf_counter()
    model = modelio.load_model(model_path)
    prep = prepare(model, cle=settings.cle)
    per_channel = settings.weights != Weights.PER_TENSOR and modelio.model_opset(prep.model) >= 13
    reduce_range = settings.reduce_range == ReduceRange.ON or (
        settings.reduce_range == ReduceRange.AUTO and detect_cpu().u8s8_saturates)
    artifact = _artifact_for(model, model_path, prep, settings, calibration, calib_settings, progress)
    notes: list[str] = []
    build = builder(model, prep, settings, per_channel, reduce_range, artifact, calibration, calib_settings,
                     progress, notes)
    ev = Evaluator(model, eval_dataset(model, settings, calib_settings, artifact, "analyze", labels))
    qplan, full_model, _ = build()
    full = ev.score(full_model)
    shapes = {k: v[:1].shape for k, v in ev.batches[0].items()}
    rows = sensitivities_alone(prep, qplan, build, ev, shapes, progress)
    inside = node_output_sqnr(prep.model, full_model, [r.node for r in rows], ev.batches)
    for r in rows:
        r.full_sqnr_db = inside.get(r.node)
    return AnalyzeResult(str(model_path), ev.metric_name, ev.ref_metric, full.drop, full.sqnr_db,
                         [dataclasses.asdict(r) for r in rank(rows)], ev.evaluations, time.perf_counter() - t0,
                         build_manifest(model_path, modelio.file_sha256(model_path), {"analyze": _plain(settings)}))
