"""HardSwish after a DequantizeLinear written as integer Add and Mul (quantcli/quantize/hardswish.py)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import cnn_data
from quantcli.quantize.hardswish import write_hardswishes

SHAPE = [2, 16, 4, 4]
# an output scale where an integer gate gives every output level of each spelling (not so for 0.03, ...)
SO = 0.15

SPELLINGS = {
    # opset 14 and later
    "HardSwish": (14, lambda: [helper.make_node("HardSwish", ["xd"], ["y"])]),
    # torch.onnx before opset 14
    "x*HardSigmoid(x)": (13, lambda: [helper.make_node("HardSigmoid", ["xd"], ["h"], alpha=1 / 6, beta=0.5),
                                      helper.make_node("Mul", ["xd", "h"], ["y"])]),
    # Paddle2ONNX, opset 11: x * Clip(x + 3, 0, 6) / 6
    "x*Clip(x+3,0,6)/6": (11, lambda: [helper.make_node("Add", ["xd", "c3"], ["a"]),
                                       helper.make_node("Clip", ["a", "c0", "c6"], ["c"]),
                                       helper.make_node("Mul", ["xd", "c"], ["m"]),
                                       helper.make_node("Div", ["m", "c6"], ["y"])]),
    # the same with the division first and another gate: x * (Clip(x + 2.5, 0, 6) * (1/5)), gate 0..1.2
    "x*(Clip(x+2.5,0,6)*0.2)": (11, lambda: [helper.make_node("Add", ["c25", "xd"], ["a"]),
                                             helper.make_node("Clip", ["a", "c0", "c6"], ["c"]),
                                             helper.make_node("Mul", ["c", "c02"], ["d"]),
                                             helper.make_node("Mul", ["d", "xd"], ["y"])]),
}


def _model(body, opset, elem=TensorProto.UINT8, quantized_output=True, so=SO):
    """x -> Q -> DQ -> body -> y [-> Q -> DQ]: a HardSwish between two quantized tensors (output scale ``so``)."""
    zp_in, zp_out = (128, 40) if elem == TensorProto.UINT8 else (0, -88)
    np_t = np.uint8 if elem == TensorProto.UINT8 else np.int8
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]), *body]
    out = "y"
    if quantized_output:
        nodes += [helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "so", "zo"], ["out"])]
        out = "out"
    consts = {"c0": 0.0, "c3": 3.0, "c25": 2.5, "c6": 6.0, "c02": 0.2, "s": 0.05, "so": so}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(np.array(zp_in, np_t), "z"), numpy_helper.from_array(np.array(zp_out, np_t), "zo")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, SHAPE)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x, optimize: bool):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, x)[0]


def _optimized_ops(model, tmp_path) -> set[str]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}


def _inputs():
    # every input level (scale 0.05, 256 levels from -6.4) and 256 values between them and past them
    x = np.concatenate([np.arange(-128, 128) * 0.05, np.random.default_rng(0).normal(0, 3, 256)])
    return {"x": x.astype(np.float32).reshape(SHAPE)}


def _expected(x, model, elem):
    """The rewritten model by the ONNX operator definitions, in numpy float32 with its own constants: x
    dequantized, alpha * x + beta quantized on the gate's [0, M] grid (its saturation is the clip), x * gate
    quantized with the output's scale and zero point."""
    c = {t.name.removeprefix("xd_"): numpy_helper.to_array(t) for t in model.graph.initializer}
    lo, hi, zp_in, zp_out = (0, 255, 128, 40) if elem == TensorProto.UINT8 else (-128, 127, 0, -88)
    f = np.float32
    xq = np.clip(np.rint(x / f(0.05)) + zp_in, lo, hi)
    xd = ((xq - zp_in) * f(0.05)).astype(f)
    ax = ((xq - zp_in) * c["gate_alpha_scale"]).astype(f)
    b = f((f(c["gate_beta_quantized"]) - f(c["gate_beta_zero_point"])) * c["gate_beta_scale"])
    gq = np.clip(np.rint((ax + b).astype(f) / c["gate_scale"]) + lo, lo, hi)
    gd = ((gq - lo) * c["gate_scale"]).astype(f)
    yq = np.clip(np.rint((xd * gd).astype(f) / f(SO)) + zp_out, lo, hi)
    return ((yq - zp_out) * f(SO)).astype(f), c


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_each_spelling_becomes_integer_add_and_mul(spelling, tmp_path):
    opset, body = SPELLINGS[spelling]
    elem = TensorProto.UINT8
    m = _model(body(), opset, elem)
    x = _inputs()
    before = _run(m, x, optimize=False)
    assert write_hardswishes(m) == (1, 0)
    ops = [n.op_type for n in m.graph.node]
    assert not {"HardSwish", "HardSigmoid", "Clip", "Div"} & set(ops)
    used = {i for n in m.graph.node for i in n.input}
    assert all(t.name in used for t in m.graph.initializer)  # the replaced ops' constants went with them
    # the gate: clip(alpha x + beta, 0, M), alpha within 5% and beta within half a gate step of the HardSwish's
    alpha, beta, top = (0.2, 0.5, 1.2) if "2.5" in spelling else (1 / 6, 0.5, 1.0)
    expected, c = _expected(x["x"], m, elem)
    assert abs(c["gate_alpha_scale"] / 0.05 / alpha - 1) <= 0.05 + 1e-6
    assert abs(c["gate_beta_scale"] * 255 - beta) <= 0.5 * top / 255 + 1e-6
    assert c["gate_scale"] * 255 == pytest.approx(top, rel=1e-6)
    # as the ONNX operators define it (ONNX Runtime, nothing fused) ...
    exact = _run(m, x, optimize=False)
    np.testing.assert_array_equal(exact, expected)
    # ... the same output, level for level, as the HardSwish it replaced ...
    np.testing.assert_array_equal(exact, before)
    # ... and fused by ONNX Runtime into its integer kernels, with the same values to one level
    fused = _run(m, x, optimize=True)
    assert np.max(np.abs(fused - exact)) <= SO + 1e-6
    assert {"QLinearAdd", "QLinearMul"} <= _optimized_ops(m, tmp_path)


