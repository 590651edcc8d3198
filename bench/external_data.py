"""Writing a model with external data: quantcli's own writer (:mod:`quantcli.external`) against onnx-ir's
``load`` / ``save`` (the IR torch.onnx uses), on a generated model over 2 GB.

What each does, in a fresh process: load the model without its weights, replace half of the weights by int8
arrays made in memory (as a converter does), keep the others where they lie, and write the model with one
``.data`` file.  Printed: peak RSS, time, and whether the two outputs hold the same tensors.

    python bench/external_data.py [--layers 9] [--dim 8192] [--keep]

Needs onnx-ir (``pip install onnx-ir``, in the ``bench`` extra); the model and outputs go to a temporary folder
(several GB) that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _int8(w: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(w / (np.abs(w).max() / 127)), -127, 127).astype(np.int8)


def with_quantcli(src: str, out: str) -> None:
    from onnx import numpy_helper

    from quantcli import external, modelio

    model = modelio.load_model(src, check=False)
    inits = model.graph.initializer
    for i in range(0, len(inits), 2):
        inits[i].CopyFrom(numpy_helper.from_array(_int8(external.array(inits[i])), inits[i].name))
    with external.stage(model, out):
        pass


def with_onnx_ir(src: str, out: str) -> None:
    import onnx_ir as ir

    model = ir.load(src)
    for i, value in enumerate(list(model.graph.initializers.values())):
        if i % 2 == 0:
            value.const_value = ir.Tensor(_int8(value.const_value.numpy()), name=value.name)
            value.dtype, value.shape = ir.DataType.INT8, ir.Shape(value.const_value.shape)
    ir.save(model, out, external_data=Path(out).name + ".data")


def measure(how: str, src: Path, out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--worker", how, str(src), str(out)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{how} failed")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0


def same_tensors(a: Path, b: Path) -> bool:
    import onnx

    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    ta = {t.name: onnx.numpy_helper.to_array(t) for t in ma.graph.initializer}
    tb = {t.name: onnx.numpy_helper.to_array(t) for t in mb.graph.initializer}
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--worker", nargs=3)
    a = ap.parse_args()
    if a.worker:
        how, src, out = a.worker
        (with_quantcli if how == "quantcli" else with_onnx_ir)(src, out)
        return
    from test_external_data import write_big_model

    with tempfile.TemporaryDirectory(prefix="quantcli-bench-") as tmp:
        tmp = Path(tmp)
        weights = write_big_model(tmp / "big.onnx", a.layers, a.dim)
        print(f"model: {a.layers} float32 {a.dim}x{a.dim} MatMul weights, {weights / 1e9:.2f} GB; half become int8")
        outs = {}
        for how in ("quantcli", "onnx-ir"):
            out = tmp / how / "out.onnx"
            out.parent.mkdir()
            peak, seconds = measure(how, tmp / "big.onnx", out)
            outs[how] = out
            size = out.stat().st_size + (out.parent / "out.onnx.data").stat().st_size
            print(f"{how:9s} peak RSS {peak / 1e9:.2f} GB ({peak / weights:.2f}x the weights), {seconds:.1f} s, "
                  f"output {size / 1e9:.2f} GB")
        print("same tensors:", same_tensors(outs["quantcli"], outs["onnx-ir"]))


if __name__ == "__main__":
    main()
