"""QDQ placement: numerics close to FP32, and ONNX Runtime fuses it into integer kernels."""

import numpy as np
import onnx
import pytest

from models import cnn_data, small_cnn, small_mlp
from quantcli.cpu import detect
from quantcli.quantize.dynamic import quantize_dynamic
from quantcli.quantize.policy import PlanOptions, plan
from quantcli.quantize.qdq import QDQOptions, insert_qdq
from quantcli.quantize.reasons import Reason
from quantcli.runtime.session import make_session, optimized_model, tap_model
from quantcli.transforms.fold_batchnorm import fold_batchnorm
from quantcli.validate.coverage import int8_coverage


# What `convert` does by default (--reduce-range auto): 7-bit weights where this CPU's u8s8 kernels saturate.
REDUCE_RANGE = detect().u8s8_saturates


def _minmax_ranges(model, tensors, feeds):
    vals = make_session(tap_model(model, tensors)).run(None, feeds)
    return {t: (float(v.min()), float(v.max())) for t, v in zip(tensors, vals)}


def _quantize(model, feeds, **opts):
    p = plan(model, PlanOptions(**opts))
    ranges = _minmax_ranges(model, p.calibrated_tensors(), feeds)
    sym = opts.get("symmetric_activations", False)
    return insert_qdq(model, p, ranges, QDQOptions(symmetric_activations=sym, reduce_range=REDUCE_RANGE)).model, p


def _sqnr(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))


def test_cnn_plan_absorbs_relu_and_shares_layout_scales():
    m = fold_batchnorm(small_cnn()).model
    p = plan(m)
    assert p.absorbed == {"relu1": "conv1", "relu2": "dwconv", "relu3": "add"}
    assert p.shared == {"mp": "ra", "f": "gap"}
    assert set(p.quantized_nodes) == {"conv1", "dwconv", "pwconv", "add", "gap", "fc", "maxpool", "flatten"}
    assert "y" not in p.activations  # graph outputs stay exact


@pytest.mark.parametrize("opts", [{}, {"per_channel": False}, {"symmetric_activations": True}])
def test_cnn_qdq_is_valid_accurate_and_fully_fused(opts):
    m = fold_batchnorm(small_cnn()).model
    x = cnn_data(32)
    q, _ = _quantize(m, {"x": x}, **opts)
    onnx.checker.check_model(q, full_check=True)
    ref = make_session(m).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    assert _sqnr(ref, got) > 25
    cov = int8_coverage(q, {"x": (1, 3, 16, 16)})
    if opts.get("symmetric_activations"):
        # int8 activations keep the Relus as float ops between Q/DQ; ORT (x86) still fuses most convs
        assert cov.mac_share > 0.5 and cov.integer_nodes.get("QGemm") == 1
        return
    assert cov.mac_share == 1.0 and not cov.float_heavy
    assert cov.integer_nodes.get("QLinearConv") == 3 and cov.integer_nodes.get("QGemm") == 1
    assert cov.integer_nodes.get("QLinearAdd") == 1 and cov.dq_left == 0


