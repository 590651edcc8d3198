"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..recipe import ActMatmul, Method, SmoothQuant

Recipe = typer.Option(None, "--recipe", help="TOML recipe; flags given here override it.", show_default=False)
Json = typer.Option(None, "--json", help="Also write the result as JSON to this file (- for stdout; the tables then go to stderr).", show_default=False)
Data = typer.Option(None, "--data", help=".npz keyed by input name (first axis = samples), a folder of .npz/.npy, an "
                                         "image folder (flat or one sub-folder per class), a .txt/.jsonl text file "
                                         "or .wav audio (decoded as the recipe's [data] or --data-preset says).",
                    show_default=False)
DataPreset = typer.Option(None, "--data-preset", help="How image/text/audio files become inputs: a packaged preset "
                                                      "(imagenet, yolo, ppocr-rec) or a TOML fragment with a [data] "
                                                      "table; the recipe's own [data.*] keys override it.",
                          show_default=False)
OptStr = Optional[str]
MethodOpt = typer.Option(None, "--method", help="Range estimator (convert: re-derives ranges from the artifact).",
                         show_default=False)
Percentile = typer.Option(None, "--percentile", help="Percentile for --method percentile (e.g. 99.99).",
                          show_default=False)

OptPath = Optional[Path]
OptMethod = Optional[Method]
Junit = typer.Option(None, "--junit", help="Also write a JUnit XML report (one test case per criterion; - for stdout).",
                     show_default=False)
Markdown = typer.Option(None, "--markdown", help="Also write a Markdown summary (for a pull-request comment; - for stdout).",
                        show_default=False)
Report = typer.Option(None, "--report", help="Also write a self-contained HTML report (verdict, tables, why nodes "
                                          "stayed float, histograms with the chosen ranges; - for stdout).",
                      show_default=False)
Quiet = typer.Option(False, "--quiet", "-q", help="Only errors on stderr; no tables or progress.")
NoColor = typer.Option(False, "--no-color", help="No colors (also when NO_COLOR or CI is set).")
MinCoverage = typer.Option(None, "--min-int8-coverage", help="Exit 1 if less than PCT % of the multiply-accumulates "
                                                             "run in integer kernels.", show_default=False)
OptActMatmul = Optional[ActMatmul]
ActMatmulOpt = typer.Option(
    None, "--act-matmul", help="MatMuls of two activations (attention's Q.K and P.V): auto (int8 where the CPU has "
                               "VNNI/AMX/dot product and the head dimension is 64 or more, else float: quantizing "
                               "both inputs at run time only adds time there), int8, float. calibrate and convert should agree.", show_default=False)
Cle = typer.Option(None, "--cle/--no-cle", help="Cross-layer equalization (calibrate and convert must agree).",
                   show_default=False)
EvalData = typer.Option(None, "--eval-data", help="Data to measure accuracy (labels) or agreement on "
                                                  "(default: the calibration data).", show_default=False)
Metric = typer.Option(None, "--metric", metavar="FILE.py:FUNCTION",
                      help="Your task metric for the drop (detection F1, mask IoU, ...): FUNCTION(reference, "
                           "candidate, labels) -> percent, higher is better; reference/candidate: per batch, the "
                           "list of output arrays (see README). Default: top-1 accuracy with labels, else agreement.",
                      show_default=False)
OptSmoothQuant = Optional[SmoothQuant]
SmoothQuantOpt = typer.Option(
    None, "--smoothquant", help="SmoothQuant: move activation channel ranges into the weights of MatMul/Gemm layers, "
                                "alpha searched per layer on the calibration data. auto (default): only where that "
                                "measurably lowers the layer's quantized output error; on; off. calibrate and convert "
                                "must agree.", show_default=False)
