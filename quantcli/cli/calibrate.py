"""quantcli calibrate MODEL --data PATH -o CALIB"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import pipeline
from ..data.config import SampleBy
from ..recipe import Activations, load_recipe, merge
from ..report.render import render_calibration
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports


@app.command(help="Run calibration data through the model and write a reusable calibration artifact (JSON).")
def calibrate(
    model: Path = typer.Argument(..., help="FP32 ONNX model.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Calibration artifact to write (JSON).",
                                show_default=False),
    data: o.OptPath = o.Data,
    samples: int = typer.Option(None, "--samples", help="Use at most N samples (default: all).", show_default=False),
    sample_by: Optional[SampleBy] = typer.Option(None, "--sample-by", help="How --samples picks: first N, a seeded "
                                                 "random subset, or balanced per class (class folders or labels); "
                                                 "auto (default): first for .npz/.npy, class for class folders, "
                                                 "else random.", show_default=False),
    seed: int = typer.Option(None, "--seed", help="Seed of --sample-by random/class (default 0).", show_default=False),
    data_preset: o.OptStr = o.DataPreset,
    batch_size: int = typer.Option(None, "--batch-size", help="Samples per run (default 16, fewer where 16 would exceed 1M input values or 256 MB of observed activations, or the model's fixed batch).",
                                   show_default=False),
    method: o.OptMethod = o.MethodOpt,
    percentile: float = o.Percentile,
    activations: Optional[Activations] = typer.Option(None, "--activations",
                                                      help="The activation scheme convert will use (default: the "
                                                           "recipe's [convert] activations, else asymmetric).",
                                                      show_default=False),
    act_matmul: o.OptActMatmul = o.ActMatmulOpt,
    cle: Optional[bool] = o.Cle,
    smoothquant: o.OptSmoothQuant = o.SmoothQuantOpt,
    recipe: o.OptPath = o.Recipe,
    json_out: o.OptPath = o.Json,
    report: o.OptPath = o.Report,
    quiet: bool = o.Quiet,
    no_color: bool = o.NoColor,
) -> None:
    ui.apply(quiet, no_color)
    with error_boundary():
        r = load_recipe(recipe)
        settings = merge(r.calibrate, data=str(data) if data else None, samples=samples, batch_size=batch_size,
                         method=method, percentile=percentile, sample_by=sample_by, seed=seed)
        conv = merge(r.convert, activations=activations, act_matmul=act_matmul, cle=cle,
                     smoothquant=smoothquant)
        check_io([("model", model), ("data", settings.data), ("recipe", recipe)],
                 [("-o", output), ("--json", json_out), ("--report", report)])
        result = pipeline.calibrate(model, output, settings, convert_settings=conv,
                                    data=data_settings(r, data_preset, settings.data),
                                    progress=ui.progress)
        render_calibration(result, ui.out)
        write_reports(result, json_path=json_out, html_path=report)
