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

from . import external, modelio, paths
from .calibration.artifact import CalibrationArtifact, load_artifact
from .calibration.collect import collect_statistics
from .cpu import detect as detect_cpu
from .data.config import DataSettings, SampleBy
from .data.sources import Dataset, class_count, data_sha256, input_specs
from .errors import QuantcliError
from .quantize.scheme import apply_scheme
from .quantize.search import eval_data, ranked_dicts, sensitivities_alone
from .quantize.static import StaticBuilder
from .settings import Resolved, resolve
from .validate.output import COLLAPSED_COSINE, reference_outputs, validation_feeds, write_validated
from .manifest import build_manifest
from .metrics import (FidelityAccumulator, agreement_count, decision_agreement_count, degenerate_reference,
                      is_probability_per_sample, lm_token_ids, next_token_nll, token_agreement_count, topk_correct)
from .quantize.policy import PlanOptions, plan, unmatched_patterns
from .recipe import (_INT4_ONLY, AcceptSettings, Activations, CalibrateSettings, to_plain, CompareSettings,
                     ConvertSettings, Mode, Precision, Recipe, SmoothQuant, unused_options)
from .results import (CalibrationResult, CompareResult, ConvertResult, CoverageSummary, Criterion, InspectResult,
                      OutputFidelity, RunResult)
