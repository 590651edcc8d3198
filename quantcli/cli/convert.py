"""quantcli convert MODEL -o OUT [--calibration CALIB | --data PATH] ..."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import pipeline
from ..calibration.artifact import recorded_data
from ..errors import ExitCode
from ..recipe import (Activations, BiasCorrection, Mode, Precision, ReduceRange, WeightAlgorithm, Weights, check_limit,
                      load_recipe, merge, parse_node_rule)
from ..report.render import render_convert
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports


@app.command(help="Quantize (static or dynamic INT8) or convert (FP16/BF16) a model, validate it, write it.")
def convert(
    model: Path = typer.Argument(..., help="FP32 ONNX model.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Model to write.", show_default=False),
    calibration: o.OptPath = typer.Option(None, "--calibration", help="Artifact from quantcli calibrate.",
                                          show_default=False),
    data: o.OptPath = o.Data,
    weights: Optional[Weights] = typer.Option(None, "--weights", help="auto (default): per-channel, and per-tensor for MatMul/Gemm where measured to cost nothing (faster in ONNX Runtime); or per-channel, per-tensor.",
                                              show_default=False),
    activations: Optional[Activations] = typer.Option(None, "--activations",
                                                      help="asymmetric uint8 (default) or symmetric int8.",
                                                      show_default=False),
    precision: Optional[Precision] = typer.Option(None, "--precision", help="int8 (default), int4 (weight-only, MatMul/Gemm), fp16 or bf16.",
                                                  show_default=False),
    mode: Optional[Mode] = typer.Option(None, "--mode", help="static (default) or dynamic INT8.", show_default=False),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude",
                                                metavar="NAME_OR_OPTYPE", help="Keep a node float: node name, op type, glob or re:REGEX. "
                                                     "Repeatable.", show_default=False),
    node: Optional[List[str]] = typer.Option(None, "--node", metavar="PATTERN:KEY=VALUE,...",
                                             help="Per-node mixed precision, repeatable: precision=int8|fp16|fp32, "
                                                  "weights=per-channel|per-tensor, method=..., percentile=P. "
                                                  "E.g. --node 'head/*:precision=fp16'.", show_default=False),
    method: o.OptMethod = o.MethodOpt,
    percentile: float = o.Percentile,
    reduce_range: Optional[ReduceRange] = typer.Option(None, "--reduce-range",
                                                       help="7-bit weights: auto (on x86 without VNNI), on, off.",
                                                       show_default=False),
    act_matmul: o.OptActMatmul = o.ActMatmulOpt,
    cle: Optional[bool] = o.Cle,
    smoothquant: o.OptSmoothQuant = o.SmoothQuantOpt,
    bias_correction: Optional[BiasCorrection] = typer.Option(
        None, "--bias-correction", help="Remove the output shift weight quantization causes: empirical (on "
                                        "calibration data), analytic (from BatchNorm statistics) or off.",
        show_default=False),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="int4: weights per scale along K: 16, 32 "
                                                                         "(default), 64, 128 or 256.",
                                             show_default=False),
    symmetric_weights: Optional[bool] = typer.Option(None, "--symmetric-weights/--asymmetric-weights",
                                                     help="int4: zero point fixed at 8, or one per block (default).",
                                                     show_default=False),
    algorithm: Optional[WeightAlgorithm] = typer.Option(None, "--algorithm", help="int4: rtn (default, data-free), "
                                                        "gptq or awq (need --data).", show_default=False),
    clip_search: Optional[bool] = typer.Option(None, "--clip-search/--no-clip-search",
                                               help="int4: search each block's range for the smallest rounding error "
                                                    "(default on; weighted by the input statistics with gptq/awq).",
                                               show_default=False),
    act_order: Optional[bool] = typer.Option(None, "--act-order/--no-act-order",
                                             help="int4 gptq: quantize the rows with the largest inputs first "
                                                  "(default on).", show_default=False),
    data_preset: o.OptStr = o.DataPreset,
    recipe: o.OptPath = o.Recipe,
    max_drop: float = typer.Option(None, "--max-drop", help="Mixed precision: keep the fewest most sensitive "
                                                            "nodes in float so the drop stays within PCT points.",
                                   show_default=False),
    eval_data: o.OptPath = o.EvalData,
    metric: o.OptStr = o.Metric,
    recipe_out: o.OptPath = typer.Option(None, "--recipe-out", help="Write the exclusions --max-drop chose as a "
                                                                    "recipe fragment (TOML).", show_default=False),
    min_int8_coverage: float = o.MinCoverage,
    json_out: o.OptPath = o.Json,
    report: o.OptPath = o.Report,
    quiet: bool = o.Quiet,
    no_color: bool = o.NoColor,
) -> None:
    ui.apply(quiet, no_color)
    with error_boundary():
        check_limit("min_int8_coverage", min_int8_coverage, "--min-int8-coverage")
        r = load_recipe(recipe)
        settings = merge(r.convert, weights=weights, activations=activations, precision=precision, mode=mode,
                         exclude=exclude, method=method, percentile=percentile, reduce_range=reduce_range,
                         act_matmul=act_matmul, cle=cle, smoothquant=smoothquant, bias_correction=bias_correction,
                         max_drop=max_drop,
                         nodes=[parse_node_rule(t) for t in node] if node else None,
                         eval_data=str(eval_data) if eval_data else None, metric=metric, block_size=block_size,
                         symmetric_weights=symmetric_weights, algorithm=algorithm, clip_search=clip_search,
                         act_order=act_order)
        calib = merge(r.calibrate, data=str(data) if data else None)
        pipeline.check_convert_options(settings, calibration)
        check_io([("model", model), ("calibration", calibration), ("data", calib.data),
                  ("calibration data", None if calib.data else recorded_data(calibration)),
                  ("evaluation data", settings.eval_data), ("recipe", recipe)],
                 [("-o", output), ("--json", json_out), ("--report", report), ("--recipe-out", recipe_out)])
        if calibration is None and not calib.data and settings.precision == Precision.INT8 \
                and settings.mode == Mode.STATIC:
            calib = None
        result = pipeline.convert(model, output, settings, calibration=calibration, calib_settings=calib,
                                  progress=ui.progress, 
                                  data=data_settings(r, data_preset, calib.data if calib else None, settings.eval_data))
        for w in result.warnings:
            ui.warn(w)
        render_convert(result, ui.out)
        write_reports(result, json_path=json_out, html_path=report)
        if recipe_out:
            from ..paths import write_text_atomic

            fragment = (result.search.recipe_fragment if result.search else "") or "[convert]\nexclude = []\n"
            write_text_atomic(recipe_out, "# chosen by quantcli convert --max-drop\n" + fragment)
    if min_int8_coverage is not None:
        share = 100.0 * result.coverage.mac_share if result.coverage else 0.0
        ok = share >= min_int8_coverage - 1e-9
        ui.err.print(f"{'PASS' if ok else 'FAIL'}: INT8 MAC coverage {share:.1f}% (min {min_int8_coverage:g}%)"
                     + ("" if ok else f"; {result.output} was written"), highlight=False)
        if not ok:
            raise typer.Exit(int(ExitCode.CHECK_FAILED))
