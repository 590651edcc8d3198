"""FP16 / BF16 conversion: loads in ONNX Runtime, stays close to FP32, keeps I/O and unsafe ops in FP32."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import cnn_data, small_cnn, small_mlp
from quantcli.quantize.half import convert_to_half
from quantcli.runtime.session import make_session


def _run(m, feeds):
    return make_session(m).run(None, feeds)[0]


def _rel_err(ref, got):
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def test_fp16_cnn_close_to_fp32_and_io_float32():
    m = small_cnn()
    x = cnn_data(8)
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    assert _rel_err(_run(m, {"x": x}), _run(h, {"x": x})) < 1e-2
    assert h.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert h.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inits = {t.name: t for t in h.graph.initializer}
    assert inits["w1"].data_type == TensorProto.FLOAT16
    assert rep.converted_nodes == len(m.graph.node) and rep.casts_inserted == 2
    assert h.SerializeToString() == convert_to_half(m, "fp16")[0].SerializeToString()  # deterministic
    assert m.graph.initializer[0].data_type == TensorProto.FLOAT  # input not mutated


def _layernorm_block():
    """x -> MatMul -> decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div) -> Reshape(int64 shape) -> Softmax."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceMean", ["h"], ["mu"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="var", axes=[-1]),
        helper.make_node("Sqrt", ["var"], ["std"], name="sqrt"),
        helper.make_node("Div", ["d", "std"], ["n"], name="div"),
        helper.make_node("Reshape", ["n", "shape"], ["r"], name="reshape"),
        helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=-1),
    ]
    inits = [numpy_helper.from_array((rng.normal(size=(8, 16)) * 40).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([0, 4, 4], np.int64), "shape")]
    m = helper.make_model(helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        ["N", 8])],
                                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])],
                                            inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_unsafe_ops_stay_float32_with_casts_around():
    m = _layernorm_block()
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32) * 10  # Pow of ~1e3 overflows fp16
    h, rep = convert_to_half(m, "fp16")
    kept = {name for name, _ in rep.kept_float}
    assert {"pow", "mean", "var", "softmax"} <= kept
    got = _run(h, {"x": x})
    assert np.isfinite(got).all() and _rel_err(_run(m, {"x": x}), got) < 1e-2
    inits = {t.name: t for t in h.graph.initializer}
    assert inits["shape"].data_type == TensorProto.INT64


def test_constant_node_weights_and_clamping():
    m = small_mlp()
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    m.graph.initializer.remove(w1)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], value=w1, name="w1_const"))
    b2 = next(t for t in m.graph.initializer if t.name == "b2")
    arr = numpy_helper.to_array(b2).copy()
    arr[0] = 1e6
    b2.CopyFrom(numpy_helper.from_array(arr, "b2"))
    h, rep = convert_to_half(m, "fp16")
    const = next(n for n in h.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == TensorProto.FLOAT16
    assert rep.clamped_initializers == ["b2"]
    make_session(h)


def test_keep_nodes_and_fp16_io():
    m = small_cnn()
    h, rep = convert_to_half(m, "fp16", keep_nodes=("fc",))
    assert ("fc", "kept by --exclude") in rep.kept_float
    assert next(t for t in h.graph.initializer if t.name == "wg").data_type == TensorProto.FLOAT
    h2, _ = convert_to_half(m, "fp16", keep_io_types=False)
    assert h2.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    out = _run(h2, {"x": cnn_data(2).astype(np.float16)})
    assert out.dtype == np.float16


def test_bf16_is_weight_storage():
    m = small_cnn()
    x = cnn_data(8)
    b, rep = convert_to_half(m, "bf16")
    onnx.checker.check_model(b, full_check=True)
    assert any(t.data_type == TensorProto.BFLOAT16 for t in b.graph.initializer)
    assert _rel_err(_run(m, {"x": x}), _run(b, {"x": x})) < 2e-2
    assert "weight storage" in rep.notes[0]
