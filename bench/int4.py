"""Weight-only INT4 side by side, in one run: quantcli (RTN, GPTQ, AWQ) against onnxruntime's
MatMulNBitsQuantizer (its default RTN, block 128 and block 32) on the same models and data.

Models: the MLP sample (digits, labels: top-1 accuracy), the character-level decoder sample (tiny_lm: next-token
perplexity on held-out text) and a generated two-layer 1024-wide FFN on correlated inputs (synthetic: agreement
and output SQNR against FP32).  Columns: metric, output SQNR vs FP32, latency
ratio to FP32 at batch 1 (all variants measured in alternating blocks in one call, 1 thread), file size ratio,
quantization time.  Needs the bench extra (onnx-ir, which onnxruntime's quantizer imports).

    python bench/int4.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from quantcli import pipeline  # noqa: E402
from quantcli.cpu import detect  # noqa: E402
from quantcli.metrics import next_token_nll  # noqa: E402
from quantcli.recipe import CalibrateSettings, ConvertSettings, Precision, WeightAlgorithm  # noqa: E402
from quantcli.runtime.bench import measure_latencies  # noqa: E402
from quantcli.runtime.session import make_session  # noqa: E402


def wide_ffn(work: Path, d: int = 1024) -> tuple[Path, Path, np.ndarray]:
    """A 2-layer d-wide FFN with random weights, and correlated inputs (rank 64 plus noise, uneven channels)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array((rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32), n) for n in ("w1", "w2")]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", d])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.normal(size=(768, 64)) @ rng.normal(size=(64, d)) + 0.3 * rng.normal(size=(768, d))) * np.exp(
        0.7 * rng.normal(size=d))
    x = x.astype(np.float32)
    onnx.save(m, work / "ffn.onnx")
    np.savez(work / "ffn-calib.npz", x=x[:256])
    return work / "ffn.onnx", work / "ffn-calib.npz", x[256:]


def ort_int4(model: Path, out: Path, block: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(onnx.load(model), algo_config=DefaultWeightOnlyQuantConfig(block_size=block))
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quantcli-int4-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    s = ROOT / "sample_models"
    mlp = np.load(s / "digits_mlp-eval.npz")
    cases = [("digits_mlp", s / "digits_mlp.onnx", s / "digits_mlp-calib.npz",
              mlp[[k for k in mlp.files if k != "labels"][0]], mlp["labels"]),
             ("tiny_lm (64-token windows)", s / "tiny_lm.onnx", s / "tiny_lm-calib.npz",
              np.load(s / "tiny_lm-eval.npz")["input_ids"], None),
             ("ffn-1024 (synthetic)", *wide_ffn(work), None)]
    console = Console(width=140)
    console.print(f"CPU: {detect().summary()}; onnxruntime {__import__('onnxruntime').__version__}; 1 thread",
                  markup=False, highlight=False)
    for name, model, calib, x, labels in cases:
        console.print(_case(name, model, calib, x, labels, work, args.runs))


def _variants(model: Path, calib: Path, work: Path) -> dict[str, tuple[Path, float]]:
    out: dict[str, tuple[Path, float]] = {}
    for algo, block in ((WeightAlgorithm.RTN, 32), (WeightAlgorithm.GPTQ, 32), (WeightAlgorithm.AWQ, 32),
                        (WeightAlgorithm.RTN, 128)):
        path = work / f"{model.stem}.{algo.value}{block}.onnx"
        t0 = time.perf_counter()
        pipeline.convert(model, path, ConvertSettings(precision=Precision.INT4, algorithm=algo, block_size=block),
                         calib_settings=CalibrateSettings(data=str(calib)))
        out[f"quantcli {algo.value} b{block}"] = (path, time.perf_counter() - t0)
    for block in (128, 32):
        path = work / f"{model.stem}.ort{block}.onnx"
        t0 = time.perf_counter()
        ort_int4(model, path, block)
        out[f"onnxruntime RTN b{block}" + (" (default)" if block == 128 else "")] = (path, time.perf_counter() - t0)
    return out


def _case(name: str, model: Path, calib: Path, x: np.ndarray, labels, work: Path, runs: int) -> Table:
    variants = {"FP32": (model, 0.0), **_variants(model, calib, work)}
    sessions = {k: make_session(p, threads=1, spinning=False) for k, (p, _) in variants.items()}
    iname = sessions["FP32"].get_inputs()[0].name
    outs = {k: s.run(None, {iname: x})[0] for k, s in sessions.items()}
    lat = dict(zip(sessions, measure_latencies(list(sessions.values()), {iname: x[:1]}, runs=runs)))
    ref = outs["FP32"]
    lm = ref.ndim == 3
    t = Table(title=f"{name}: {len(x)} held-out samples", title_justify="left")
    for col in ("variant", "top-1 %" if labels is not None else "perplexity" if lm else "agreement %", "SQNR dB",
                "latency x FP32", "size x FP32", "quantize s"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for k, (path, seconds) in variants.items():
        y = outs[k]
        if lm:
            nll, count = next_token_nll(y, x)
            metric = float(np.exp(nll / count))
        else:
            metric = 100 * np.mean(y.argmax(1) == (labels if labels is not None else ref.argmax(1)))
        sqnr = 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - y) ** 2), 1e-30)) if k != "FP32" else float("inf")
        t.add_row(k, f"{metric:.3f}" if lm else f"{metric:.2f}", f"{sqnr:.1f}", f"{lat[k].ratio_to(lat['FP32']):.2f}",
                  f"{path.stat().st_size / model.stat().st_size:.2f}", f"{seconds:.1f}")
    return t


if __name__ == "__main__":
    main()
