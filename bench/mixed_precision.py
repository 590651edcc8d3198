"""Mixed precision under an accuracy budget: `convert --max-drop` on the activation-outlier sample, with the
search's time and the result's accuracy and latency against all-INT8 and all-FP32, in one run.

    python bench/mixed_precision.py [--model outlier_cnn] [--data digits_cnn] [--max-drop 1]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from quantcli import pipeline  # noqa: E402
from quantcli.recipe import CalibrateSettings, CompareSettings, ConvertSettings  # noqa: E402
from quantcli.runtime.bench import measure_latencies  # noqa: E402
from quantcli.runtime.session import make_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="outlier_cnn")
    ap.add_argument("--data", default="digits_cnn", help="prefix of the -calib.npz / -eval.npz files")
    ap.add_argument("--max-drop", type=float, default=1.0)
    args = ap.parse_args()
    s = ROOT / "sample_models"
    model, calib, ev = s / f"{args.model}.onnx", s / f"{args.data}-calib.npz", s / f"{args.data}-eval.npz"
    work = Path(tempfile.mkdtemp(prefix="quantcli-mp-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    cal = CalibrateSettings(data=str(calib))
    t0 = time.perf_counter()
    pipeline.convert(model, work / "int8.onnx", ConvertSettings(), calib_settings=cal)
    t_int8 = time.perf_counter() - t0
    t0 = time.perf_counter()
    mixed = pipeline.convert(model, work / "mixed.onnx", ConvertSettings(max_drop=args.max_drop, eval_data=str(ev)),
                             calib_settings=cal)
    t_mixed = time.perf_counter() - t0
    cmp = CompareSettings(data=str(ev), runs=4, warmup=2)
    res = {k: pipeline.compare(model, work / f"{k}.onnx", cmp) for k in ("int8", "mixed")}
    feeds = {"input": __import__("numpy").load(ev)["input"][:1]}
    sessions = [make_session(str(p), threads=1, spinning=False) for p in (model, work / "int8.onnx",
                                                                          work / "mixed.onnx")]
    lat = measure_latencies(sessions, feeds, runs=600, warmup=60)
    table = Table(title=f"{args.model}: convert --max-drop {args.max_drop:g} (batch-1 latency, 1 thread, same run)")
    for col in ("model", "top-1 %", "drop pts", "float nodes", "INT8 MACs %", "latency ms", "x FP32",
                "convert s"):
        table.add_column(col, justify="left" if col in ("model", "float nodes") else "right")
    fp32_acc = res["int8"].top1[0]
    table.add_row("FP32", f"{fp32_acc:.2f}", "", "all", "0.0", f"{lat[0].median_ms:.3f}", "1.00", "")
    table.add_row("all INT8", f"{res['int8'].top1[1]:.2f}", f"{res['int8'].drop:.2f}", "0",
                  "100.0", f"{lat[1].median_ms:.3f}", f"{lat[1].ratio_to(lat[0]):.2f}", f"{t_int8:.1f}")
    fl = mixed.search.float_nodes if mixed.search else []
    table.add_row(f"--max-drop {args.max_drop:g}", f"{res['mixed'].top1[1]:.2f}", f"{res['mixed'].drop:.2f}",
                  f"{len(fl)}: {', '.join(fl)}", f"{100 * mixed.coverage.mac_share:.1f}", f"{lat[2].median_ms:.3f}",
                  f"{lat[2].ratio_to(lat[0]):.2f}", f"{t_mixed:.1f}")
    console = Console(width=150)
    console.print(table)
    if mixed.search:
        console.print(f"search: {mixed.search.rank_evaluations} ranking + {mixed.search.evaluations} full "
                      f"evaluations in {mixed.search.seconds:.1f}s; "
                      f"bisection steps: " + ", ".join(f"{st['float_nodes']} float -> {st['drop']:.2f} pts"
                                                       for st in mixed.search.steps), highlight=False)


if __name__ == "__main__":
    main()