from .runtime.bench import compare_latency
from .runtime.session import make_session
from .runtime.session import run as run_session
from .task_metric import load_task_metric
from .quantize.qdq import QDQOptions
from .transforms.passes import CLE, SMOOTHQUANT, SMOOTHQUANT_PASS, PassContext, Prepared, prepare

Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def _no_progress(desc: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# -- preparation shared by calibrate and convert ------------------------------------------------------
def calibration_tensors(prepared: onnx.ModelProto, activations: Activations = Activations.ASYMMETRIC,
                        act_matmul: bool | None = None, act_matmul_min_dim: int | None = None) -> list[str]:
    """The tensors convert needs ranges for with this activation scheme, plus the outputs of layout ops
    (which normally share their input's range but need their own when ``--exclude`` cuts them off).

    Asymmetric activations absorb Relu/Clip into their producer's range, so the producer's own output
    is not needed: tapping fewer tensors keeps ONNX Runtime's Conv+Relu fusions in the tap model.  The
    inputs of MatMuls of two activations are observed only where convert will quantize them (``act_matmul``,
    default: what ``--act-matmul auto`` decides on this CPU).
    """
    if act_matmul is None or act_matmul_min_dim is None:
        default = resolve(ConvertSettings())
        act_matmul = default.act_matmul if act_matmul is None else act_matmul
        act_matmul_min_dim = default.act_matmul_min_dim if act_matmul_min_dim is None else act_matmul_min_dim
    p = plan(prepared, PlanOptions(symmetric_activations=activations == Activations.SYMMETRIC, act_matmul=act_matmul,
                                   act_matmul_min_dim=act_matmul_min_dim))
    return sorted(set(p.calibrated_tensors()) | set(p.shared))


def _open_dataset(path: str | None, model: onnx.ModelProto, what: str, **kw) -> Dataset:
    if not path:
        raise QuantcliError(f"{what}: no data given (use --data PATH or set it in the recipe)")
    return Dataset(path, input_specs(model), **kw)


# -- calibrate ------------------------------------------------------------------------------------------
def calibrate(model_path: str | Path, out_path: str | Path, settings: CalibrateSettings, *,
              convert_settings: ConvertSettings | None = None, data: DataSettings | None = None,
              progress: Progress = _no_progress) -> CalibrationResult:
    """Observe the tensors that convert, with ``convert_settings`` (activation scheme, CLE), will quantize;
    ``data``: how a decoded source (images, text, audio) becomes inputs (the recipe's [data])."""
    t0 = time.perf_counter()
    model = modelio.load_model(model_path)
    out = modelio.check_output_path(out_path, model_path, settings.data)
    conv = large_model_settings(model, convert_settings or ConvertSettings())[0]
    artifact, pass_seconds, _ = _calibrate_model(model, str(model_path), settings, progress, conv, data=data)
    modelio.write_text_atomic(out, artifact.to_json())
    ranges = artifact.ranges()
    return CalibrationResult(str(out), artifact.model_sha256, artifact.samples, len(artifact.observers),
                             settings.method.value, time.perf_counter() - t0, ranges, pass_seconds,
                             artifact.manifest, artifact.settings.get("classes"),
                             artifact.settings.get("sample_by", SampleBy.FIRST.value))


def _calibrate_model(model: onnx.ModelProto, model_path: str, settings: CalibrateSettings, progress: Progress,
                     conv: ConvertSettings, tensors: list[str] | None = None,
                     prep: Prepared | None = None,
                     data: DataSettings | None = None) -> tuple[CalibrationArtifact, float, Prepared]:
    """Prepare (unless given), smooth (SmoothQuant, measured on the same data), then observe the tensors convert
    will quantize.  Returns the artifact, the histogram pass's seconds and the model as measured."""
    dataset = _open_dataset(settings.data, model, "calibrate", config=data)
    dataset.select(settings.samples, settings.sample_by, settings.seed)
    prep = prep if prep is not None else prepare(model, cle=conv.cle)
    bs = dataset.default_batch_size(settings.batch_size)
    used = dataset.count_used(bs, settings.samples)
    if used == 0:
        raise QuantcliError(f"{settings.data}: fewer samples than the model's fixed batch size {bs}")
    res = resolve(conv)
    prep = smooth(prep, res, lambda: dataset.batches(bs, settings.samples))
    act_matmul = res.act_matmul
    tensors = tensors if tensors is not None else calibration_tensors(prep.model, conv.activations, act_matmul,
                                                                      res.act_matmul_min_dim)
    if not tensors:
        raise QuantcliError(f"{model_path}: nothing to calibrate (no quantizable Conv/MatMul/Gemm with float inputs)")
    advance = progress("calibrating", used)
    # a batch size the user did not choose may be split where a run's tapped outputs would be too large
    split = settings.batch_size is None and all(s.batch_dim is None for s in dataset.specs)
    stats = collect_statistics(prep.model, tensors, dataset.batches(bs, settings.samples), bins=settings.bins,
                               expected_batches=-(-used // bs), on_batch=advance, split=split)
    bs = stats.batch_size or bs
    observers, seen, pass_seconds = stats.histograms, stats.samples, stats.seconds
    # the data by absolute path and hash: convert finds it from any folder and notices if it changed
    cal_settings = {"method": settings.method.value, "percentile": settings.percentile, "bins": settings.bins,
                    "batch_size": bs, "data": str(Path(settings.data).resolve()),
                    "data_sha256": data_sha256(settings.data, data), "samples": settings.samples,
                    "activations": conv.activations.value, "cle": conv.cle, "act_matmul": act_matmul,
                    "smoothquant": conv.smoothquant.value, **_sampling_record(dataset, settings, data, used)}
    sha = modelio.model_sha256(model_path, model)
    pass_data = {SMOOTHQUANT: prep.data(SMOOTHQUANT)} if SMOOTHQUANT in prep.results else {}
    artifact = CalibrationArtifact(sha, str(model_path), seen, cal_settings, observers,
                                   build_manifest(model_path, sha, {"calibrate": cal_settings}), prep.agreed,
                                   pass_data)
    return artifact, pass_seconds, prep


def smooth(prep: Prepared, res: Resolved, batches=None, recorded: dict | None = None) -> Prepared:
    """The preparation followed by SmoothQuant where ``--smoothquant`` asks for it: searched on ``batches`` (a
    callable giving the calibration batches), or replayed from what calibrate ``recorded`` (its pass data)."""
    mode = res.convert.smoothquant
    if mode == SmoothQuant.OFF or res.scheme != "static":
        return prep
    ctx = PassContext(qdq=QDQOptions(symmetric_activations=res.symmetric, reduce_range=res.reduce_range),
                      batches=batches, smoothquant=mode.value,
                      recorded={SMOOTHQUANT: recorded} if recorded is not None else {})
    try:
        return prep.then(SMOOTHQUANT_PASS, ctx)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        if recorded is None:
            raise
        raise QuantcliError(f"calibration: its SmoothQuant scales do not fit this model ({exc}); re-run quantcli "
                            "calibrate") from None


def _sampling_record(dataset: Dataset, settings: CalibrateSettings, data: DataSettings | None, used: int) -> dict:
    """What the artifact records about the samples beyond .npz's (whose artifacts stay as they were): how a
    decoded source was decoded, how a subset was drawn, the class histogram of the samples used."""
    out: dict = {}
    if dataset.decoded is not None:  # by absolute paths, as the data: convert reopens it from any folder
        out["data_config"] = to_plain(data or DataSettings())
        if out["data_config"]["text"]["tokenizer"]:
            out["data_config"]["text"]["tokenizer"] = str(Path(out["data_config"]["text"]["tokenizer"]).resolve())
    if dataset.selection is not None:
        out.update(sample_by=dataset.sample_by.value, seed=settings.seed)
    hist = dataset.class_histogram(used)
    if hist is not None:
        out["classes"] = hist
    return out


# -- convert --------------------------------------------------------------------------------------------
def convert(model_path: str | Path, out_path: str | Path, settings: ConvertSettings, *,
            calibration: str | Path | None = None, calib_settings: CalibrateSettings | None = None,
            progress: Progress = _no_progress, min_cosine: float | None = COLLAPSED_COSINE,
            data: DataSettings | None = None) -> ConvertResult:
    """Load -> resolve settings -> prepare -> ranges -> quantize (one scheme) -> stamp -> validate and write.

    ``min_cosine``: the check sample's cosine with FP32 below which the model is refused, not written (None
    accepts any: for benchmarks that measure a collapse on purpose)."""
    t0 = time.perf_counter()
    check_convert_options(settings, calibration)
    model = modelio.load_model(model_path)
    out = modelio.check_output_path(out_path, model_path, calibration)
    if external.has_external(model):
        external.check_output(out, model, model_path, calibration)
    settings, large_notes = large_model_settings(model, settings)
    res = resolve(settings, calib_settings, data=data)
    prep = artifact = None
    if res.scheme != "half":  # CLE evens per-channel ranges for INT8; 4-bit blocks have their own scales
        prep = prepare(model, cle=settings.cle and res.scheme != "int4")
        res = res.for_opset(modelio.model_opset(prep.model))
    if res.scheme == "static":
        artifact, prep = _artifact_for(model, model_path, prep, res, calibration, progress)
        res = res.with_artifact_data(artifact.data_path(), artifact.data_settings())
    feeds = validation_feeds(model, res.calibration_data, res.data)
    # FP32 on the check sample before the converted weights exist: a large model's weights are in memory once
    expected = reference_outputs(model, feeds)
    scheme = apply_scheme(model, prep, res, artifact, calibration=calibration, progress=progress)
    manifest = _stamp(scheme.model, model_path, modelio.model_sha256(model_path, model), settings, calibration,
                      calib_settings)
    warnings = [f"{'--exclude' if p in settings.exclude else 'node rule match'} '{p}' matches no node of "
                f"{model_path} (patterns: node name, op type, glob, re:REGEX, @first, @last)"
                for p in unmatched_patterns(prep.model if prep else model,
                                            list(settings.exclude) + [r.match for r in settings.nodes])]
    checks = write_validated(scheme.model, model, out, feeds, -np.inf if min_cosine is None else min_cosine, expected)
    coverage = _coverage(scheme.model, feeds, prep.model) if settings.precision == Precision.INT8 else None
    notes = list(res.notes) + large_notes + (prep.notes if prep else []) + scheme.notes
    return ConvertResult(str(out), settings.precision.value, settings.mode.value, _plain(settings),
                         scheme.quantized, scheme.float_nodes, scheme.absorbed, scheme.quantized_tensors,
                         modelio.model_size_bytes(model_path), modelio.model_size_bytes(out), checks, coverage, notes,
                         res.cpu.summary(), time.perf_counter() - t0, scheme.transforms, manifest, scheme.search,
                         warnings)


def _stamp(model: onnx.ModelProto, model_path, model_sha256: str, settings: ConvertSettings, calibration,
           calib_settings: CalibrateSettings | None) -> dict:
    """Producer and the manifest (what made the model, from what, with which settings) in the model's metadata."""
    from . import __version__

    model.producer_name, model.producer_version = "quantcli", __version__
    manifest = build_manifest(model_path, model_sha256, {
        "convert": _plain(settings), "calibration": str(calibration) if calibration else None,
        "calibrate": _plain(calib_settings) if calib_settings and calibration is None else None})
    _set_metadata(model, "quantcli.manifest", json.dumps(manifest, sort_keys=True))
    return manifest


def large_model_settings(model: onnx.ModelProto, settings: ConvertSettings) -> tuple[ConvertSettings, list[str]]:
    """A model with external data is not cross-layer equalized (calibrate, convert and analyze alike): CLE
    holds every weight it equalizes in memory, in float64 (7.3x the weights' size measured on a 1 GB model).
    SmoothQuant's ``auto`` is off there too (it copies the model and rescales weights in memory)."""
    auto_sq = settings.smoothquant == SmoothQuant.AUTO
    if not ((settings.cle or auto_sq) and external.has_external(model)):
        return settings, []
    gb = external.weights_bytes(model) / 1e9
    notes = [f"cross-layer equalization off: the model keeps its weights in external data ({gb:.1f} GB), and "
             "equalizing would hold all of them in memory at once"] if settings.cle else []
    notes += [f"SmoothQuant (auto) off: the model keeps its weights in external data ({gb:.1f} GB)"] if auto_sq else []
    return dataclasses.replace(settings, cle=False,
                               smoothquant=SmoothQuant.OFF if auto_sq else settings.smoothquant), notes


def check_convert_options(settings: ConvertSettings, calibration=None) -> None:
    """Refuse options the chosen precision / mode never reads (the rule: :func:`quantcli.recipe.unused_options`)."""
    unused = unused_options(settings, calibration)
    if unused:
        ctx = (f"--precision {settings.precision.value}" if settings.precision != Precision.INT8
               else f"--mode {settings.mode.value}")
        flags = ", ".join("--node" if n == "nodes" else f"--{n.replace('_', '-')}" for n in unused)
        it = "it" if len(unused) == 1 else "them"
        who = ("only --precision int4 reads " + it) if all(n in _INT4_ONLY for n in unused) else (
            "only static INT8 reads " + it)
        raise QuantcliError(f"{flags}: not used with {ctx} ({who}); remove {it} from the command line or the "
                            "recipe's [convert]")
    if settings.metric and settings.max_drop is None:
        raise QuantcliError(f"--metric {settings.metric}: only --max-drop reads it; add --max-drop PCT or remove it")


def _plain(settings) -> dict:
    """A settings dataclass as plain JSON-able values (enums by value)."""
    return to_plain(settings)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _artifact_for(model, model_path, prep: Prepared, res: Resolved, calibration,
                  progress: Progress) -> tuple[CalibrationArtifact, Prepared]:
    """The calibration artifact: loaded (and checked against this model and its preparation) or made now; and the
    preparation with SmoothQuant's scales applied as calibrate chose them."""
    if calibration is not None:
        artifact = load_artifact(calibration)
        sha = modelio.model_sha256(model_path, model)
        if artifact.model_sha256 != sha:
            raise QuantcliError(f"{calibration}: made for another model (sha256 {artifact.model_sha256[:12]}..., "
                                f"{model_path} is {sha[:12]}...); re-run quantcli calibrate on this model")
        if SMOOTHQUANT in artifact.passes:
            prep = smooth(prep, res, recorded=artifact.pass_data.get(SMOOTHQUANT, {}))
        elif res.convert.smoothquant == SmoothQuant.AUTO and res.scheme == "static":  # calibrated without it
            prep = dataclasses.replace(prep, notes=prep.notes + [  # (--smoothquant off, or an older quantcli)
                f"SmoothQuant (auto) not applied: {calibration} was calibrated without it"])
        elif res.convert.smoothquant == SmoothQuant.ON:
            raise QuantcliError(f"{calibration}: calibrated with SmoothQuant off, but convert has it on; run "
                                "calibrate and convert with the same --smoothquant")
        _check_passes(calibration, artifact.passes, prep.agreed)
        return artifact, prep
    if res.calibrate is not None and res.calibrate.data:
        artifact, _, prep = _calibrate_model(model, str(model_path), res.calibrate, progress, res.convert,
                                             prep=prep, data=res.data)
        return artifact, prep
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
    if SMOOTHQUANT in only_cal + only_conv:
        on = "on" if SMOOTHQUANT in calibrated else "off"
        raise QuantcliError(f"{calibration}: calibrated with SmoothQuant {on}, but convert has it "
                            f"{'on' if SMOOTHQUANT in converting else 'off'}; run calibrate and convert with the "
                            "same --smoothquant")
    raise QuantcliError(f"{calibration}: calibrated with preparation passes that differ from convert's "
                        f"(only in the calibration: {', '.join(only_cal) or '-'}; only in convert: "
                        f"{', '.join(only_conv) or '-'}); re-run quantcli calibrate")


# -- compare --------------------------------------------------------------------------------------------
def compare(fp32_path: str | Path, quant_path: str | Path, settings: CompareSettings, *, gate: float | None = None,
            progress: Progress = _no_progress, data: DataSettings | None = None) -> CompareResult:
    """``gate``: a --max-drop applied by the caller (run's [accept]); like ``settings.max_drop`` it needs a
    meaningful reference: with labels, FP32 accuracy above chance."""
    fp32 = modelio.load_model(fp32_path)
    quant = modelio.load_model(quant_path)
    names_a = [s.name for s in input_specs(fp32)]
    names_b = [s.name for s in input_specs(quant)]
    if sorted(names_a) != sorted(names_b):
        raise QuantcliError(f"{quant_path}: inputs {names_b} do not match the FP32 model's {names_a}")
    ds = _open_dataset(settings.data, fp32, "compare", labels_path=settings.labels, classes=class_count(fp32),
                       config=data)
    _require_a_batch(ds)
    sa = make_session(fp32, threads=settings.threads, what=str(fp32_path), spinning=False)
    sb = make_session(quant, threads=settings.threads, what=str(quant_path), spinning=False)
    out_names = [o.name for o in sa.get_outputs()]
    if [o.name for o in sb.get_outputs()] != out_names:
        raise QuantcliError(f"{quant_path}: outputs differ from the FP32 model's ({', '.join(out_names)})")
    task = load_task_metric(settings.metric) if settings.metric else None
    kept: list | None = [] if task is not None else None
    outputs, top1, top5, seen, first, classes, lm_metrics = _evaluate(ds, sa, sb, out_names, str(fp32_path),
                                                                      str(quant_path), progress, kept)
    if task is not None:
        ref, cand = [a for a, _ in kept], [b for _, b in kept]
        labels = ds.labels[:seen] if ds.labels is not None else None
        task_values = (task.name, task(ref, ref, labels), task(ref, cand, labels))
        kept.clear()
    why = degenerate_reference(top1[0], classes or 1) if top1 and task is None else None
    if why and (settings.max_drop is not None or gate is not None):
        raise QuantcliError(f"{settings.labels or settings.data}: the --max-drop gate cannot be judged: {why}")
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
                         build_manifest(fp32_path, modelio.model_sha256(fp32_path, fp32), {"compare": _plain(settings)}),
                         notes, ratio, *(lm_metrics or (None, None)), task_values if task is not None else None)


def _evaluate(ds: Dataset, sa, sb, out_names: list[str], name_a: str, name_b: str, progress: Progress,
              kept: list | None = None):
    """Both models over the evaluation data: per-output fidelity and agreement, top-1/top-5 with labels (checked
    against the class count seen). Returns (outputs, top1, top5, samples, latency feeds, classes); ``kept`` gets
    each batch's (FP32 outputs, quantized outputs) for a task metric."""
    bs = ds.default_batch_size(None)
    advance = progress("evaluating", ds.count_used(bs))
    fid = [FidelityAccumulator() for _ in out_names]
    agree = [0 for _ in out_names]
    argmaxable = [True for _ in out_names]
    decisions = [0 for _ in out_names]          # one probability per sample: agreeing decisions at 0.5
    decidable = [True for _ in out_names]
    correct = {1: [0, 0], 5: [0, 0]}
    lm = [0.0, 0.0, 0, 0, 0]  # language model: NLL sums (FP32, quantized), terms, agreeing positions, positions
    classes = None
    seen = 0
    first = None
    for feeds in ds.batches(bs):
        n = len(next(iter(feeds.values())))
        if first is None:  # latency at batch 1, or at the model's fixed batch
            first = feeds if any(sp.batch_dim is not None for sp in ds.specs) else {k: v[:1] for k, v in feeds.items()}
        ra, rb = (run_session(s, feeds, what=name, keep=kept is not None) for s, name in ((sa, name_a), (sb, name_b)))
        if kept is not None:  # copies (keep=True): an ONNX Runtime output holds its session's arena
            kept.append((ra, rb))
        for i, (a, b) in enumerate(zip(ra, rb)):
            fid[i].update(a, b)
            if np.ndim(a) >= 2 and np.shape(a)[-1] > 1 and np.shape(a)[0] == n:
                agree[i] += agreement_count(a, b)
            else:
                argmaxable[i] = False
            if decidable[i] and np.shape(a)[:1] == (n,) and is_probability_per_sample(a):
                decisions[i] += decision_agreement_count(a, b)
            else:
                decidable[i] = False
        ids = lm_token_ids(feeds, ra[0]) if ds.labels is None and (seen == 0 or lm[2]) else None
        if ids is not None:
            (na, count), (nb, _) = next_token_nll(ra[0], ids), next_token_nll(rb[0], ids)
            same, positions = token_agreement_count(ra[0], rb[0])
            lm = [lm[0] + na, lm[1] + nb, lm[2] + count, lm[3] + same, lm[4] + positions]
        if ds.labels is not None:
            labels = ds.labels[seen:seen + n]
            logits_a, logits_b = ra[0].reshape(n, -1), rb[0].reshape(n, -1)
            if classes is None:
                ds.check_labels(logits_a.shape[1])
            classes = logits_a.shape[1]
            for k in (1, 5):
                if k <= classes:
                    correct[k][0] += topk_correct(logits_a, labels, k)
                    correct[k][1] += topk_correct(logits_b, labels, k)
        seen += n
        advance(n)
    outputs = [OutputFidelity(name, agree[i] / seen if argmaxable[i] else decisions[i] / seen if decidable[i] else None,
                              fid[i].cosine, fid[i].sqnr_db, fid[i].max_abs) for i, name in enumerate(out_names)]
    top1 = top5 = None
    if ds.labels is not None:
        top1 = (100.0 * correct[1][0] / seen, 100.0 * correct[1][1] / seen)
        if classes and classes > 5:
            top5 = (100.0 * correct[5][0] / seen, 100.0 * correct[5][1] / seen)
    lm_metrics = ((float(np.exp(lm[0] / lm[2])), float(np.exp(lm[1] / lm[2]))), lm[3] / lm[4]) if lm[2] else None
    return outputs, top1, top5, seen, first, classes, lm_metrics


# -- run: the whole job from one recipe ------------------------------------------------------------------
def run(recipe: Recipe, *, progress: Progress = _no_progress) -> RunResult:
    """calibrate -> convert -> compare from one recipe, then check the recipe's acceptance criteria."""
    model, output = recipe.run.model, recipe.run.output
    inputs, outputs = run_paths(recipe)
    paths.check_io(inputs, outputs)
    check_convert_options(recipe.convert)
    # every input validated before any work: a bad data set must not leave a model behind
    fp32 = modelio.load_model(model)
    evaluation = Dataset(recipe.compare.data, input_specs(fp32), labels_path=recipe.compare.labels,
                         classes=class_count(fp32), config=recipe.data)
    _require_a_batch(evaluation)
    evaluation.verify_files()
    if evaluation.labels is not None and (recipe.accept.max_drop is not None or recipe.compare.max_drop is not None):
        _check_gate_reference(fp32, evaluation, recipe.compare.labels or recipe.compare.data)
    cal = None
    if _static(recipe.convert):
        Dataset(recipe.calibrate.data, input_specs(fp32), config=recipe.data).verify_files()
        cal = calibrate(model, dict(outputs)["calibration"], recipe.calibrate, convert_settings=recipe.convert,
                        data=recipe.data, progress=progress)
    conv = convert(model, output, recipe.convert, calibration=cal.output if cal else None,
                   calib_settings=recipe.calibrate, progress=progress, data=recipe.data)
    cmp = compare(model, output, recipe.compare, gate=recipe.accept.max_drop, progress=progress, data=recipe.data)
    criteria = acceptance(recipe.accept, conv, cmp)
    return RunResult(recipe.to_dict(), cal, conv, cmp, criteria,
                     build_manifest(model, modelio.model_sha256(model, fp32), recipe.to_dict()))


def _require_a_batch(ds: Dataset) -> None:
    bs = ds.default_batch_size(None)
    if ds.count_used(bs) == 0:
        raise QuantcliError(f"{ds.path}: {ds.num_samples} sample(s), fewer than the model's fixed batch size {bs}")


def _check_gate_reference(fp32: onnx.ModelProto, ds: Dataset, where: str) -> None:
    """A drop gate needs FP32 above chance on the labels: measured up front (one FP32 pass), so a meaningless gate
    stops ``run`` before it writes anything."""
    session = make_session(fp32, what="input model")
    correct = seen = classes = 0
    for feeds in ds.batches(ds.default_batch_size(None)):
        logits = run_session(session, feeds, what="input model")[0]
        n = len(logits)
        classes = int(np.prod(logits.shape[1:])) if logits.ndim > 1 else 1
        if seen == 0:
            ds.check_labels(classes)
        correct += topk_correct(logits.reshape(n, -1), ds.labels[seen:seen + n], 1)
        seen += n
    why = degenerate_reference(100.0 * correct / max(seen, 1), classes)
    if why:
        raise QuantcliError(f"{where}: the max_drop gate cannot be judged: {why}")


def _static(settings: ConvertSettings) -> bool:
    return settings.precision == Precision.INT8 and settings.mode == Mode.STATIC


def run_paths(recipe: Recipe) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """What ``run`` reads and writes, as (what, path) pairs for :func:`quantcli.paths.check_io`."""
    where = recipe.source or "recipe"
    if not recipe.run.model:
        raise QuantcliError(f"{where}: [run] model is not set (or pass --model)")
    if not recipe.run.output:
        raise QuantcliError(f"{where}: [run] output is not set (or pass -o)")
    if not recipe.compare.data:
        raise QuantcliError(f"{where}: [compare] data is not set: run needs evaluation data (or pass --eval-data)")
    static = _static(recipe.convert)
    if static and not recipe.calibrate.data:
        raise QuantcliError(f"{where}: [calibrate] data is not set: static INT8 needs calibration data")
    output = recipe.run.output
    inputs = [("model", recipe.run.model), ("calibration data", recipe.calibrate.data if static else None),
              ("evaluation data", recipe.compare.data), ("labels", recipe.compare.labels),
              ("recipe", recipe.source)]
    outputs = [("model", output),
               ("calibration", (recipe.run.calibration or f"{output}.calib.json") if static else None)]
    return inputs, outputs


def acceptance(accept: AcceptSettings, conv: ConvertResult, cmp: CompareResult) -> list[Criterion]:
    out = []
    max_drop = accept.max_drop if accept.max_drop is not None else cmp.max_drop
    if max_drop is not None:
        out.append(Criterion(f"max {cmp.metric} {'increase' if cmp.perplexity else 'drop'}", max_drop, cmp.drop,
                             cmp.drop <= max_drop + 1e-9, cmp.unit))
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


def inspect(model_path: str | Path, *, data: str | None = None, min_coverage: float | None = None,
            data_settings: DataSettings | None = None) -> InspectResult:
    """Let ONNX Runtime optimize ``model_path`` for the CPU and report what runs in integer kernels."""
    model = modelio.load_model(model_path)
    feeds = validation_feeds(model, data, data_settings)
    cpu = detect_cpu()
    return InspectResult(str(model_path), {k: list(v.shape) for k, v in feeds.items()}, _coverage(model, feeds),
                         cpu.summary(), cpu.int8_path, min_coverage,
                         build_manifest(model_path, modelio.model_sha256(model_path, model), {"inspect": {"data": data}}))


# -- analyze ----------------------------------------------------------------------------------------------
def analyze(model_path: str | Path, settings: ConvertSettings, *, calibration: str | Path | None = None,
            calib_settings: CalibrateSettings | None = None, labels: str | None = None,
            progress: Progress = _no_progress, data: DataSettings | None = None):
    """Per-node sensitivity: (a) each node quantized alone, (b) each node's SQNR inside the all-INT8 model."""
    from .results import AnalyzeResult
    from .sensitivity import Evaluator, node_output_sqnr

    t0 = time.perf_counter()
    model = modelio.load_model(model_path)
    settings = large_model_settings(model, settings)[0]
    prep = prepare(model, cle=settings.cle)
    res = resolve(settings, calib_settings, data=data).for_opset(modelio.model_opset(prep.model))
    artifact, prep = _artifact_for(model, model_path, prep, res, calibration, progress)
    res = res.with_artifact_data(artifact.data_path(), artifact.data_settings())
    build = StaticBuilder(model, prep, res, artifact, calibration=calibration, progress=progress)
    ev = Evaluator(model, *build.held(eval_data(res, "analyze"), None, labels),
                   task=load_task_metric(settings.metric) if settings.metric else None)
    built = build()
    full = ev.score(built.model)
    shapes = {k: v[:1].shape for k, v in ev.batches[0].items()}
    rows = sensitivities_alone(prep, built, build, ev, shapes, progress)
    inside = node_output_sqnr(prep.model, built.model, [r.node for r in rows], ev.batches)
    for r in rows:
        r.full_sqnr_db = inside.get(r.node)
    return AnalyzeResult(str(model_path), ev.metric_name, ev.ref_metric, full.drop, full.sqnr_db,
                         ranked_dicts(rows), ev.evaluations, time.perf_counter() - t0,
                         build_manifest(model_path, modelio.model_sha256(model_path, model), {"analyze": _plain(settings)}))
