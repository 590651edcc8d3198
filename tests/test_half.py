"""FP16 / BF16 conversion: checker-valid, loads in ONNX Runtime CPU, close to FP32, unsafe ops kept FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from quantcli.quantize.half import DEFAULT_KEEP_FLOAT_OPS, convert_to_half

F, H, BF = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16


def _init(name: str, a, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, "t", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_relu_matmul(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "wm"], ["y"], name="fc")]
    inits = [_init("w", rng.normal(size=(4, 3, 3, 3)) * 0.3), _init("b", rng.normal(size=4) * 0.1),
             _init("shape", [-1, 256], np.int64), _init("wm", rng.normal(size=(256, 10)) * 0.1)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", F, ["N", 10])], inits)


def attention_block(seed: int = 0) -> onnx.ModelProto:
    """LayerNorm -> Q/K/V MatMuls -> heads (Reshape/Transpose, int64 shapes) -> Softmax attention -> residual
    -> Erf-GELU FFN -> residual."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.normal(size=s) * 0.3  # noqa: E731
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], name="ln", axis=-1),
        n("MatMul", ["h", "wq"], ["q"], name="q"), n("MatMul", ["h", "wk"], ["k"], name="k"),
        n("MatMul", ["h", "wv"], ["v"], name="v"),
        n("Reshape", ["q", "heads"], ["q4"], name="q_rs"), n("Transpose", ["q4"], ["qt"], name="q_t", perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "heads"], ["k4"], name="k_rs"), n("Transpose", ["k4"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
        n("Reshape", ["v", "heads"], ["v4"], name="v_rs"), n("Transpose", ["v4"], ["vt"], name="v_t", perm=[0, 2, 1, 3]),
        n("MatMul", ["qt", "kt"], ["s"], name="qk"), n("Mul", ["s", "scale"], ["ss"], name="scale"),
        n("Softmax", ["ss"], ["p"], name="softmax", axis=-1), n("MatMul", ["p", "vt"], ["o"], name="pv"),
        n("Transpose", ["o"], ["ot"], name="o_t", perm=[0, 2, 1, 3]), n("Reshape", ["ot", "merge"], ["om"], name="o_rs"),
        n("MatMul", ["om", "wo"], ["a"], name="proj"), n("Add", ["a", "x"], ["r1"], name="res1"),
        n("MatMul", ["r1", "w1"], ["f1"], name="ffn1"), n("Add", ["f1", "b1"], ["f1b"], name="ffn1_bias"),
        n("Div", ["f1b", "sqrt2"], ["g0"], name="gelu_div"), n("Erf", ["g0"], ["g1"], name="gelu_erf"),
        n("Add", ["g1", "one"], ["g2"], name="gelu_add"), n("Mul", ["f1b", "g2"], ["g3"], name="gelu_mul"),
        n("Mul", ["g3", "half"], ["g4"], name="gelu_half"), n("MatMul", ["g4", "w2"], ["f2"], name="ffn2"),
        n("Add", ["f2", "r1"], ["y"], name="res2"),
    ]
    inits = [_init("ln_g", 1 + 0.1 * rng.normal(size=16)), _init("ln_b", 0.1 * rng.normal(size=16)),
             _init("wq", w(16, 16)), _init("wk", w(16, 16)), _init("wv", w(16, 16)), _init("wo", w(16, 16)),
             _init("heads", [0, 0, 2, 8], np.int64), _init("merge", [0, 0, 16], np.int64),
             _init("scale", 8 ** -0.5), _init("w1", w(16, 32)), _init("b1", 0.1 * rng.normal(size=32)),
             _init("sqrt2", np.sqrt(2)), _init("one", 1.0), _init("half", 0.5), _init("w2", w(32, 16))]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["B", 8, 16])],
                  [helper.make_tensor_value_info("y", F, ["B", 8, 16])], inits)


