"""Model classes met in the real-model zoo (bench/zoo.py), each as a tiny onnx.helper model: quantcli's default
calibrate + convert must run on it (no crash, no hang) and the result must match FP32 closely."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import _init, _model
from quantcli import pipeline
from quantcli.recipe import CalibrateSettings, ConvertSettings
from quantcli.runtime.session import make_session


def _convert(tmp_path, model, data: dict):
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **data)
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    return r, make_session(model), make_session(str(tmp_path / "q.onnx"))


def _conv_stem(rng, x="x", cin=3, cout=8):
    return ([helper.make_node("Conv", [x, "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu")],
            [_init("wc", rng.normal(size=(cout, cin, 3, 3)) * 0.3), _init("bc", rng.normal(size=cout) * 0.1)])


def _close(ref, got, tol=0.05):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return np.abs(ref - got).max() <= tol * max(1e-6, np.abs(ref).max())


def test_if_subgraph_on_a_scalar_int64_input(tmp_path):
    """silero-vad (spox / torch.onnx): the network sits in the branches of an If on `sr == 16000`, with a scalar
    int64 input; the data holds one sr per sample (fed as a 0-d array per batch). The branches read the Conv's
    output from the outer scope: bodies are not quantized, and the Conv has no quantized consumer to fuse its
    output with, so it stays float and says why; the model runs and matches FP32."""
    rng = np.random.default_rng(0)
    stem, inits = _conv_stem(rng)

    def branch(name, w):
        return helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["r"], [f"{name}_g"]),
             helper.make_node("Flatten", [f"{name}_g"], [f"{name}_f"]),
             helper.make_node("MatMul", [f"{name}_f", w], [f"{name}_y"])],
            name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 4])])

    nodes = stem + [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(16000, np.int64))),
        helper.make_node("Equal", ["sr", "k"], ["is16"]),
        helper.make_node("If", ["is16"], ["y"], name="if", then_branch=branch("then", "w16"),
                         else_branch=branch("else", "w8")),
    ]
    inits += [_init("w16", rng.normal(size=(8, 4))), _init("w8", rng.normal(size=(8, 4)))]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
                       helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    x = rng.normal(size=(20, 3, 8, 8)).astype(np.float32)
    r, ref, q = _convert(tmp_path, m, {"x": x, "sr": np.full(20, 16000, np.int64)})
    feeds = {"x": x[:4], "sr": np.array(16000, np.int64)}
    assert "conv" in r.float_nodes
    assert _close(ref.run(None, feeds)[0], q.run(None, feeds)[0])


def test_lstm_with_state_inputs_and_outputs(tmp_path):
    """silero-vad's sequence model: Conv features -> LSTM with initial_h / initial_c inputs of fixed batch 1,
    the final states as extra outputs. Samples are single steps with the states an FP32 run recorded."""
    rng = np.random.default_rng(1)
    hid, feat, seq = 8, 6, 5
    nodes = [
        helper.make_node("MatMul", ["x", "wp"], ["p"], name="proj"),
        helper.make_node("Unsqueeze", ["p", "ax1"], ["p3"]),
        helper.make_node("LSTM", ["p3", "W", "R", "B", "", "h", "c"], ["Y", "hn", "cn"], name="lstm",
                         hidden_size=hid),
        helper.make_node("Squeeze", ["Y", "ax1"], ["y"]),
    ]
    inits = [_init("wp", rng.normal(size=(feat, feat)) * 0.5), _init("W", rng.normal(size=(1, 4 * hid, feat)) * 0.3),
             _init("R", rng.normal(size=(1, 4 * hid, hid)) * 0.3), _init("B", rng.normal(size=(1, 8 * hid)) * 0.1),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", feat]),
                       helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hid]),
                       helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, hid])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, hid]),
                helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, 1, hid]),
                helper.make_tensor_value_info("cn", TensorProto.FLOAT, [1, 1, hid])], inits)
    x = rng.normal(size=(24, feat)).astype(np.float32)
    h = rng.normal(size=(24, 1, 1, hid)).astype(np.float32) * 0.3
    c = rng.normal(size=(24, 1, 1, hid)).astype(np.float32) * 0.3
    r, ref, q = _convert(tmp_path, m, {"x": x, "h": h[:, 0], "c": c[:, 0]})
    feeds = {"x": x[:seq], "h": h[0], "c": c[0]}
    for a, b in zip(ref.run(None, feeds), q.run(None, feeds)):
        assert _close(a, b, 0.1)


def test_uint8_image_and_int64_token_inputs_with_mixed_outputs(tmp_path):
    """A uint8 image (Cast inside the graph), int64 token ids into a Gather embedding, and outputs of three kinds:
    float logits, int64 ArgMax, bool mask."""
    rng = np.random.default_rng(2)
    stem, inits = _conv_stem(rng, x="xf")
    nodes = [helper.make_node("Cast", ["img"], ["x8"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x8", "inv255"], ["xf"])] + stem + [
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
        helper.make_node("ReduceMean", ["e"], ["em"], axes=[1], keepdims=0),
        helper.make_node("Concat", ["f", "em"], ["fe"], axis=1),
        helper.make_node("Gemm", ["fe", "wg", "bg"], ["logits"], name="fc", transB=1),
        helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0),
        helper.make_node("Greater", ["logits", "zero"], ["pos"]),
    ]
    inits += [_init("inv255", np.array(1 / 255.0)), _init("emb", rng.normal(size=(50, 8))),
              numpy_helper.from_array(np.array([1], np.int64), "ax1"), _init("wg", rng.normal(size=(5, 16)) * 0.3),
              _init("bg", rng.normal(size=5) * 0.1), _init("zero", np.array(0.0))]
    m = _model(nodes, [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 3, 8, 8]),
                       helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 7])],
               [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
                helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                helper.make_tensor_value_info("pos", TensorProto.BOOL, ["N", 5])], inits, opset=13)
    img = rng.integers(0, 256, size=(32, 3, 8, 8)).astype(np.uint8)
    ids = rng.integers(0, 50, size=(32, 7)).astype(np.int64)
    r, ref, q = _convert(tmp_path, m, {"img": img, "ids": ids})
    feeds = {"img": img[:8], "ids": ids[:8]}
    a, b = ref.run(None, feeds), q.run(None, feeds)
    assert _close(a[0], b[0], 0.1) and b[1].dtype == np.int64 and b[2].dtype == np.bool_
    assert (a[1] == b[1]).mean() >= 0.75


@pytest.mark.parametrize("op", ["Loop", "Scan"])
def test_loop_and_scan_subgraphs(tmp_path, op):
    """A Conv before a Loop / Scan whose body holds a MatMul on outer-scope weights: the Conv is quantized, the
    body runs as it was, the output matches FP32."""
    rng = np.random.default_rng(3)
    stem, inits = _conv_stem(rng)
    inits += [_init("wb", rng.normal(size=(8, 8)) * 0.3)]
    pre = [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    if op == "Loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("MatMul", ["acc_in", "wb"], ["mm"]),
             helper.make_node("Tanh", ["mm"], ["acc_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 8])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 8])])
        inits += [numpy_helper.from_array(np.array(3, np.int64), "trip"),
                  numpy_helper.from_array(np.array(True), "cond")]
        loop = [helper.make_node("Loop", ["trip", "cond", "f"], ["y"], name="loop", body=body)]
    else:
        body = helper.make_graph(
            [helper.make_node("MatMul", ["row", "wb"], ["mm"]),
             helper.make_node("Add", ["s_in", "mm"], ["s_out"]),
             helper.make_node("Identity", ["s_out"], ["o"])], "body",
            [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [8]),
             helper.make_tensor_value_info("row", TensorProto.FLOAT, [8])],
            [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [8]),
             helper.make_tensor_value_info("o", TensorProto.FLOAT, [8])])
        inits += [_init("s0", np.zeros(8))]
        loop = [helper.make_node("Scan", ["s0", "f"], ["y", "rows"], name="scan", body=body, num_scan_inputs=1)]
    m = _model(stem + pre + loop, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8] if op == "Loop" else [8])], inits)
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    r, ref, q = _convert(tmp_path, m, {"x": x})
    assert "conv" in r.quantized_nodes
    feeds = {"x": x[:4]}
    assert _close(ref.run(None, feeds)[0], q.run(None, feeds)[0], 0.1)
