"""Weight-only INT4: the block packing against ONNX Runtime's MatMulNBits kernel, and convert --precision int4."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from models import small_mlp
from quantcli.cli.app import app
from quantcli.quantize.blockwise import quantize_blockwise
from quantcli.runtime.session import make_session

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _nbits_model(bq, k, n, symmetric, level=0):
    inputs = ["a", "B", "s"] + ([] if symmetric else ["zp"])
    inits = [numpy_helper.from_array(bq.packed, "B"), numpy_helper.from_array(bq.scales.reshape(-1), "s")]
    if not symmetric:
        inits.append(numpy_helper.from_array(bq.zero_points.reshape(-1), "zp"))
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=bq.block_size, accuracy_level=level)
    g = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k,block", [(96, 32), (40, 32), (64, 16), (256, 128)])
def test_packing_is_what_onnxruntime_dequantizes(k, block, symmetric):
    """At accuracy_level 0 MatMulNBits computes A @ dequant(B) in float: it must equal our own dequantization,
    including the zero padding of K to whole blocks and the odd block count's zero-point nibble."""
    rng = np.random.default_rng(k + block)
    w = (rng.normal(size=(k, 24)) * rng.uniform(0.1, 3, size=(1, 24))).astype(np.float32)
    bq = quantize_blockwise(w, block, symmetric=symmetric)
    a = rng.normal(size=(5, k)).astype(np.float32)
    got = make_session(_nbits_model(bq, k, 24, symmetric)).run(None, {"a": a})[0]
    want = a @ bq.dequantize()
    # float accumulation order differs; a wrong nibble would be off by a whole scale step (~1e-1 here)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    deq = bq.dequantize()
    assert deq.shape == w.shape
    # round to nearest: every weight within half a step of its block's scale (symmetric: values clip at +-7)
    step = np.repeat(bq.scales, block, axis=1)[:, :k].T
    assert np.all(np.abs(deq - w) <= 0.5 * step + 1e-6)


def test_zero_is_exact_and_constant_blocks_do_not_divide_by_zero():
    w = np.zeros((32, 4), np.float32)
    w[:, 1] = 0.5
    bq = quantize_blockwise(w, 32)
    assert np.all(np.isfinite(bq.scales))
    np.testing.assert_allclose(bq.dequantize(), w, atol=1e-7)


def test_convert_int4_replaces_weighted_matmuls_and_stays_close(tmp_path):
    onnx.save(small_mlp(), tmp_path / "mlp.onnx")
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--block-size", "16",
                                 "-o", str(tmp_path / "q.onnx"), "--json", str(tmp_path / "r.json"), "-q"])
    assert r.exit_code == 0, r.output
    q = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops
    assert all(a.i == 16 for n in q.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
               if a.name == "block_size")
    x = np.random.default_rng(3).normal(size=(2, 5, 32)).astype(np.float32)
    ref = make_session(small_mlp()).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 15, sqnr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["precision"] == "int4" and set(report["quantized_nodes"]) == {"fc1", "fc2"}


def test_int4_on_the_mlp_sample_gemms_with_bias_and_exclusion(tmp_path):
    r = CliRunner().invoke(app, ["convert", str(SAMPLES / "digits_mlp.onnx"), "--precision", "int4",
                                 "--exclude", "@last", "-o", str(tmp_path / "q.onnx"), "--json",
                                 str(tmp_path / "r.json"), "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    q = onnx.load(tmp_path / "q.onnx")
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(report["quantized_nodes"]) >= 2
    assert all(len(n.input) == 6 and n.input[5] for n in nbits)  # the Gemm bias rides along
    (last,) = [n for n, why in report["float_nodes"].items() if why["reason"] == "excluded"]
    assert any(n.name == last and n.op_type == "Gemm" for n in q.graph.node)
    assert (tmp_path / "q.onnx").stat().st_size < 0.35 * (SAMPLES / "digits_mlp.onnx").stat().st_size
    data = np.load(SAMPLES / "digits_mlp-eval.npz")
    x = data[next(k for k in data.files if k != "labels")][:200]
    name = q.graph.input[0].name
    ref = make_session(onnx.load(SAMPLES / "digits_mlp.onnx")).run(None, {name: x})[0]
    got = make_session(q).run(None, {name: x})[0]
    assert np.mean(ref.argmax(1) == got.argmax(1)) > 0.95


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    """GPTQ's error feedback through the input Hessian: lower output error on held-out inputs than RTN, same packing."""
    from quantcli.quantize.gptq import gptq_quantize

    rng = np.random.default_rng(0)
    k, n = 128, 64
    x = (rng.normal(size=(2048, 16)) @ rng.normal(size=(16, k)) + 0.1 * rng.normal(size=(2048, k))) * np.exp(
        rng.normal(size=k))
    w = rng.normal(size=(k, n)).astype(np.float32)
    fit, held = x[:1024], x[1024:]
    ref = held @ w

    def sqnr(bq):
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - held @ bq.dequantize()) ** 2))

    for symmetric in (False, True):
        rtn = quantize_blockwise(w, 32, symmetric=symmetric)
        gptq = gptq_quantize(w, fit.T @ fit, len(fit), 32, symmetric=symmetric)
        assert sqnr(gptq) > sqnr(rtn) + 6, (symmetric, sqnr(gptq), sqnr(rtn))
        assert gptq.packed.shape == rtn.packed.shape and gptq.codes.max() <= 15


def test_convert_int4_gptq_uses_the_calibration_data(tmp_path):
    onnx.save(small_mlp(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(4).normal(size=(64, 6, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = {}
    for algo in ("rtn", "gptq"):
        r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--block-size", "16",
                                     "--algorithm", algo, "--data", str(tmp_path / "calib.npz"),
                                     "-o", str(tmp_path / f"{algo}.onnx"), "--json", str(tmp_path / f"{algo}.json")])
        assert r.exit_code == 0, r.output
        out[algo] = make_session(onnx.load(tmp_path / f"{algo}.onnx")).run(None, {"x": x[:16]})[0]
    notes = " ".join(json.loads((tmp_path / "gptq.json").read_text())["notes"])
    assert "GPTQ on 64 calibration samples" in notes
    ref = make_session(small_mlp()).run(None, {"x": x[:16]})[0]
    err = {a: float(np.sum((ref - y) ** 2)) for a, y in out.items()}
    assert err["gptq"] < err["rtn"], err
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--algorithm", "gptq",
                                 "-o", str(tmp_path / "no.onnx")])
    assert r.exit_code == 2 and "needs calibration data" in r.output and not (tmp_path / "no.onnx").exists()
