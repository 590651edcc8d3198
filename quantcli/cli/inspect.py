"""quantcli inspect MODEL: which nodes run in integer kernels once ONNX Runtime has optimized the model."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import pipeline
from ..errors import ExitCode
from ..recipe import check_limit
from ..report.render import render_inspect
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports


@app.command(help="Show which nodes of a (quantized) model ONNX Runtime runs in integer kernels on this CPU, the "
                  "share of multiply-accumulates they carry, and Q/DQ left around float ops.")
def inspect(
    model: Path = typer.Argument(..., help="ONNX model (any quantizer's output, or FP32).", show_default=False),
    data: o.OptPath = typer.Option(None, "--data", help="Input shapes for MAC counts from this data's first "
                                                        "sample (default: symbolic dims = 1).", show_default=False),
    data_preset: o.OptStr = o.DataPreset,
    min_int8_coverage: float = o.MinCoverage,
    json_out: o.OptPath = o.Json,
    report: o.OptPath = o.Report,
    quiet: bool = o.Quiet,
    no_color: bool = o.NoColor,
) -> None:
    ui.apply(quiet, no_color)
    with error_boundary():
        check_limit("min_int8_coverage", min_int8_coverage, "--min-int8-coverage")
        check_io([("model", model), ("data", data)], [("--json", json_out), ("--report", report)])
        from ..recipe import Recipe

        result = pipeline.inspect(model, data=str(data) if data else None, min_coverage=min_int8_coverage,
                                  data_settings=data_settings(Recipe(), data_preset, data))
        render_inspect(result, ui.out)
        if not result:
            ui.failed(f"FAIL: INT8 MAC coverage {100 * result.coverage.mac_share:.1f}% (min {min_int8_coverage:g}%)")
        write_reports(result, json_path=json_out, html_path=report)
    if not result:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