def decomposed_layernorm() -> onnx.ModelProto:
    """Opset-11-style LayerNorm: ReduceMean/Sub/Pow/ReduceMean/Add(eps)/Sqrt/Div, then a MatMul."""
    n = helper.make_node
    nodes = [n("ReduceMean", ["x"], ["mu"], name="mean", axes=[-1]), n("Sub", ["x", "mu"], ["d"], name="sub"),
             n("Pow", ["d", "two"], ["d2"], name="pow"), n("ReduceMean", ["d2"], ["var"], name="var", axes=[-1]),
             n("Add", ["var", "eps"], ["ve"], name="add_eps"), n("Sqrt", ["ve"], ["std"], name="sqrt"),
             n("Div", ["d", "std"], ["nrm"], name="div"), n("MatMul", ["nrm", "w"], ["y"], name="mm")]
    inits = [_init("two", 2.0), _init("eps", 1e-12),
             _init("w", np.random.default_rng(3).normal(size=(16, 8)) * 0.3)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 16])],
                  [helper.make_tensor_value_info("y", F, ["N", 8])], inits, opset=13)


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / np.abs(ref).max())


def _inits(m: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in m.graph.initializer}


def _io_types(m: onnx.ModelProto) -> set[int]:
    return {v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}


def _x_conv(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, 8, 8)).astype(np.float32)


def _x_attn(n: int = 3) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(n, 8, 16)).astype(np.float32)


CASES = [(conv_relu_matmul, _x_conv), (attention_block, _x_attn)]


@pytest.mark.parametrize("build,data", CASES, ids=["conv", "attention"])
def test_fp16_loads_close_to_fp32_float32_io(build, data):
    m = build()
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    x = data()
    assert _rel(_run(m, {"x": x}), _run(h, {"x": x})) < 1e-2
    assert _io_types(h) == {F}
    weights = [n for n in _inits(m) if n.startswith("w")]
    assert all(_inits(h)[w].data_type == H for w in weights)
    for name, t in _inits(m).items():  # integer shape tensors untouched
        if t.data_type == TensorProto.INT64:
            assert _inits(h)[name] == t
    assert rep.converted_nodes > 0 and rep.casts_inserted >= 2 and rep.notes


def test_fp16_attention_keeps_unsafe_ops_float32():
    m = attention_block()
    h, rep = convert_to_half(m, "fp16")
    kept = dict(rep.kept_float)
    assert set(kept) == {"ln", "softmax"} and "Softmax" in kept["softmax"]
    assert _inits(h)["ln_g"].data_type == F and _inits(h)["ln_b"].data_type == F  # only used by the kept LN
    ln = next(n for n in h.graph.node if n.name == "ln")
    assert ln.input[0] == "x"  # float32 graph input feeds the kept LayerNormalization directly
    casts = [n for n in h.graph.node if n.op_type == "Cast"]
    assert len({n.name for n in casts}) == len(casts) == rep.casts_inserted
    # the LN output is cast once to float16 and shared by the three projections
    q, k, v = (next(n for n in h.graph.node if n.name == nm) for nm in "qkv")
    assert q.input[0] == k.input[0] == v.input[0] != "h"


@pytest.mark.parametrize("build,data", CASES, ids=["conv", "attention"])
def test_bf16_is_weight_storage_and_runs(build, data):
    m = build()
    b, rep = convert_to_half(m, "bf16")
    onnx.checker.check_model(b, full_check=True)
    x = data()
    assert _rel(_run(m, {"x": x}), _run(b, {"x": x})) < 3e-2
    assert _io_types(b) == {F}
    bf = [t for t in b.graph.initializer if t.data_type == BF]
    assert bf and rep.converted_initializers == len(bf) == rep.casts_inserted
    assert all(n.op_type != "Cast" or n.attribute[0].i == F for n in b.graph.node)  # compute stays FP32
    assert "weight storage" in rep.notes[0]
    assert sum(t.ByteSize() for t in bf) < 0.55 * sum(_inits(m)[t.name[:-5]].ByteSize() for t in bf)


