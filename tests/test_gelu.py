"""Decomposed GELUs after a DequantizeLinear written as one Gelu op (quantcli/quantize/gelu.py)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import cnn_data
from quantcli.quantize.gelu import write_gelus
from quantcli.runtime.session import make_session

SQRT2 = float(np.sqrt(2.0))
def _mul(a, b, out):
    return helper.make_node("Mul", [a, b], [out])


SPELLINGS = {
    # x / sqrt 2 -> erf -> + 1 -> * x -> * 0.5  (Paddle2ONNX, torch.onnx TorchScript)
    "div_mul_x_then_half": lambda: [helper.make_node("Div", ["xd", "c_sqrt2"], ["p"]),
                                    helper.make_node("Erf", ["p"], ["e"]),
                                    helper.make_node("Add", ["e", "c_one"], ["a"]),
                                    _mul("xd", "a", "m"), _mul("m", "c_half", "y")],
    # x * (1 / sqrt 2) -> erf -> 1 + -> * 0.5 -> * x
    "mul_half_then_x": lambda: [_mul("c_isqrt2", "xd", "p"), helper.make_node("Erf", ["p"], ["e"]),
                                helper.make_node("Add", ["c_one", "e"], ["a"]),
                                _mul("a", "c_half", "m"), _mul("m", "xd", "y")],
    # (x * 0.5) * (1 + erf(x / sqrt 2))
    "half_x_first": lambda: [helper.make_node("Div", ["xd", "c_sqrt2"], ["p"]), helper.make_node("Erf", ["p"], ["e"]),
                             helper.make_node("Add", ["e", "c_one"], ["a"]),
                             _mul("xd", "c_half", "h"), _mul("h", "a", "y")],
}


def _model(body, opset=17, dequantized=True):
    head = ([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd0"]),
             helper.make_node("Identity", ["xd0"], ["xd"])] if dequantized else
            [helper.make_node("Relu", ["x"], ["xd"])])
    consts = {"c_sqrt2": SQRT2, "c_isqrt2": 1 / SQRT2, "c_one": 1.0, "c_half": 0.5, "s": 0.05}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array(128, np.uint8), "z"))
    g = helper.make_graph(head + body, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize("opset,domain", [(17, "com.microsoft"), (20, "")])
def test_each_spelling_becomes_one_gelu_with_the_same_outputs(spelling, opset, domain):
    m = _model(SPELLINGS[spelling](), opset)
    x = {"x": np.random.default_rng(0).normal(0, 3, (2, 8, 4, 4)).astype(np.float32)}
    before = make_session(m).run(None, x)[0]
    assert write_gelus(m) == 1
    gelus = [n for n in m.graph.node if n.op_type == "Gelu"]
    assert len(gelus) == 1 and gelus[0].domain == domain and list(gelus[0].input) == ["xd"]
    assert not any(n.op_type in ("Erf", "Div", "Mul", "Add") for n in m.graph.node)
    used = {i for n in m.graph.node for i in n.input}
    assert all(t.name in used for t in m.graph.initializer)  # the pattern's constants went with it
    np.testing.assert_allclose(make_session(m).run(None, x)[0], before, rtol=1e-5, atol=1e-6)


def test_left_alone_without_a_dequantize_or_with_other_constants():
    """ONNX Runtime fuses a GELU on a float input itself; a 0.6 where 0.5 belongs is no GELU."""
    assert write_gelus(_model(SPELLINGS["div_mul_x_then_half"](), dequantized=False)) == 0
    m = _model(SPELLINGS["div_mul_x_then_half"]())
    for t in m.graph.initializer:
        if t.name == "c_half":
            t.CopyFrom(numpy_helper.from_array(np.array(0.6, np.float32), "c_half"))
    assert write_gelus(m) == 0


def test_convert_writes_the_gelu_and_onnx_runtime_runs_no_erf(tmp_path):
    """End to end: Conv -> GELU -> Conv converts with the GELU as one op (a note says so), and ONNX Runtime's
    optimized graph of the output has no Erf left (the spelled-out GELU after the Conv's DequantizeLinear kept
    five float ops there)."""
    from quantcli import pipeline
    from quantcli.recipe import CalibrateSettings, ConvertSettings

    rng = np.random.default_rng(0)
    body = [helper.make_node("Conv", ["x", "w1"], ["xd"], name="conv1", pads=[1] * 4),
            *SPELLINGS["div_mul_x_then_half"](), helper.make_node("Conv", ["y", "w2"], ["out"], name="conv2")]
    consts = {"c_sqrt2": SQRT2, "c_one": 1.0, "c_half": 0.5}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array((rng.normal(size=(8, 3, 3, 3)) * 0.5).astype(np.float32), "w1"),
              numpy_helper.from_array((rng.normal(size=(4, 8, 1, 1)) * 0.5).astype(np.float32), "w2")]
    g = helper.make_graph(body, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=cnn_data(16))
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    assert any("1 GELU(s) after a DequantizeLinear" in n for n in r.notes)
    q = onnx.load(tmp_path / "q.onnx")
    assert [n.domain for n in q.graph.node if n.op_type == "Gelu"] == ["com.microsoft"]
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(tmp_path / "opt.onnx")
    assert not any(n.op_type == "Erf" for n in opt.graph.node)
    assert "QLinearConv" in {n.op_type for n in opt.graph.node}