def test_weights_stored_as_int8_with_right_axes():
    m = fold_batchnorm(small_cnn()).model
    q, _ = _quantize(m, {"x": cnn_data(8)})
    inits = {t.name: t for t in q.graph.initializer}
    assert inits["w1_quantized"].data_type == onnx.TensorProto.INT8
    assert inits["bg_quantized"].data_type == onnx.TensorProto.INT32
    dq = {n.name: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    axis = {n: onnx.helper.get_attribute_value(a) for n, d in dq.items() for a in d.attribute if a.name == "axis"}
    assert axis["w1_DequantizeLinear"] == 0 and axis["wg_DequantizeLinear"] == 0  # Conv, Gemm transB=1
    assert list(inits["w1_scale"].dims) == [16]


def test_exclude_by_name_and_op_type():
    m = fold_batchnorm(small_cnn()).model
    p = plan(m, PlanOptions(exclude=("pwconv",)))
    assert "pwconv" not in p.quantized_nodes and p.float_nodes["pwconv"].reason == Reason.EXCLUDED
    assert "add" not in p.quantized_nodes  # its input from pwconv is no longer quantized
    p = plan(m, PlanOptions(exclude=("Conv",)))
    assert not {"conv1", "dwconv", "pwconv"} & set(p.quantized_nodes)


def test_mlp_static_matmul_uses_integer_kernels():
    m = small_mlp()
    x = np.random.default_rng(0).normal(size=(4, 5, 32)).astype(np.float32)
    q, p = _quantize(m, {"x": x})
    assert set(p.quantized_nodes) == {"fc1", "fc2"}
    ref = make_session(m).run(None, {"x": x})[0]
    assert _sqnr(ref, make_session(q).run(None, {"x": x})[0]) > 25
    cov = int8_coverage(q, {"x": (1, 5, 32)})
    assert cov.mac_share == 1.0


def test_dynamic_quantization_fuses_and_matches():
    m = small_mlp()
    x = np.random.default_rng(0).normal(size=(4, 5, 32)).astype(np.float32)
    r, quantized, kept = quantize_dynamic(m, reduce_range=REDUCE_RANGE)
    onnx.checker.check_model(r.model, full_check=True)
    assert quantized == {"fc1": "MatMul", "fc2": "MatMul"}
    ref = make_session(m).run(None, {"x": x})[0]
    assert _sqnr(ref, make_session(r.model).run(None, {"x": x})[0]) > 25
    ops = {n.op_type for n in optimized_model(r.model, level="extended").graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops


def test_cpu_saturation_claim_matches_onnxruntime():
    """cpu.u8s8_saturates is what ONNX Runtime's kernels do on this machine, not only what the flags suggest.

    Zero-centred activations (uint8 around zero point 128) against full-range int8 weights: where the u8s8
    kernel adds product pairs in int16 (x86 without VNNI) it saturates and 7-bit weights win by far; with int32
    accumulation full-range weights are the more precise choice.
    """
    m = small_mlp()
    x = np.random.default_rng(0).normal(size=(4, 5, 32)).astype(np.float32)
    ref = make_session(m).run(None, {"x": x})[0]
    sqnr = {rr: _sqnr(ref, make_session(quantize_dynamic(m, reduce_range=rr)[0].model).run(None, {"x": x})[0])
            for rr in (False, True)}
    if detect().u8s8_saturates:
        assert sqnr[False] < sqnr[True] - 6, sqnr
    else:
        assert sqnr[False] > sqnr[True], sqnr


def test_dynamic_gemm_with_bias_and_alpha():
    m = fold_batchnorm(small_cnn()).model
    x = cnn_data(4)
    r, quantized, kept = quantize_dynamic(m, reduce_range=REDUCE_RANGE)
    assert quantized == {"fc": "Gemm"} and "conv1" in kept
    ref = make_session(m).run(None, {"x": x})[0]
    assert _sqnr(ref, make_session(r.model).run(None, {"x": x})[0]) > 25


@pytest.mark.parametrize("outlier", [1.0, 100.0])
def test_weights_auto_goes_per_tensor_only_where_it_costs_nothing(tmp_path, outlier):
    """--weights auto (the default) measures per-tensor MatMul weights against per-channel ones on the data:
    taken when free (here: every output channel has the same range, so one scale loses nothing; faster in
    ONNX Runtime), refused when one output channel's weights are 100x wider."""
    from quantcli import pipeline
    from quantcli.recipe import CalibrateSettings, ConvertSettings
    from onnx import numpy_helper

    m = small_mlp()
    for t in m.graph.initializer:
        if t.name in ("w1", "w2"):
            a = numpy_helper.to_array(t).copy()
            a *= 0.3 / np.abs(a).max(axis=0)  # the same absolute maximum in every output channel (column)
            if t.name == "w1":
                a[:, 0] *= outlier
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(size=(64, 5, 32)).astype(np.float32))
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(cle=False),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    note = next(n for n in r.notes if n.startswith("weights auto"))
    dims = {t.name: list(t.dims) for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
    if outlier == 1.0:
        assert note.startswith("weights auto: per-tensor for 2 MatMul/Gemm"), note
        assert dims["w1_scale"] == [] and dims["w2_scale"] == []
    else:
        assert note.startswith("weights auto: per-channel kept"), note
        assert dims["w1_scale"] == [64]


def test_mac_counts_where_shape_inference_loses_a_dim():
    """A position table sliced to the input's length (Shape -> Gather -> Slice, as exporters write it) and
    added to it: with the length set to 1, ONNX shape inference loses the dim, so the MatMul behind it
    had no MAC count (`inspect` without --data reported 0% coverage on the transformer sample).  One run
    on the inputs fills in the real shapes."""
    from onnx import TensorProto, helper, numpy_helper

    from quantcli.validate.coverage import heavy_macs

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "pos"),
             numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
             helper.make_node("Unsqueeze", ["seq", "zero"], ["end"]),
             helper.make_node("Slice", ["pos", "zero", "end", "zero"], ["pos_s"]),
             helper.make_node("Add", ["x", "pos_s"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")]
    m = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros((1, 1, 8), np.float32)
    assert heavy_macs(m, {"x": x.shape}) == {}  # what shape inference alone gives
    assert heavy_macs(m, {"x": x.shape}, {"x": x}) == {"proj": 1 * 1 * 4 * 8}
    assert heavy_macs(m, {"x": (2, 5, 8)}, {"x": np.zeros((2, 5, 8), np.float32)}) == {"proj": 2 * 5 * 4 * 8}


def test_nodes_onnx_runtime_would_not_fuse_stay_float(tmp_path):
    """A 2-D MatMul of two activations followed by a bias Add: ONNX Runtime rewrites it into a float Gemm
    before its Q/DQ fusion, so Q/DQ on it would only cost time and precision.  convert checks the plan
    against ONNX Runtime's optimizer and keeps such nodes in float, saying why."""
    from onnx import TensorProto, helper, numpy_helper

    from quantcli import pipeline
    from quantcli.quantize.reasons import UNFUSED
    from quantcli.recipe import ActMatmul, CalibrateSettings, ConvertSettings

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["h"], name="proj"),  # fuses
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Transpose", ["hr"], ["hrt"], name="t"),
             helper.make_node("MatMul", ["hrt", "hr"], ["gram"], name="gram"),  # two activations: fuses
             helper.make_node("MatMul", ["hr", "gram"], ["s"], name="mix"),  # two activations + bias Add
             helper.make_node("Add", ["s", "bias"], ["y"], name="mix_bias")]
    inits = [numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "bias")]
    m = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", a=rng.normal(size=(64, 8)).astype(np.float32))
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(act_matmul=ActMatmul.INT8),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    assert r.float_nodes.get("mix") == UNFUSED
    assert {"proj", "gram"} <= set(r.quantized_nodes) and r.coverage.float_heavy_nodes == ["mix"]
    assert r.coverage.dq_left == 1  # mix reads hr through one DequantizeLinear: no Q/DQ of its own