def test_constant_node_weights_converted_and_clamped():
    m = conv_relu_matmul()
    wm = _inits(m)["wm"]
    m.graph.initializer.remove(wm)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["wm"], name="wm_const", value=wm))
    b = _inits(m)["b"]
    arr = numpy_helper.to_array(b).copy()
    arr[0] = 1e6
    b.CopyFrom(numpy_helper.from_array(arr, "b"))
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    const = next(n for n in h.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == H
    assert rep.clamped_initializers == ["b"]
    assert numpy_helper.to_array(_inits(h)["b"])[0] == np.float16(65504)
    assert np.isfinite(_run(h, {"x": _x_conv()})).all()
    bm, brep = convert_to_half(m, "bf16")  # bf16 stores Constant weights too
    assert next(n for n in bm.graph.node if n.op_type == "Constant").attribute[0].t.data_type == BF
    x = _x_conv()
    assert _rel(_run(m, {"x": x}), _run(bm, {"x": x})) < 3e-2


def test_keep_nodes_and_keep_op_types_with_casts_around():
    m = attention_block()
    h, rep = convert_to_half(m, "fp16", keep_nodes=("ffn1",), keep_op_types={"Erf"})
    onnx.checker.check_model(h, full_check=True)
    kept = dict(rep.kept_float)
    assert kept["ffn1"] == "excluded by --exclude" and kept["gelu_erf"] == "op type kept by user"
    assert "softmax" not in kept and "ln" not in kept  # keep_op_types replaces the default list
    assert _inits(h)["w1"].data_type == F and _inits(h)["wq"].data_type == H
    by_out = {o: n for n in h.graph.node for o in n.output}
    ffn1 = next(n for n in h.graph.node if n.name == "ffn1")
    assert by_out[ffn1.input[0]].op_type == "Cast" and by_out[ffn1.input[0]].attribute[0].i == F
    bias = next(n for n in h.graph.node if n.name == "ffn1_bias")  # elementwise follower of a float32 node
    assert bias.input[0] == "f1" and "float32 nodes" in kept["ffn1_bias"]
    x = _x_attn()
    assert _rel(_run(m, {"x": x}), _run(h, {"x": x})) < 1e-2
    b, brep = convert_to_half(m, "bf16", keep_nodes=("ffn1",))
    assert ("ffn1", "excluded by --exclude") in brep.kept_float and _inits(b)["w1"].data_type == F


def test_shared_initializer_stays_float32_with_one_cast():
    m = conv_relu_matmul()
    m.graph.node.append(helper.make_node("Add", ["y", "y"], ["z"], name="kept_add"))
    m.graph.node.append(helper.make_node("MatMul", ["z", "sq"], ["y2"], name="mm_kept"))
    m.graph.node.append(helper.make_node("MatMul", ["y", "sq"], ["y3"], name="mm_conv"))
    m.graph.initializer.append(_init("sq", np.eye(10)))
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info(o, F, ["N", 10]) for o in ("y2", "y3")])
    h, rep = convert_to_half(m, "fp16", keep_nodes=("kept_add", "mm_kept"))
    onnx.checker.check_model(h, full_check=True)
    assert _inits(h)["sq"].data_type == F
    assert sum(1 for n in h.graph.node if n.op_type == "Cast" and n.input[0] == "sq") == 1
    x = _x_conv()
    ref, got = _run(m, {"x": x}), _run(h, {"x": x})
    assert _rel(ref, got) < 1e-2


def test_fp16_io_when_not_keeping_io_types():
    m = conv_relu_matmul()
    h, rep = convert_to_half(m, "fp16", keep_io_types=False)
    onnx.checker.check_model(h, full_check=True)
    assert _io_types(h) == {H} and rep.casts_inserted == 0
    out = _run(h, {"x": _x_conv().astype(np.float16)})
    assert out.dtype == np.float16
    a = attention_block()  # kept-float LN on the input and float32 residual: casts to and from float16 I/O
    ha, _ = convert_to_half(a, "fp16", keep_io_types=False)
    onnx.checker.check_model(ha, full_check=True)
    assert _io_types(ha) == {H}
    x = _x_attn()
    assert _rel(_run(a, {"x": x}), _run(ha, {"x": x.astype(np.float16)})) < 1e-2


