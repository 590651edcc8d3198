"""Property: on random small valid graphs from the supported op set, convert either produces a model that
passes validation and stays close to FP32, or refuses with a clear QuantcliError -- never a traceback."""

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from quantcli import pipeline
from quantcli.errors import QuantcliError
from quantcli.recipe import Activations, CalibrateSettings, ConvertSettings, Weights
from quantcli.runtime.session import make_session

BLOCKS = ["conv", "dwconv", "bn", "relu", "clip", "add", "mul_const", "maxpool", "concat", "sigmoid", "avgpool"]


@st.composite
def graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c = draw(st.sampled_from([2, 4, 8]))
    nodes, inits, k = [], [], [0]
    cur, chans, pool = "x", c, ["x"]
    shapes = {"x": c}

    def name(prefix):
        k[0] += 1
        return f"{prefix}{k[0]}"

    def const(arr):
        n = name("w")
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    for block in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6)):
        out = name("t")
        if block == "conv":
            co = draw(st.sampled_from([2, 4, 8]))
            ins = [cur, const(rng.normal(size=(co, chans, 3, 3)) * 0.4)]
            if draw(st.booleans()):
                ins.append(const(rng.normal(size=co) * 0.1))
            nodes.append(helper.make_node("Conv", ins, [out], name=name("conv"), pads=[1, 1, 1, 1]))
            chans = co
        elif block == "dwconv":
            nodes.append(helper.make_node("Conv", [cur, const(rng.normal(size=(chans, 1, 3, 3)) * 0.4)], [out],
                                          name=name("dw"), pads=[1, 1, 1, 1], group=chans))
        elif block == "bn":
            nodes.append(helper.make_node("BatchNormalization", [cur, const(rng.uniform(0.5, 2, chans)),
                                                                 const(rng.normal(size=chans)),
                                                                 const(rng.normal(size=chans)),
                                                                 const(rng.uniform(0.5, 2, chans))], [out],
                                          name=name("bn")))
        elif block == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out], name=name("relu")))
        elif block == "clip":
            nodes.append(helper.make_node("Clip", [cur, const(0.0), const(6.0)], [out], name=name("clip")))
        elif block == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [cur], [out], name=name("sig")))
        elif block == "mul_const":
            nodes.append(helper.make_node("Mul", [cur, const(rng.uniform(0.5, 2))], [out], name=name("mul")))
        elif block == "maxpool":
            nodes.append(helper.make_node("MaxPool", [cur], [out], name=name("mp"), kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1]))
        elif block == "avgpool":
            nodes.append(helper.make_node("AveragePool", [cur], [out], name=name("ap"), kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1]))
        elif block in ("add", "concat"):
            same = [t for t in pool if shapes[t] == chans]
            other = same[draw(st.integers(0, len(same) - 1))]
            if block == "add":
                nodes.append(helper.make_node("Add", [cur, other], [out], name=name("add")))
            else:
                nodes.append(helper.make_node("Concat", [cur, other], [out], name=name("cat"), axis=1))
                chans *= 2
        cur = out
        pool.append(out)
        shapes[out] = chans
    head = draw(st.sampled_from(["gemm", "matmul", "none"]))
    if head != "none":
        nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"], name="gap"))
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
        if head == "gemm":
            nodes.append(helper.make_node("Gemm", ["flat", const(rng.normal(size=(5, chans))), const(np.zeros(5))],
                                          ["y"], name="fc", transB=1))
        else:
            nodes.append(helper.make_node("MatMul", ["flat", const(rng.normal(size=(chans, 5)))], ["y"], name="fc"))
        out_vi = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"], name="out"))
        out_vi = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", chans, 8, 8])
    g = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])],
                          [out_vi], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m, c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(graphs(), st.sampled_from(list(Weights)), st.sampled_from(list(Activations)))
def test_convert_valid_or_clear_error(tmp_path, case, weights, activations):
    model, c = case
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(16, c, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    try:
        r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx",
                             ConvertSettings(weights=weights, activations=activations),
                             calib_settings=CalibrateSettings(data=str(tmp_path / "d.npz")))
    except QuantcliError as exc:  # a refusal must be one clear line naming what is wrong
        assert str(exc) and "\n" not in str(exc)
        return
    q = onnx.load(tmp_path / "q.onnx")
    onnx.checker.check_model(q, full_check=True)
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    assert np.isfinite(got).all()
    cos = float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30))
    assert cos > 0.95 or np.abs(ref - got).max() < 1e-3 * max(1.0, np.abs(ref).max()), (cos, r.quantized_nodes)
