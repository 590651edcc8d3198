"""quantcli run RECIPE: calibrate -> convert -> compare in one step, gated by the recipe's [accept] criteria."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import pipeline
from ..errors import ExitCode
from ..recipe import load_recipe, merge
from ..report.render import render_run
from . import options as o
from .common import app, check_io, data_settings, error_boundary, ui, write_reports


@app.command(help="Calibrate, convert and compare in one step from a recipe; exit 1 if an [accept] criterion "
                  "(max drop, min INT8 coverage, max latency ratio, max size) fails.")
def run(
    recipe: Path = typer.Argument(..., help="TOML recipe with [run] model/output and the data paths.",
                                  show_default=False),
    model: o.OptPath = typer.Option(None, "--model", help="Overrides [run] model.", show_default=False),
    output: o.OptPath = typer.Option(None, "-o", "--output", help="Overrides [run] output.", show_default=False),
    data: o.OptPath = typer.Option(None, "--data", help="Overrides [calibrate] data.", show_default=False),
    eval_data: o.OptPath = typer.Option(None, "--eval-data", help="Overrides [compare] data.", show_default=False),
    data_preset: o.OptStr = o.DataPreset,
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
        r.run = merge(r.run, model=str(model) if model else None, output=str(output) if output else None)
        r.calibrate = merge(r.calibrate, data=str(data) if data else None)
        r.compare = merge(r.compare, data=str(eval_data) if eval_data else None)
        r.data = data_settings(r, data_preset, r.calibrate.data, r.compare.data)
        inputs, outputs = pipeline.run_paths(r)
        check_io(inputs, outputs + [("--json", json_out), ("--report", report), ("--junit", junit), ("--markdown", markdown)])
        result = pipeline.run(r, progress=ui.progress)
        render_run(result, ui.out)
        if not result:
            ui.failed(f"FAIL: {result}")
        write_reports(result, json_path=json_out, html_path=report, junit_path=junit, markdown_path=markdown)
    if not result:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
