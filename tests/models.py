"""Tiny seeded test models, built with onnx.helper, in one registry."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "test", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="quantcli-tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def small_cnn(seed: int = 0, opset: int = 17, batch="N") -> onnx.ModelProto:
    """Conv+BN+Relu -> depthwise Conv+Relu -> pointwise Conv -> residual Add+Relu -> MaxPool -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dwconv", pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pwconv"),
        helper.make_node("Add", ["c3", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu3"),
        helper.make_node("MaxPool", ["ra"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [
        _init("w1", rng.normal(size=(16, 3, 3, 3)) * 0.3), _init("g", rng.uniform(0.5, 1.5, 16)),
        _init("b", rng.normal(size=16) * 0.1), _init("m", rng.normal(size=16) * 0.1),
        _init("v", rng.uniform(0.5, 2, 16)), _init("w2", rng.normal(size=(16, 1, 3, 3)) * 0.3),
        _init("b2", rng.normal(size=16) * 0.1), _init("w3", rng.normal(size=(16, 16, 1, 1)) * 0.3),
        _init("b3", rng.normal(size=16) * 0.1), _init("wg", rng.normal(size=(10, 16)) * 0.3),
        _init("bg", rng.normal(size=10) * 0.1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits, opset)


def small_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add -> Relu -> MatMul+Add (a transformer-style FFN) with a 3-D input [batch, seq, 32]."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="fc2_bias"),
    ]
    inits = [_init("w1", rng.normal(size=(32, 64)) * 0.2), _init("b1", rng.normal(size=64) * 0.1),
             _init("w2", rng.normal(size=(64, 8)) * 0.2), _init("b2", rng.normal(size=8) * 0.1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])], inits)


def cnn_data(n: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)


def detector_head(seed: int = 0, box_scale: float = 320.0) -> onnx.ModelProto:
    """A one-output detector head: box regressions (about 0..box_scale) and class logits (about -3..3),
    concatenated along channels, then transposed to [batch, anchors, 4 + classes] as exporters do."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "wb", "bb"], ["f"], name="backbone", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f"], ["fr"], name="backbone_relu"),
        helper.make_node("Conv", ["fr", "wbox", "bbox"], ["box"], name="box_head"),
        helper.make_node("Relu", ["box"], ["boxr"], name="box_relu"),
        helper.make_node("Conv", ["fr", "wcls", "bcls"], ["cls"], name="cls_head"),
        helper.make_node("Reshape", ["boxr", "shape4"], ["box2"], name="box_reshape"),
        helper.make_node("Reshape", ["cls", "shape3"], ["cls2"], name="cls_reshape"),
        helper.make_node("Concat", ["box2", "cls2"], ["det"], name="concat", axis=1),
        helper.make_node("Transpose", ["det"], ["y"], name="transpose", perm=[0, 2, 1]),
    ]
    inits = [
        _init("wb", rng.normal(size=(16, 3, 3, 3)) * 0.3), _init("bb", rng.normal(size=16) * 0.1),
        _init("wbox", np.abs(rng.normal(size=(4, 16, 1, 1))) * 0.05 * box_scale),
        _init("bbox", np.full(4, 0.1 * box_scale)),
        _init("wcls", rng.normal(size=(3, 16, 1, 1)) * 0.5), _init("bcls", rng.normal(size=3) * 0.1),
        numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape4"),
        numpy_helper.from_array(np.array([0, 3, -1], np.int64), "shape3"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256, 7])], inits)


def masked_attention(seed: int = 0, d: int = 16) -> onnx.ModelProto:
    """Single-head attention with an additive mask built as exporters do: (1 - mask) * -3.4e38, with an int64
    attention_mask input beside the float hidden states."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "inv_sqrt_d"], ["ss"], name="scale"),
        helper.make_node("Cast", ["attention_mask"], ["mf"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mf"], ["inv"], name="mask_invert"),
        helper.make_node("Mul", ["inv", "neg_big"], ["bias"], name="mask_bias"),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="mask_unsqueeze"),
        helper.make_node("Add", ["ss", "bias3"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="o_proj"),
    ]
    inits = [_init("wq", rng.normal(size=(d, d)) * 0.3), _init("wk", rng.normal(size=(d, d)) * 0.3),
             _init("wv", rng.normal(size=(d, d)) * 0.3), _init("wo", rng.normal(size=(d, d)) * 0.3),
             _init("inv_sqrt_d", np.array(1 / np.sqrt(d))), _init("one", np.array(1.0)),
             _init("neg_big", np.array(-3.4e38)), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq_len + 1", d]),
                          helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq_len + 1"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq_len + 1", d])], inits)


def predicted_labels(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The FP32 model's own top-1 classes: labels on which FP32 is 100% accurate (a meaningful gate reference)."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.argmax(s.run(None, {s.get_inputs()[0].name: x})[0].reshape(len(x), -1), axis=1).astype(np.int64)


def audio_classifier(window: int = 400, seed: int = 0) -> onnx.ModelProto:
    """Conv1d (1 -> 8, kernel 16, stride 8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (8 -> 3) on
    [batch, 1, window] audio windows."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["audio", "w1", "b1"], ["c"], name="conv", strides=[8]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("w1", rng.normal(size=(8, 1, 16)) * 0.3), _init("b1", rng.normal(size=8) * 0.05),
             _init("wg", rng.normal(size=(3, 8))), _init("bg", np.zeros(3))]
    return _model(nodes, [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1, window])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)


def correlated_layer(k: int, n: int, seed: int = 0):
    """A [k, n] linear layer whose k inputs are correlated and unevenly scaled (where GPTQ's Hessian feedback
    matters): the weight, 1024 fitting inputs, and the output SQNR (dB) of a quantized weight on 1024 held inputs."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(2048, 16)) @ rng.normal(size=(16, k)) + 0.1 * rng.normal(size=(2048, k))) * np.exp(
        rng.normal(size=k))
    w = rng.normal(size=(k, n)).astype(np.float32)
    fit, held = x[:1024], x[1024:]
    ref = held @ w

    def sqnr(bq) -> float:
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - held @ bq.dequantize()) ** 2))

    return w, fit, sqnr


def silu_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> SiLU (Sigmoid + Mul, as PyTorch exports it) -> Conv -> Identity; the first conv's biases push
    half its channels far below 0 (a YOLO backbone's [-205, 191]), where the SiLU gives ~0."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.where(np.arange(8) % 2 == 0, -40.0, 1.0).astype(np.float32)
    w2 = rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
             helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Identity", ["c2"], ["y"], name="out")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
                  [_init("w1", w1), _init("b1", b1), _init("w2", w2)])


def static_builder(tmp_path, model: onnx.ModelProto, x: np.ndarray):
    """The StaticBuilder ``quantcli convert`` would use on ``model`` calibrated on ``x`` (default settings)."""
    from quantcli import pipeline
    from quantcli.quantize.static import StaticBuilder
    from quantcli.recipe import CalibrateSettings, ConvertSettings

    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=x)
    prep = pipeline.prepare(model, cle=True)
    res = pipeline.resolve(ConvertSettings(), CalibrateSettings(data=str(tmp_path / "c.npz")))
    res = res.for_opset(pipeline.modelio.model_opset(prep.model))
    artifact, prep = pipeline._artifact_for(model, tmp_path / "m.onnx", prep, res, None, pipeline._no_progress)
    return StaticBuilder(model, prep, res.with_artifact_data(artifact.data_path(), artifact.data_settings()), artifact)