def test_decomposed_layernorm_with_large_activations_stays_finite():
    m = decomposed_layernorm()
    x = (np.random.default_rng(4).normal(size=(4, 16)) * 1000).astype(np.float32)  # variance ~1e6 > 65504
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    kept = dict(rep.kept_float)
    assert {"mean", "pow", "var", "add_eps", "sqrt"} <= set(kept) and "div" not in kept
    assert "float32 nodes" in kept["sqrt"]
    assert _inits(h)["eps"].data_type == F and _inits(h)["w"].data_type == H
    got = _run(h, {"x": x})
    assert np.isfinite(got).all() and _rel(_run(m, {"x": x}), got) < 1e-2
    # ORT CPU drops float32->float16->float32 Cast pairs, hiding float16 overflow; the reference evaluator
    # computes float16 exactly: var + eps in float16 would be inf and every output 0
    exact = ReferenceEvaluator(h).run(None, {"x": x})[0]
    assert np.isfinite(exact).all() and _rel(ReferenceEvaluator(m).run(None, {"x": x})[0], exact) < 1e-2


def test_casts_value_info_and_int_shape_arithmetic():
    """Cast(to=FLOAT) inside a converted region becomes FLOAT16; an int->float Cast (shape arithmetic) stays
    FLOAT; stale value_info types are updated so strict inference and ORT agree."""
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["r"], name="relu"), n("Cast", ["r"], ["rc"], name="cast_f", to=F),
             n("Shape", ["x"], ["shp"], name="shape"), n("Cast", ["shp"], ["shf"], name="cast_int", to=F),
             n("ReduceMax", ["shf"], ["mx"], name="rmax", keepdims=0), n("Mul", ["rc", "mx"], ["y"], name="mul")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])],
               [helper.make_tensor_value_info("y", F, ["N", 4])], [])
    m = onnx.shape_inference.infer_shapes(m)
    assert len(m.graph.value_info) >= 4
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    node = {nd.name: nd for nd in h.graph.node}
    assert node["cast_f"].attribute[0].i == H and node["cast_int"].attribute[0].i == F
    assert "integer" in dict(rep.kept_float)["cast_int"]
    vi = {v.name: v.type.tensor_type.elem_type for v in h.graph.value_info}
    assert vi["rc"] == H and vi["shf"] == F and vi["shp"] == TensorProto.INT64
    x = np.random.default_rng(5).normal(size=(3000, 4)).astype(np.float32)  # 3000 is not exact in float16
    assert _rel(_run(m, {"x": x}), _run(h, {"x": x})) < 1e-2


def test_if_subgraph_kept_float_with_outer_tensor():
    n = helper.make_node
    branch = lambda name, op: helper.make_graph(  # noqa: E731 -- reads outer tensor "r"
        [n(op, ["r"], [f"{name}_o"], name=f"{name}_n")], name, [],
        [helper.make_tensor_value_info(f"{name}_o", F, ["N", 4])])
    nodes = [n("Relu", ["x"], ["r"], name="relu"), n("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             n("Greater", ["s", "zero"], ["c"], name="gt"),
             n("If", ["c"], ["i"], name="if", then_branch=branch("t", "Neg"), else_branch=branch("e", "Abs")),
             n("Add", ["i", "x"], ["y"], name="add")]
    m = _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])],
               [helper.make_tensor_value_info("y", F, ["N", 4])], [_init("zero", 0.0)])
    h, rep = convert_to_half(m, "fp16")
    onnx.checker.check_model(h, full_check=True)
    assert "subgraphs" in dict(rep.kept_float)["if"]
    x = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    for x in (x, -x):
        assert _rel(_run(m, {"x": x}), _run(h, {"x": x})) < 1e-2


def test_deterministic_and_input_not_mutated():
    for build in (conv_relu_matmul, attention_block, decomposed_layernorm):
        m = build()
        before = m.SerializeToString()
        for precision in ("fp16", "bf16"):
            a, _ = convert_to_half(m, precision)
            b, _ = convert_to_half(build(), precision)
            assert a.SerializeToString() == b.SerializeToString()
        assert m.SerializeToString() == before


def test_defaults_and_bad_precision():
    assert {"Softmax", "LayerNormalization", "Exp", "Pow", "ReduceSum", "Range", "Resize"} <= DEFAULT_KEEP_FLOAT_OPS
    assert not {"MatMul", "Conv", "Gemm", "Add", "Relu"} & DEFAULT_KEEP_FLOAT_OPS
    with pytest.raises(ValueError):
        convert_to_half(conv_relu_matmul(), "int4")
