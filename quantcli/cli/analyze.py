"""quantcli analyze MODEL --calibration CALIB --eval-data EVAL: which nodes cost accuracy when quantized."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import pipeline
from ..calibration.artifact import recorded_data
from ..recipe import Activations, Weights, check_limit, load_recipe, merge
from ..report.render import render_analyze
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports


@app.command(help="Per-node quantization sensitivity, worst first: each node quantized alone (drop of accuracy or "
                  "agreement, output SQNR) and each node's SQNR inside the all-INT8 model.")
def analyze(
    model: Path = typer.Argument(..., help="FP32 ONNX model.", show_default=False),
    calibration: o.OptPath = typer.Option(None, "--calibration", help="Artifact from quantcli calibrate.",
                                          show_default=False),
    data: o.OptPath = o.Data,
    eval_data: o.OptPath = o.EvalData,
    metric: o.OptStr = o.Metric,
    labels: o.OptPath = typer.Option(None, "--labels", help="Labels, if not in the evaluation data.",
                                     show_default=False),
    weights: Optional[Weights] = typer.Option(None, "--weights", help="per-channel (default; auto analyzes per-channel) or per-tensor.",
                                              show_default=False),
    activations: Optional[Activations] = typer.Option(None, "--activations", help="asymmetric (default) or "
                                                      "symmetric.", show_default=False),
    cle: Optional[bool] = o.Cle,
    top: int = typer.Option(20, "--top", help="Rows to show (all are in --json)."),
    data_preset: o.OptStr = o.DataPreset,
    recipe: o.OptPath = o.Recipe,
    json_out: o.OptPath = o.Json,
    report: o.OptPath = o.Report,
    quiet: bool = o.Quiet,
    no_color: bool = o.NoColor,
) -> None:
    ui.apply(quiet, no_color)
    with error_boundary():
        check_limit("top", top, "--top")
        r = load_recipe(recipe)
        settings = merge(r.convert, weights=weights, activations=activations, cle=cle,
                         eval_data=str(eval_data) if eval_data else None, metric=metric)
        calib = merge(r.calibrate, data=str(data) if data else None)
        check_io([("model", model), ("calibration", calibration), ("data", calib.data),
                  ("calibration data", None if calib.data else recorded_data(calibration)),
                  ("evaluation data", settings.eval_data), ("labels", labels), ("recipe", recipe)],
                 [("--json", json_out), ("--report", report)])
        result = pipeline.analyze(model, settings, calibration=calibration, calib_settings=calib,
                                  labels=str(labels) if labels else None, progress=ui.progress,
                                  data=data_settings(r, data_preset, calib.data, settings.eval_data))
        render_analyze(result, ui.out, top=top)
        write_reports(result, json_path=json_out, html_path=report)
