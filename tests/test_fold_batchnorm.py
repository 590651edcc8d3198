import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import cnn_data, small_cnn
from quantcli.runtime.session import make_session
from quantcli.transforms.fold_batchnorm import fold_batchnorm
from quantcli.transforms.prepare import constants_to_initializers


def _run(m, feeds):
    return make_session(m).run(None, feeds)[0]


def test_conv_bn_folded_numerically_equal():
    m = small_cnn()
    x = cnn_data(8)
    r = fold_batchnorm(m)
    assert [n.op_type for n in r.model.graph.node].count("BatchNormalization") == 0
    assert r.changed == ["bn1 folded into conv1"]
    conv1 = next(n for n in r.model.graph.node if n.name == "conv1")
    assert conv1.output[0] == "bn1" and len(conv1.input) == 3  # took over BN's output, gained a bias
    np.testing.assert_allclose(_run(r.model, {"x": x}), _run(m, {"x": x}), rtol=1e-5, atol=1e-5)
    assert len(m.graph.node) == 12  # input not mutated


def _bn_model(layer: str, shared: bool = False, two_consumers: bool = False):
    rng = np.random.default_rng(3)
    c = 6
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "g"),
             numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.2, 3, c).astype(np.float32), "v")]
    if layer == "Gemm":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])
        inits.append(numpy_helper.from_array(rng.normal(size=(c, 5)).astype(np.float32), "w"))
        inits.append(numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "c"))
        layer_node = helper.make_node("Gemm", ["x", "w", "c"], ["h"], name="gemm", transB=1, beta=0.5)
        out_shape = ["N", c]
    elif layer == "ConvTranspose":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])
        inits.append(numpy_helper.from_array(rng.normal(size=(3, c, 3, 3)).astype(np.float32), "w"))
        layer_node = helper.make_node("ConvTranspose", ["x", "w"], ["h"], name="convt")
        out_shape = ["N", c, 7, 7]
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])
        inits.append(numpy_helper.from_array(rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "w"))
        layer_node = helper.make_node("Conv", ["x", "w"], ["h"], name="conv")  # no bias
        out_shape = ["N", c, 3, 3]
    nodes = [layer_node, helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["y"], name="bn")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if shared:
        nodes.append(helper.make_node(layer_node.op_type, ["x", "w"], ["y2"], name="other",
                                      **({"transB": 1} if layer == "Gemm" else {})))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, out_shape))
    if two_consumers:
        nodes.append(helper.make_node("Relu", ["h"], ["y3"], name="relu"))
        outputs.append(helper.make_tensor_value_info("y3", TensorProto.FLOAT, out_shape))
    m = helper.make_model(helper.make_graph(nodes, "bn", [x], outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_gemm_and_biasless_conv_and_convtranspose_fold():
    for layer, shape in (("Gemm", (4, 5)), ("Conv", (4, 3, 5, 5)), ("ConvTranspose", (4, 3, 5, 5))):
        m = _bn_model(layer)
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        r = fold_batchnorm(m)
        assert not r.skipped, (layer, r.skipped)
        assert all(n.op_type != "BatchNormalization" for n in r.model.graph.node)
        np.testing.assert_allclose(_run(r.model, {"x": x}), _run(m, {"x": x}), rtol=1e-4, atol=1e-5)


def test_skips_with_reasons():
    r = fold_batchnorm(_bn_model("Conv", shared=True))
    assert r.skipped == [("bn", "weight of conv is shared with other nodes")]
    r = fold_batchnorm(_bn_model("Conv", two_consumers=True))
    assert r.skipped == [("bn", "output of conv has other consumers")]


def test_constant_node_weights_become_initializers():
    m = small_cnn()
    w = next(t for t in m.graph.initializer if t.name == "w1")
    m.graph.initializer.remove(w)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], value=w, name="w1_const"))
    r = constants_to_initializers(m)
    assert "w1" in {t.name for t in r.model.graph.initializer}
    assert all(n.op_type != "Constant" for n in r.model.graph.node)
    folded = fold_batchnorm(r.model)
    assert folded.changed == ["bn1 folded into conv1"]
