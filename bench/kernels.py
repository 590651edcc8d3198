"""INT8 vs FP32 per operator on this CPU: what ONNX Runtime's integer kernels buy here, op by op.

    python bench/kernels.py            # part of `make bench`

Each row is a two-layer model (op -> Relu -> op) quantized by quantcli (static QDQ, uint8 activations, int8
per-channel weights, reduce range where this CPU's u8s8 kernels saturate), timed against its FP32 original in
alternating blocks in the same run, at 1 and 2 intra-op threads.  A ratio below 1.0 means the integer kernel
is faster.  On x86 without VNNI the u8s8 kernels (VPMADDUBSW) reach about FP32 GEMM throughput, so ratios sit
near 1.0 for large compute-bound ops, above it for small ones and for depthwise convolutions, and well below it
only where reading the weights dominates (a MatMul over one or a few rows); with VNNI they drop below 1.0 in
general.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantcli.cpu import detect  # noqa: E402
from quantcli.quantize.policy import plan  # noqa: E402
from quantcli.quantize.qdq import QDQOptions, insert_qdq  # noqa: E402
from quantcli.runtime.bench import measure_latencies  # noqa: E402
from quantcli.runtime.session import make_session, tap_model  # noqa: E402

RNG = np.random.default_rng(0)


def _model(nodes, inits, shape) -> tuple[onnx.ModelProto, tuple]:
    g = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), shape


def conv(cin: int, cout: int, hw: int, k: int, group: int = 1):
    pads = [k // 2] * 4
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="op1", pads=pads, group=group),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="op2", pads=pads, group=group)]
    inits = {"w1": RNG.normal(size=(cout, cin // group, k, k)) * 0.1, "b1": np.zeros(cout),
             "w2": RNG.normal(size=(cout, cout // group, k, k)) * 0.1, "b2": np.zeros(cout)}
    return _model(nodes, inits, (1, cin, hw, hw))


def matmul(seq: int, d: int, f: int):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="op1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="op2")]
    return _model(nodes, {"w1": RNG.normal(size=(d, f)) * 0.1, "w2": RNG.normal(size=(f, d)) * 0.1}, (1, seq, d))


CASES = [
    ("Conv 1->32 3x3 @32x32 (stem)", conv(1, 32, 32, 3)),
    ("Conv 32->64 3x3 @32x32", conv(32, 64, 32, 3)),
    ("Conv 64->64 3x3 @56x56", conv(64, 64, 56, 3)),
    ("Conv 128->128 3x3 @28x28", conv(128, 128, 28, 3)),
    ("Conv 64->64 1x1 @16x16", conv(64, 64, 16, 1)),
    ("Conv 256->256 1x1 @28x28", conv(256, 256, 28, 1)),
    ("depthwise 64 3x3 @16x16", conv(64, 64, 16, 3, group=64)),
    ("depthwise 256 3x3 @56x56", conv(256, 256, 56, 3, group=256)),
    ("MatMul seq 1, 512x2048 (batch-1 FFN)", matmul(1, 512, 2048)),
    ("MatMul seq 1, 768x3072 (batch-1 FFN)", matmul(1, 768, 3072)),
    ("MatMul seq 4, 768x3072", matmul(4, 768, 3072)),
    ("MatMul seq 32, 64x128", matmul(32, 64, 128)),
    ("MatMul seq 128, 256x1024", matmul(128, 256, 1024)),
    ("MatMul seq 128, 768x3072", matmul(128, 768, 3072)),
]


def quantize(model: onnx.ModelProto, shape: tuple, reduce_range: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    p = plan(model)
    x = RNG.normal(size=shape).astype(np.float32)
    tensors = p.calibrated_tensors()
    values = make_session(tap_model(model, tensors)).run(None, {"x": x})
    ranges = {t: (float(v.min()), float(v.max())) for t, v in zip(tensors, values)}
    return insert_qdq(model, p, ranges, QDQOptions(reduce_range=reduce_range)).model, x


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    import onnxruntime

    cpu = detect()
    console = Console(width=140)
    console.print(f"onnxruntime {onnxruntime.__version__}; CPU {cpu.summary()} ({cpu.int8_path})",
                  highlight=False, markup=False)
    table = Table(title="INT8 (QDQ, fused by ONNX Runtime) vs FP32 latency per operator, same run")
    for col in ("model (op -> Relu -> op)", "FP32 ms 1 thr", "INT8 / FP32 1 thr", "FP32 ms 2 thr", "INT8 / FP32 2 thr"):
        table.add_column(col, justify="left" if col.startswith("model") else "right")
    for name, (model, shape) in CASES:
        qmodel, x = quantize(model, shape, cpu.u8s8_saturates)
        cells = []
        for threads in (1, 2):
            sessions = [make_session(m, threads=threads, spinning=False) for m in (model, qmodel)]
            fp32, int8 = measure_latencies(sessions, {"x": x}, runs=200, warmup=20, blocks=10)
            cells += [f"{fp32.median_ms:.3f}", f"{int8.ratio_to(fp32):.2f}"]
        table.add_row(name, *cells)
    console.print(table)


if __name__ == "__main__":
    main()
