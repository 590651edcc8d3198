"""Accuracy recovery on the MobileNet-style sample: per-tensor / per-channel INT8 with and without
cross-layer equalization (CLE) and bias correction (BC), side by side in one run.

    python bench/recovery.py [--model mobile_digits]

Each row calibrates (with or without CLE, as convert needs) and converts the model, then measures top-1
accuracy on the held-out set and fidelity (cosine, SQNR) to the FP32 model.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from quantcli import pipeline  # noqa: E402
from quantcli.recipe import BiasCorrection, CalibrateSettings, CompareSettings, ConvertSettings, Weights  # noqa: E402

ROWS = [
    ("per-tensor", Weights.PER_TENSOR, False, BiasCorrection.OFF),
    ("per-tensor + CLE", Weights.PER_TENSOR, True, BiasCorrection.OFF),
    ("per-tensor + CLE + BC (empirical)", Weights.PER_TENSOR, True, BiasCorrection.EMPIRICAL),
    ("per-tensor + CLE + BC (analytic)", Weights.PER_TENSOR, True, BiasCorrection.ANALYTIC),
    ("per-channel", Weights.PER_CHANNEL, False, BiasCorrection.OFF),
    ("per-channel + BC (empirical)", Weights.PER_CHANNEL, False, BiasCorrection.EMPIRICAL),
    ("per-channel + CLE + BC (quantcli default)", Weights.PER_CHANNEL, True, BiasCorrection.EMPIRICAL),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobile_digits", help="sample model name (default: mobile_digits)")
    args = ap.parse_args()
    samples = ROOT / "sample_models"
    model, calib, ev = (samples / f"{args.model}.onnx", samples / f"{args.model}-calib.npz",
                        samples / f"{args.model}-eval.npz")
    work = Path(tempfile.mkdtemp(prefix="quantcli-recovery-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    table = Table(title=f"{args.model}: INT8 accuracy recovery (held-out top-1; fidelity to FP32)")
    for col in ("variant", "top-1 %", "drop pts", "cosine", "SQNR dB"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    fp32_row = False
    for label, weights, cle, bc in ROWS:
        settings = ConvertSettings(weights=weights, cle=cle, bias_correction=bc)
        cal = pipeline.calibrate(model, work / f"calib-{cle}.json", CalibrateSettings(data=str(calib)),
                                 convert_settings=settings)
        out = work / "q.onnx"
        pipeline.convert(model, out, settings, calibration=cal.output, min_cosine=None)  # collapses are measured
        res = pipeline.compare(model, out, CompareSettings(data=str(ev), runs=2, warmup=2))
        if not fp32_row:
            table.add_row("FP32", f"{res.top1[0]:.2f}", "", "1.00000", "inf")
            fp32_row = True
        o = res.outputs[0]
        table.add_row(label, f"{res.top1[1]:.2f}", f"{res.drop:.2f}", f"{o.cosine:.5f}", f"{o.sqnr_db:.1f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
