"""quantcli vs onnxruntime.quantization.quantize_static on every sample model, side by side in one run.

    python bench/compare_ort.py            # or: make bench

For each sample model: FP32; onnxruntime's quantize_static after its quant_pre_process, with its defaults
(QDQ, MinMax, per-tensor) and per-channel; quantcli's default (static INT8 from `quantcli calibrate`).
Prints accuracy (or top-1 agreement with FP32), cosine to FP32, latency ratio to FP32 at batch 1 and batch 32
with 2 threads (all models of a row timed in alternating blocks in the same run), model size, INT8 MAC
coverage of ONNX Runtime's optimized graph, the calibration's wall time (quantcli: `calibrate`; onnxruntime:
quant_pre_process + quantize_static) and the peak memory of producing the model (quantcli: calibrate + convert;
each run in a fresh subprocess; peak RSS is its VmHWM).  A second table checks that calibration memory does
not grow with the number of samples (32 vs 512 samples of the same model; quantcli's `calibrate` alone) and
times the calibration data pass against plain FP32 inference over the same batches (median of 11 adjacent
pairs, each pass on a fresh session).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = ["digits_cnn", "tiny_transformer", "mobile_digits", "digits_mlp"]
sys.path.insert(0, str(ROOT))


# -- calibration workers (run in a subprocess so peak memory is theirs alone) ---------------------------
def _tile(arrays: dict, n: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for k, v in arrays.items():
        reps = -(-n // len(v))
        t = np.concatenate([v] * reps)[:n]
        if t.dtype.kind == "f":
            t = t + rng.normal(scale=0.01, size=t.shape).astype(t.dtype)
        out[k] = t
    return out


def _scratch_dir() -> Path:
    """A temporary folder removed when this process exits."""
    d = Path(tempfile.mkdtemp(prefix="quantcli-bench-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, model: str, data: str, n: int, out: str, per_channel: bool) -> None:
    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files if k != "labels"}
    arrays = _tile(arrays, n)
    tmp = _scratch_dir()
    t0 = time.perf_counter()
    if kind == "quantcli":
        np.savez(tmp / "calib.npz", **arrays)
        from quantcli import pipeline
        from quantcli.recipe import CalibrateSettings, ConvertSettings

        cal = pipeline.calibrate(model, tmp / "calib.json", CalibrateSettings(data=str(tmp / "calib.npz")))
        seconds = time.perf_counter() - t0
        calib_peak = _peak_mb()  # what the flat-memory bar is about: calibrate alone
        pipeline.convert(model, out, ConvertSettings(), calibration=cal.output)
        peak = _peak_mb()
        # the data pass (tap model + statistics) against plain FP32 inference over the same data and batches,
        # each on a fresh session as a user's calibration has, in 11 adjacent pairs (order alternating): the
        # reported ratio is the median of the pairs' ratios, since passes of 10-300 ms drift by +-30% on a
        # shared machine and a pair sees the same conditions
        import gc

        from quantcli.calibration.collect import collect_statistics
        from quantcli.data.sources import DEFAULT_BATCH, Dataset, input_specs
        from quantcli.modelio import load_model
        from quantcli.runtime.session import make_session

        fp32 = load_model(model)
        prep = pipeline.prepare(fp32, cle=True).model
        tensors = pipeline.calibration_tensors(prep)
        ds = Dataset(tmp / "calib.npz", input_specs(fp32))
        nbatches = -(-ds.count_used(DEFAULT_BATCH) // DEFAULT_BATCH)

        def plain_pass() -> float:
            sess = make_session(fp32)
            t1 = time.perf_counter()
            for feeds in ds.batches(DEFAULT_BATCH):
                sess.run(None, feeds)
            return time.perf_counter() - t1

        def data_pass() -> float:
            return collect_statistics(prep, tensors, ds.batches(DEFAULT_BATCH), expected_batches=nbatches).seconds

        plains, passes = [], []
        for i in range(11):
            first, second = (plain_pass, data_pass) if i % 2 == 0 else (data_pass, plain_pass)
            a = first()
            gc.collect()
            b = second()
            gc.collect()
            plains.append(a if first is plain_pass else b)
            passes.append(b if first is plain_pass else a)
        pass_ratio = float(np.median(np.array(passes) / np.array(plains)))
        plain, pass_seconds = float(np.median(plains)), float(np.median(passes))
    else:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)])

            def get_next(self):
                return next(self.it, None)

        pre = tmp / "pre.onnx"
        quant_pre_process(model, str(pre))
        method = CalibrationMethod.Entropy if kind == "ort-entropy" else CalibrationMethod.MinMax
        quantize_static(str(pre), out, Reader(), per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method)
        seconds = time.perf_counter() - t0
        plain = pass_seconds = pass_ratio = None
        peak = calib_peak = _peak_mb()  # quantize_static calibrates and converts in one call
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "calib_peak_mb": calib_peak, "plain_seconds": plain,
                      "pass_seconds": pass_seconds, "pass_ratio": pass_ratio}))


def run_worker(kind: str, model: Path, data: Path, n: int, out: Path, per_channel: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(model), str(data), str(n), str(out)]
    if per_channel:
        cmd.append("--per-channel")
    # each worker runs in its own scratch folder (working directory and TMPDIR), removed afterwards: files a
    # tool leaves behind are counted, not left in /tmp
    with tempfile.TemporaryDirectory(prefix="quantcli-bench-run-") as scratch:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=scratch,
                             env=dict(os.environ, CI="1", TMPDIR=scratch))
        left = sorted(p.name for p in Path(scratch).iterdir())
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:200], "left_behind": left}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]), left_behind=left)


# -- evaluation ------------------------------------------------------------------------------------------
def evaluate(paths: dict[str, Path], eval_npz: Path) -> dict[str, dict]:
    import onnx

    from quantcli.metrics import FidelityAccumulator, agreement_count
    from quantcli.pipeline import _coverage
    from quantcli.runtime.bench import measure_latencies
    from quantcli.runtime.session import make_session

    with np.load(eval_npz) as z:
        feeds = {k: z[k] for k in z.files if k != "labels"}
        labels = z["labels"] if "labels" in z.files else None
    sessions = {k: make_session(str(p), threads=2, spinning=False) for k, p in paths.items()}
    outs = {k: np.concatenate([s.run(None, {n: v[i:i + 64] for n, v in feeds.items()})[0]
                               for i in range(0, len(labels), 64)]) for k, s in sessions.items()}
    ref = outs["fp32"]
    b1 = {k: v[:1] for k, v in feeds.items()}
    b32 = {k: v[:32] for k, v in feeds.items()}
    names = list(sessions)
    # many short alternating blocks: sub-millisecond latencies need thousands of runs to settle
    lat1 = dict(zip(names, measure_latencies([sessions[k] for k in names], b1, runs=3000, warmup=200, blocks=20)))
    lat32 = dict(zip(names, measure_latencies([sessions[k] for k in names], b32, runs=300, warmup=30, blocks=10)))
    rows = {}
    for k, p in paths.items():
        fid = FidelityAccumulator()
        fid.update(ref, outs[k])
        cov = _coverage(onnx.load(str(p)), b1) if k != "fp32" else None
        rows[k] = {
            "accuracy": float((outs[k].argmax(1) == labels).mean() * 100) if labels is not None else None,
            "agreement": agreement_count(ref, outs[k]) / len(ref) * 100,
            "cosine": fid.cosine,
            "lat1_ratio": lat1[k].ratio_to(lat1["fp32"]),
            "lat32_ratio": lat32[k].ratio_to(lat32["fp32"]),
            "lat1_ms": lat1[k].median_ms,
            "lat1_vs_ort": (max(lat1[k].ratio_to(lat1[o]) for o in lat1 if o.startswith("ort"))
                            if k == "quantcli" and any(o.startswith("ort") for o in lat1) else None),
            "size_kb": p.stat().st_size / 1024,
            "coverage": None if cov is None else 100 * cov.mac_share,
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128, help="calibration samples per model")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    import onnxruntime

    from quantcli.cpu import detect

    console = Console(width=170)
    console.print(f"onnxruntime {onnxruntime.__version__}; CPU {detect().summary()} ({detect().int8_path}); 2 intra-op threads; "
                  f"{args.samples} calibration samples", highlight=False, markup=False)
    table = Table(title="quantcli vs onnxruntime.quantization.quantize_static (ratios to FP32, same run)")
    for col in ("model", "variant", "accuracy %", "agree %", "cosine", "lat b1", "lat b32", "b1 vs best ORT",
                "size kB", "INT8 MACs %", "calib s", "peak MB"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    work = _scratch_dir()
    leftovers: list[str] = []  # files a worker left in its scratch folder (working directory / TMPDIR)
    for name in MODELS:
        model, calib, ev = SAMPLES / f"{name}.onnx", SAMPLES / f"{name}-calib.npz", SAMPLES / f"{name}-eval.npz"
        paths = {"fp32": model}
        calib_stats = {}
        for variant, kind, pc in (("ort default", "ort", False), ("ort per-channel", "ort", True),
                                  ("quantcli", "quantcli", True)):
            out = work / f"{name}.{variant.replace(' ', '_')}.onnx"
            stats = run_worker(kind, model, calib, args.samples, out, pc)
            if stats.get("left_behind"):
                leftovers.append(f"{name} {variant}: {len(stats['left_behind'])} file(s), e.g. {stats['left_behind'][0]}")
            calib_stats[variant] = stats
            if "error" in stats:
                console.print(f"{name} {variant}: failed: {stats['error']}", highlight=False, markup=False)
                continue
            paths[variant] = out
        rows = evaluate(paths, ev)
        for variant, r in rows.items():
            st = calib_stats.get(variant, {})
            table.add_row(name, variant,
                          "" if r["accuracy"] is None else f"{r['accuracy']:.2f}", f"{r['agreement']:.2f}",
                          f"{r['cosine']:.5f}", f"{r['lat1_ratio']:.2f}", f"{r['lat32_ratio']:.2f}",
                          "" if r["lat1_vs_ort"] is None else f"{r['lat1_vs_ort']:.3f}",
                          f"{r['size_kb']:.0f}", "" if r["coverage"] is None else f"{r['coverage']:.1f}",
                          f"{st['seconds']:.2f}" if "seconds" in st else "",
                          f"{st['peak_mb']:.0f}" if "peak_mb" in st else "")
    console.print(table)
    mem = Table(title="Calibration peak memory vs sample count (fresh process each; quantcli: `calibrate`, "
                      "onnxruntime: quantize_static, which calibrates and converts in one call)")
    for col in ("model", "tool", "32 samples MB", "512 samples MB", "ratio", "512 samples s",
                "data pass / plain FP32"):
        mem.add_column(col, justify="left" if col in ("model", "tool") else "right")
    for name in MODELS:
        model, calib = SAMPLES / f"{name}.onnx", SAMPLES / f"{name}-calib.npz"
        for tool in ("quantcli", "ort", "ort-entropy"):
            small = run_worker(tool, model, calib, 32, work / "m32.onnx", True)
            big = run_worker(tool, model, calib, 512, work / "m512.onnx", True)
            for n, st in ((32, small), (512, big)):
                if st.get("left_behind"):
                    leftovers.append(f"{name} {tool} ({n} samples): {len(st['left_behind'])} file(s), "
                                     f"e.g. {st['left_behind'][0]}")
            if "calib_peak_mb" in small and "calib_peak_mb" in big:
                mem.add_row(name, tool, f"{small['calib_peak_mb']:.0f}", f"{big['calib_peak_mb']:.0f}",
                            f"{big['calib_peak_mb'] / small['calib_peak_mb']:.2f}", f"{big['seconds']:.2f}",
                            f"{big['pass_ratio']:.2f}" if big.get("pass_ratio") else "")
            else:
                err = big.get("error") or small.get("error")
                mem.add_row(name, tool, "", "", "", "", f"failed: {err[:60]}")
    console.print(mem)
    console.print("temporary files left behind (in the worker's working directory / TMPDIR, removed by the bench): "
                  + ("; ".join(leftovers) if leftovers else "none"), highlight=False, markup=False)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], "--per-channel" in sys.argv)
    else:
        main()
