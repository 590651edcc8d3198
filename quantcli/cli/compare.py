"""quantcli compare accuracy FP32 QUANT --data PATH [--labels FILE] [--max-drop PCT]"""

from __future__ import annotations

from pathlib import Path

import typer

from .. import pipeline
from ..errors import ExitCode
from ..recipe import load_recipe, merge
from ..report.render import render_compare
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports

compare_app = typer.Typer(no_args_is_help=True, help="Compare a quantized model with its FP32 original.")
app.add_typer(compare_app, name="compare")


@compare_app.command(help="Accuracy (with labels) or fidelity (without) of QUANT against FP32, latency and size. "
                          "Exit 1 if the drop exceeds --max-drop.")
def accuracy(
    fp32: Path = typer.Argument(..., help="FP32 ONNX model.", show_default=False),
    quant: Path = typer.Argument(..., help="Quantized ONNX model.", show_default=False),
    data: o.OptPath = o.Data,
    labels: o.OptPath = typer.Option(None, "--labels", help="Labels (.npy, .npz with 'labels', or text), "
                                                            "if not in the data file.", show_default=False),
    max_drop: float = typer.Option(None, "--max-drop", help="Fail (exit 1) if accuracy / agreement drops by more "
                                                            "than PCT points.", show_default=False),
    metric: o.OptStr = o.Metric,
    threads: int = typer.Option(None, "--threads", help="Intra-op threads for both models (default 1).",
                                show_default=False),
    runs: int = typer.Option(None, "--runs", help="Timed runs per model for latency (default 200).",
                             show_default=False),
    data_preset: o.OptStr = o.DataPreset,
    recipe: o.OptPath = o.Recipe,
    json_out: o.OptPath = o.Json,
    report: o.OptPath = o.Report,
    junit: o.OptPath = o.Junit,
    markdown: o.OptPath = o.Markdown,
    quiet: bool = o.Quiet,
    no_color: bool = o.NoColor,
) -> None:
    ui.apply(quiet, no_color)
    with error_boundary():
        r = load_recipe(recipe)
        settings = merge(r.compare, data=str(data) if data else None, labels=str(labels) if labels else None,
                         max_drop=max_drop, metric=metric, threads=threads, runs=runs)
        check_io([("FP32 model", fp32), ("quantized model", quant), ("data", settings.data),
                  ("labels", settings.labels), ("recipe", recipe)],
                 [("--json", json_out), ("--report", report), ("--junit", junit), ("--markdown", markdown)])
        result = pipeline.compare(fp32, quant, settings, progress=ui.progress, 
                                  data=data_settings(r, data_preset, settings.data))
        render_compare(result, ui.out)
        if not result:
            ui.failed(f"FAIL: {result.drop_text} (max {result.max_drop:g}{result.unit})")
        write_reports(result, json_path=json_out, html_path=report, junit_path=junit, markdown_path=markdown)
    if not result:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