def test_left_in_float_where_no_integer_gate_gives_every_output_level():
    """Output scale 0.03: the gate's steps of 1/255 put x * gate one output level off on some input levels for
    every alpha and beta near the HardSwish's, so it stays as it was (and is counted)."""
    m = _model(SPELLINGS["HardSwish"][1](), 14, so=0.03)
    before = m.SerializeToString()
    assert write_hardswishes(m) == (0, 1)
    assert m.SerializeToString() == before


def test_left_alone_where_no_integer_kernel_would_run_or_no_hardswish_is_computed():
    # the HardSwish's output is not quantized: a QLinearMul has nowhere to write
    assert write_hardswishes(_model(SPELLINGS["HardSwish"][1](), 14, quantized_output=False)) == (0, 0)
    # int8 activations (--symmetric): ONNX Runtime fuses no int8 Add or Mul, the rewrite would add float ops
    assert write_hardswishes(_model(SPELLINGS["HardSwish"][1](), 14, TensorProto.INT8)) == (0, 0)
    # x * Sigmoid(x) (SiLU) is no clipped line; x * Clip(x, 0, 6) has no offset (ONNX Runtime drops such Clips)
    silu = [helper.make_node("Sigmoid", ["xd"], ["h"]), helper.make_node("Mul", ["xd", "h"], ["y"])]
    assert write_hardswishes(_model(silu, 13)) == (0, 0)
    relu6 = [helper.make_node("Clip", ["xd", "c0", "c6"], ["c"]), helper.make_node("Mul", ["xd", "c"], ["y"])]
    assert write_hardswishes(_model(relu6, 13)) == (0, 0)
    # a squeeze-excite gate, HardSigmoid(s) * x for another x: its values use a small part of its grid
    se = [helper.make_node("HardSigmoid", ["xd"], ["h"], alpha=0.2, beta=0.5),
          helper.make_node("Mul", ["h", "other"], ["y"])]
    m = _model(se, 13)
    m.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, SHAPE))
    assert write_hardswishes(m) == (0, 0)


def test_convert_writes_integer_hardswish(tmp_path):
    """End to end: Conv -> HardSwish -> Conv -> Relu -> Conv converts with the HardSwish rewritten (a note says
    so), ONNX Runtime runs it as QLinearAdd and QLinearMul between the QLinearConvs, and the output stays close to
    FP32's.  (The last Conv writes the graph output and stays float.)"""
    from quantcli import pipeline
    from quantcli.recipe import CalibrateSettings, ConvertSettings

    rng = np.random.default_rng(0)
    body = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1] * 4),
            helper.make_node("HardSwish", ["h"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["c"], name="conv2"),
            helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w3"], ["out"], name="conv3")]
    inits = [numpy_helper.from_array((rng.normal(size=(8, 3, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.normal(size=(8, 8, 1, 1)) * 0.5).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.normal(size=(4, 8, 1, 1)) * 0.5).astype(np.float32), "w3")]
    g = helper.make_graph(body, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])], inits)
    fp32 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(fp32, tmp_path / "m.onnx")
    data = cnn_data(16)
    np.savez(tmp_path / "c.npz", x=data)
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    assert any("1 HardSwish(es) after a DequantizeLinear written as integer Add and Mul" in n for n in r.notes)
    q = onnx.load(tmp_path / "q.onnx")
    assert "HardSwish" not in {n.op_type for n in q.graph.node}
    ops = _optimized_ops(q, tmp_path)
    assert {"QLinearConv", "QLinearAdd", "QLinearMul"} <= ops and not {"HardSwish", "HardSigmoid"} & ops
    ref, got = _run(fp32, {"x": data}, True), _run(q, {"x": data}, True)
    assert 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got) ** 2)) > 25
