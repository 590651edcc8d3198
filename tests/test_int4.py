"""Weight-only INT4: the block packing against ONNX Runtime's MatMulNBits kernel, and convert --precision int4."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from models import _model, correlated_layer, small_mlp
from quantcli.cli.app import app
from quantcli.quantize.blockwise import quantize_blockwise
from quantcli.runtime.session import make_session

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _ffn(d: int = 256, seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add -> Relu -> MatMul+Add on [batch, seq, d]: d x d weights, large enough for INT4 to pay off."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
             helper.make_node("Add", ["o", "b2"], ["y"], name="fc2_bias")]
    inits = [numpy_helper.from_array((rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.normal(size=d) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.normal(size=d) * 0.1).astype(np.float32), "b2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d])], inits)


def _nbits_model(bq, k, n, symmetric, level=0):
    inputs = ["a", "B", "s"] + ([] if symmetric else ["zp"])
    inits = [numpy_helper.from_array(bq.packed, "B"), numpy_helper.from_array(bq.scales.reshape(-1), "s")]
    if not symmetric:
        inits.append(numpy_helper.from_array(bq.zero_points.reshape(-1), "zp"))
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bq.bits,
                            block_size=bq.block_size, accuracy_level=level)
    g = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k,block", [(96, 32), (40, 32), (64, 16), (256, 128)])
def test_packing_is_what_onnxruntime_dequantizes(k, block, symmetric, bits):
    """At accuracy_level 0 MatMulNBits computes A @ dequant(B) in float: it must equal our own dequantization,
    including the zero padding of K to whole blocks and the odd block count's zero-point nibble."""
    rng = np.random.default_rng(k + block)
    w = (rng.normal(size=(k, 24)) * rng.uniform(0.1, 3, size=(1, 24))).astype(np.float32)
    bq = quantize_blockwise(w, block, symmetric=symmetric, bits=bits)
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
    onnx.save(_ffn(), tmp_path / "mlp.onnx")
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--block-size", "16",
                                 "-o", str(tmp_path / "q.onnx"), "--json", str(tmp_path / "r.json"), "-q"])
    assert r.exit_code == 0, r.output
    q = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops
    assert all(a.i == 16 for n in q.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
               if a.name == "block_size")
    x = np.random.default_rng(3).normal(size=(2, 5, 256)).astype(np.float32)
    ref = make_session(_ffn()).run(None, {"x": x})[0]
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
    assert len(nbits) == len(report["quantized_nodes"]) == 1  # 768x768; 64x768 is too small to pay off
    assert all(len(n.input) == 6 and n.input[5] for n in nbits)  # the Gemm bias rides along
    (last,) = [n for n, why in report["float_nodes"].items() if why["reason"] == "excluded"]
    (small,) = [n for n, why in report["float_nodes"].items() if "too small for INT4" in why["detail"]]
    assert small != last
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

    w, fit, sqnr = correlated_layer(128, 64)

    for symmetric in (False, True):
        rtn = quantize_blockwise(w, 32, symmetric=symmetric)
        gptq = gptq_quantize(w, fit.T @ fit, len(fit), 32, symmetric=symmetric)
        assert sqnr(gptq) > sqnr(rtn) + 6, (symmetric, sqnr(gptq), sqnr(rtn))
        assert gptq.packed.shape == rtn.packed.shape and gptq.codes.max() <= 15


def _convert_each(tmp_path, algorithms, x) -> dict:
    """convert --precision int4 with each algorithm on calib.npz; -> algorithm -> (model, outputs on x[:16])."""
    out = {}
    for algo in algorithms:
        r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--block-size", "16",
                                     "--algorithm", algo, "--data", str(tmp_path / "calib.npz"),
                                     "-o", str(tmp_path / f"{algo}.onnx"), "--json", str(tmp_path / f"{algo}.json")])
        assert r.exit_code == 0, r.output
        q = onnx.load(tmp_path / f"{algo}.onnx")
        out[algo] = (q, make_session(q).run(None, {"x": x[:16]})[0])
    return out