def test_float_consumers_read_exact_tensors_from_float_producers():
    """A LayerNorm output feeding a MatMul (quantized) and a residual Add (float): the Add reads the exact
    float tensor, not its rounded copy, so no DequantizeLinear runs for it; a quantized producer's output
    (only int8 once fused) is still read dequantized by float consumers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["ln", "h"], ["y"], name="residual")]
    inits = [numpy_helper.from_array(np.ones(16, np.float32), "g"), numpy_helper.from_array(np.zeros(16, np.float32), "b"),
             numpy_helper.from_array((rng.normal(size=(16, 16)) * 0.1).astype(np.float32), "w")]
    m = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
                                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16])], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(8, 4, 16)).astype(np.float32)
    q, p = _quantize(m, {"x": x})
    assert p.quantized_nodes == {"mm": "MatMul"}
    by_name = {n.name: n for n in q.graph.node}
    assert list(by_name["residual"].input) == ["ln", "h"] and by_name["mm"].input[0] == "ln_dequantized"
    cov = int8_coverage(q, {"x": (1, 4, 16)})
    assert cov.mac_share == 1.0 and cov.dq_left == 0
    ref = make_session(m).run(None, {"x": x})[0]
    assert _sqnr(ref, make_session(q).run(None, {"x": x})[0]) > 35
    # a quantized MatMul's output, read by another MatMul and by a float Sigmoid: the Sigmoid reads it dequantized
    nodes2 = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
              helper.make_node("MatMul", ["h", "w"], ["h2"], name="mm2"),
              helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
              helper.make_node("Add", ["s", "h2"], ["y"], name="out")]
    m2 = helper.make_model(helper.make_graph(nodes2, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
                                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16])], inits[2:]),
                           opset_imports=[helper.make_opsetid("", 17)])
    q2, _ = _quantize(m2, {"x": x})
    assert [n for n in q2.graph.node if n.name == "sig"][0].input[0] == "h_dequantized"


@pytest.mark.parametrize("head_dim,quantized", [(32, False), (64, True)])
def test_attention_matmuls_in_int8_only_from_head_dimension_64(head_dim, quantized):
    """--act-matmul auto on an int8-fast CPU (settings.ACT_MATMUL_MIN_DIM): Q.K^T and P.V with a static head
    dimension below 64 stay float (int8 measured x1.13-1.60 slower per MatMul at head dim 32), at 64 int8; the
    sequence is symbolic, so the head dimension is the one static dim for both."""
    from onnx import TensorProto, helper

    shape = ["N", 2, "S", head_dim]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
             helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["ctx"], name="pv")]
    m = helper.make_model(helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
        [helper.make_tensor_value_info("ctx", TensorProto.FLOAT, shape)]), opset_imports=[helper.make_opsetid("", 17)])
    p = plan(m, PlanOptions(act_matmul=True, act_matmul_min_dim=64))
    assert (set(p.quantized_nodes) == {"qk", "pv"}) == quantized
    if not quantized:
        assert {p.float_nodes[n].reason for n in ("qk", "pv")} == {Reason.ACT_MATMUL}
        assert f"head dimension {head_dim} (< 64)" in str(p.float_nodes["pv"])
    assert set(plan(m, PlanOptions(act_matmul=True)).quantized_nodes) == {"qk", "pv"}  # --act-matmul int8: all