def test_convert_int4_gptq_uses_the_calibration_data(tmp_path):
    onnx.save(_ffn(), tmp_path / "mlp.onnx")
    x = (np.random.default_rng(4).normal(size=(64, 6, 16)) @ np.random.default_rng(5).normal(size=(16, 256))).astype(
        np.float32)  # correlated input channels, as real activations have
    np.savez(tmp_path / "calib.npz", x=x)
    out = _convert_each(tmp_path, ("rtn", "gptq"), x)
    notes = " ".join(json.loads((tmp_path / "gptq.json").read_text())["notes"])
    assert "GPTQ on 64 calibration samples" in notes
    ref = make_session(_ffn()).run(None, {"x": x[:16]})[0]
    err = {a: float(np.sum((ref - y) ** 2)) for a, (_, y) in out.items()}
    assert err["gptq"] < err["rtn"], err
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "--algorithm", "gptq",
                                 "-o", str(tmp_path / "no.onnx")])
    assert r.exit_code == 2 and "needs calibration data" in r.output and not (tmp_path / "no.onnx").exists()


def test_awq_scales_help_where_input_channels_carry_outliers():
    """AWQ's search includes alpha = 0 (round to nearest), so on the calibration data it is never worse; with a few
    input channels 30x larger than the rest it is better on held-out inputs too."""
    from quantcli.quantize.awq import awq_scales

    rng = np.random.default_rng(1)
    k, n = 128, 48
    mag = np.ones(k)
    mag[rng.choice(k, 6, replace=False)] = 30.0
    x = rng.normal(size=(4096, k)) * mag
    w = rng.normal(size=(k, n)).astype(np.float32)
    fit, held = x[:2048], x[2048:]
    s, alpha, err, rtn = awq_scales([w], fit.T @ fit, len(fit), 32)
    assert alpha > 0 and err < rtn
    ref = held @ w
    rtn_q = quantize_blockwise(w, 32).dequantize()
    awq_q = quantize_blockwise((w * s[:, None]).astype(np.float32), 32).dequantize() / s[:, None]
    assert np.sum((ref - held @ awq_q) ** 2) < 0.9 * np.sum((ref - held @ rtn_q) ** 2)


def test_convert_int4_awq_inserts_one_mul_per_scaled_input(tmp_path):
    onnx.save(_ffn(), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 6, 256)).astype(np.float32)
    x[..., :3] *= 25.0  # outlier input channels
    np.savez(tmp_path / "calib.npz", x=x)
    outs = _convert_each(tmp_path, ("rtn", "awq"), x)
    q = outs["awq"][0]
    muls = [n for n in q.graph.node if n.op_type == "Mul" and n.name.endswith("_awq_Mul")]
    assert muls and muls[0].input[0] == "x"
    assert any(n.op_type == "MatMulNBits" and n.input[0] == muls[0].output[0] for n in q.graph.node)
    ref = make_session(_ffn()).run(None, {"x": x[:16]})[0]
    err = {a: float(np.sum((ref - y) ** 2)) for a, (_, y) in outs.items()}
    assert err["awq"] < err["rtn"], err
    assert "AWQ:" in " ".join(json.loads((tmp_path / "awq.json").read_text())["notes"])


def test_small_weights_stay_float_with_the_reason(tmp_path):
    onnx.save(small_mlp(), tmp_path / "mlp.onnx")  # 32x64 and 64x8 weights
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "mlp.onnx"), "--precision", "int4", "-o",
                                 str(tmp_path / "q.onnx"), "--json", str(tmp_path / "r.json"), "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["quantized_nodes"]
    assert all("too small for INT4" in report["float_nodes"][n]["detail"] for n in ("fc1", "fc2"))
    assert not any(n.op_type == "MatMulNBits" for n in onnx.load(tmp_path / "q.onnx").graph.node)


def test_int8_node_rule_keeps_a_layer_at_8_bits(tmp_path):
    """Mixed weight-only precision: an int8 node rule makes that layer an 8-bit MatMulNBits, closer to FP32."""
    onnx.save(_ffn(), tmp_path / "m.onnx")
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "m.onnx"), "--precision", "int4", "--node",
                                 "fc2:precision=int8", "-o", str(tmp_path / "q.onnx"), "-q"])
    assert r.exit_code == 0, r.output
    q = onnx.load(tmp_path / "q.onnx")
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in q.graph.node
            if n.op_type == "MatMulNBits"}
    assert bits == {"fc1": 4, "fc2": 8}
    x = np.random.default_rng(2).normal(size=(2, 4, 256)).astype(np.float32)
    assert np.all(np.isfinite(make_session(q).run(None, {"x": x})[0]))
