"""What real exporters produce: old opsets, Constant weights, 2-D biases, unnamed nodes, fixed batch 1,
one output concatenating box coordinates with class scores."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from models import cnn_data, detector_head, masked_attention, small_cnn
from quantcli import pipeline
from quantcli.cpu import detect
from quantcli.quantize.reasons import ACT_MATMUL, NO_ACT_RANGES, Reason
from quantcli.recipe import ActMatmul, CalibrateSettings, ConvertSettings
from quantcli.runtime.session import make_session


def _convert(tmp_path, model, n=16):
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=cnn_data(n))
    return pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                            calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opset_upgraded_for_per_channel(tmp_path, opset):
    r = _convert(tmp_path, small_cnn(opset=opset))
    assert any("upgraded to 13" in n for n in r.notes)
    assert r.coverage.mac_share == 1.0 and r.checks[0].cosine > 0.999
    q = onnx.load(tmp_path / "q.onnx")
    assert any(a.name == "axis" for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)


def test_constant_weights_unnamed_nodes_and_2d_gemm_bias(tmp_path):
    m = small_cnn()
    for node in m.graph.node:
        node.name = ""
    for t in list(m.graph.initializer):
        if t.name in ("w1", "w3"):
            m.graph.initializer.remove(t)
            m.graph.node.insert(0, helper.make_node("Constant", [], [t.name], value=t))
        if t.name == "bg":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1, 10), "bg"))
    r = _convert(tmp_path, m)
    assert r.coverage.mac_share == 1.0 and not r.coverage.float_heavy_nodes
    assert r.coverage.integer_kernels["QGemm"] == 1
    assert all(name for name in r.quantized_nodes)


def test_fixed_batch_one_model(tmp_path):
    r = _convert(tmp_path, small_cnn(batch=1), n=5)
    assert r.coverage.mac_share == 1.0


def _sqnr(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))


@pytest.mark.parametrize("box_scale", [320.0, 1.0])
def test_concat_of_boxes_and_scores_keeps_the_scores(tmp_path, box_scale):
    """Boxes (0..500) concatenated with class logits (-9..9): one QLinearConcat scale would leave the logits
    about 3 bits (measured: scores SQNR 9 dB, 73% class agreement); the Concat stays float and says why.
    With boxes on the logits' scale the Concat is quantized and fuses."""
    m = detector_head(box_scale=box_scale)
    r = _convert(tmp_path, m, n=32)
    x = cnn_data(16, seed=5)
    ref = make_session(m).run(None, {"x": x})[0]
    got = make_session(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]
    assert _sqnr(ref[..., 4:], got[..., 4:]) > 25 and _sqnr(ref[..., :4], got[..., :4]) > 25
    assert (ref[..., 4:].argmax(-1) == got[..., 4:].argmax(-1)).mean() > 0.95
    if box_scale > 1:
        assert "concat" not in r.quantized_nodes and r.float_nodes["concat"].reason == Reason.RANGE_CONFLICT and "ranges differ" in str(r.float_nodes["concat"])
        assert r.coverage.integer_kernels == {"QLinearConv": 3}
    else:
        assert r.quantized_nodes["concat"] == "Concat" and r.coverage.integer_kernels["QLinearConcat"] == 1


def test_additive_attention_mask_int64_input_and_odd_symbolic_dims(tmp_path):
    """An exporter-style -3.4e38 additive mask from an int64 attention_mask, dims named 'seq_len + 1': the mask
    path stays float (no range is taken from it), every MatMul runs in an integer kernel, outputs stay finite."""
    m = masked_attention()
    onnx.save(m, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)

    def data(n, s=12):
        x = rng.normal(size=(n, s, 16)).astype(np.float32)
        mask = np.ones((n, s), np.int64)
        for i in range(n):
            mask[i, rng.integers(4, s):] = 0
        return {"x": x, "attention_mask": mask}

    np.savez(tmp_path / "c.npz", **data(32))
    cal = pipeline.calibrate(tmp_path / "m.onnx", tmp_path / "c.json", CalibrateSettings(data=str(tmp_path / "c.npz")),
                             convert_settings=ConvertSettings(act_matmul=ActMatmul.INT8))
    feeds = data(8)
    ref = make_session(m).run(None, feeds)[0]
    # attention quantized too (--act-matmul int8): the scores/probabilities matmuls take ranges around the mask
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(act_matmul=ActMatmul.INT8),
                         calibration=cal.output)
    assert "mask_add" in r.float_nodes and "mask_bias" in r.float_nodes
    assert r.coverage.mac_share == 1.0 and len(r.quantized_nodes) == 6
    got = make_session(str(tmp_path / "q.onnx")).run(None, feeds)[0]
    assert np.isfinite(got).all() and _sqnr(ref, got) > 25
    # a calibration made for attention in float has no ranges for its inputs: int8 attention falls back to float
    cal_float = pipeline.calibrate(tmp_path / "m.onnx", tmp_path / "cf.json", CalibrateSettings(data=str(tmp_path / "c.npz")),
                                   convert_settings=ConvertSettings(act_matmul=ActMatmul.FLOAT))
    assert cal_float.tensors < cal.tensors
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q3.onnx", ConvertSettings(act_matmul=ActMatmul.INT8),
                         calibration=cal_float.output)
    assert r.float_nodes["scores"] == r.float_nodes["context"] == NO_ACT_RANGES
    # the default: attention in int8 only where the CPU computes int8 faster than FP32 and the head dimension is
    # large enough for int8 kernels to win (16 here: float on every CPU)
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q2.onnx", ConvertSettings(), calibration=cal.output)
    attention = {"scores", "context"}
    assert all(r.float_nodes[n].reason == Reason.ACT_MATMUL for n in attention)
    assert set(r.coverage.float_heavy_nodes) == attention
    assert any(n.startswith("act-matmul auto: 2 MatMul(s)") for n in r.notes)
    if detect().int8_compute_fast:
        assert "head dimension 16 (< 64)" in str(r.float_nodes["scores"])
    else:
        assert r.float_nodes["scores"] == ACT_MATMUL
    got = make_session(str(tmp_path / "q2.onnx")).run(None, feeds)[0]
    assert np.isfinite(got).all() and _sqnr(ref, got) > 25


def _bias_add_cnn(conv_bias_shape=(1, 16, 1, 1), gemm_bias_shape=(1, 10), with_conv_bias=False):
    """small_cnn with conv1's and the head's biases applied by separate Adds, as Paddle2ONNX exports them."""
    m = small_cnn()
    g = m.graph
    rng = np.random.default_rng(3)
    conv1 = next(n for n in g.node if n.name == "conv1")
    fc = next(n for n in g.node if n.name == "fc")
    if with_conv_bias:
        g.initializer.append(numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1"))
        conv1.input.append("b1")
    conv1.output[0] = "c1_nobias"
    fc.output[0] = "y_nobias"
    i = list(g.node).index(conv1)
    g.node.insert(i + 1, helper.make_node("Add", ["c1_nobias", "cb"], ["c1"], name="conv1_bias"))
    g.node.append(helper.make_node("Add", ["gb", "y_nobias"], ["y"], name="fc_bias"))
    g.initializer.append(numpy_helper.from_array(rng.normal(size=conv_bias_shape).astype(np.float32), "cb"))
    g.initializer.append(numpy_helper.from_array(rng.normal(size=gemm_bias_shape).astype(np.float32), "gb"))
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("shapes", [((1, 16, 1, 1), (1, 10), False), ((16, 1, 1), (10,), True), ((1,), (1, 10), True)])
def test_bias_adds_fold_into_conv_and_gemm(tmp_path, shapes):
    from quantcli.transforms.prepare import fold_bias_add

    m = _bias_add_cnn(*shapes)
    folded = fold_bias_add(m)
    assert [(e.kind.value, e.node) for e in folded.events] == [("changed", "conv1"), ("changed", "fc")]
    assert not any(n.op_type == "Add" and n.name in ("conv1_bias", "fc_bias") for n in folded.model.graph.node)
    onnx.checker.check_model(folded.model, full_check=True)
    x = cnn_data(8)
    ref = make_session(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(make_session(folded.model).run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    r = _convert(tmp_path, m)
    assert r.coverage.mac_share == 1.0 and "conv1_bias" not in r.float_nodes
    assert r.coverage.dq_left == 0  # nothing float between the integer kernels


def test_bias_add_not_folded_where_it_is_not_a_per_channel_bias():
    from quantcli.transforms.prepare import fold_bias_add

    for shape in [(1, 16, 16, 16), (16,)]:  # a full tensor; a vector along the last (W) axis
        m = _bias_add_cnn(conv_bias_shape=shape)
        r = fold_bias_add(m)
        assert any(n.name == "conv1_bias" for n in r.model.graph.node), shape


def test_decomposed_layernorm_stays_float_and_feeds_an_integer_matmul(tmp_path):
    """Opset-11 LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div) on activations of +-1000: the normalization stays
    float, the MatMul after it runs as an integer kernel, and the output keeps > 30 dB SQNR."""
    from test_half import decomposed_layernorm

    m = decomposed_layernorm()
    onnx.save(m, tmp_path / "m.onnx")
    x = (np.random.default_rng(0).normal(size=(64, 16)) * 300).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    assert r.quantized_nodes == {"mm": "MatMul"} and r.coverage.mac_share == 1.0
    ref = make_session(m).run(None, {"x": x})[0]
    assert _sqnr(ref, make_session(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]) > 30


def test_bias_add_folds_into_gemm_with_2d_c_and_beta():
    """A Gemm that already has a [1, N] C scaled by beta = 0.5, then a bias Add: folded into one 1-D C."""
    from onnx import helper as h

    from quantcli.transforms.prepare import fold_bias_add

    m = _bias_add_cnn()
    for t in m.graph.initializer:
        if t.name == "bg":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1, 10), "bg"))
    fc = next(n for n in m.graph.node if n.name == "fc")
    fc.attribute.append(h.make_attribute("beta", 0.5))
    r = fold_bias_add(m)
    assert [e.node for e in r.events] == ["conv1", "fc"]
    fc = next(n for n in r.model.graph.node if n.name == "fc")
    c = next(t for t in r.model.graph.initializer if t.name == fc.input[2])
    assert list(c.dims) == [10] and not any(a.name == "beta" for a in fc.attribute)
    x = cnn_data(8)
    np.testing.assert_allclose(make_session(r.model).run(None, {"x": x})[0],
                               make_session(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def _matmul_head(bias_shape=(10,), rank3=False):
    """GlobalAveragePool -> Flatten -> MatMul -> Add(bias): a classifier head as PyTorch exports nn.Linear
    on a 2-D input at opset >= 14 (or a [batch, seq, C] input, where it must stay a MatMul)."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["f"], name="flatten") if not rank3 else
             helper.make_node("Reshape", ["gap", "shape3"], ["f"], name="to3d"),
             helper.make_node("MatMul", ["f", "wm"], ["mm_out"], name="head"),
             helper.make_node("Add", ["mm_out", "bm"], ["y"], name="head_bias")]
    inits = [numpy_helper.from_array((rng.normal(size=(16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.normal(size=(16, 10)) * 0.3).astype(np.float32), "wm"),
             numpy_helper.from_array(rng.normal(size=bias_shape).astype(np.float32), "bm"),
             numpy_helper.from_array(np.array([0, 1, 16], np.int64), "shape3")]
    out = ["N", 1, 10] if rank3 else ["N", 10]
    return helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
                                               [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out)], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bias_shape", [(10,), (1, 10), (1,)])
def test_2d_matmul_with_bias_add_becomes_an_integer_gemm(tmp_path, bias_shape):
    """ONNX Runtime turns a 2-D MatMul + bias Add into a float Gemm at load time, after the Q/DQ are in
    place, so the head ran in float behind DequantizeLinear (seen on the transformer sample).  prepare makes
    it a Gemm first: its bias becomes int32 and it runs as QGemm; same outputs as before in FP32."""
    from quantcli.transforms.prepare import matmul_add_to_gemm

    m = _matmul_head(bias_shape)
    r = matmul_add_to_gemm(m)
    assert [(e.node, e.detail) for e in r.events] == [("head", "MatMul + bias Add turned into a Gemm")]
    head = next(n for n in r.model.graph.node if n.name == "head")
    assert head.op_type == "Gemm" and head.output[0] == "y" and not any(n.name == "head_bias" for n in r.model.graph.node)
    x = cnn_data(8)
    np.testing.assert_allclose(make_session(r.model).run(None, {"x": x})[0], make_session(m).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
    q = _convert(tmp_path, m)
    assert q.coverage.integer_kernels.get("QGemm") == 1 and not q.coverage.float_heavy_nodes
    assert q.coverage.mac_share == 1.0


def test_3d_matmul_with_bias_add_stays_a_matmul():
    from quantcli.transforms.prepare import matmul_add_to_gemm

    assert not matmul_add_to_gemm(_matmul_head(rank3=True)).changed  # MatMulIntegerToFloat takes its bias
    assert not matmul_add_to_gemm(_matmul_head(bias_shape=(1, 1, 10))).changed  # would broadcast to rank 3


def _spell_batch(model, spelling):
    d = model.graph.input[0].type.tensor_type.shape.dim[0]
    d.Clear()
    if spelling == "param":
        d.dim_param = "DynamicDimension.0"
    elif spelling != "empty":
        d.dim_value = spelling
    return model


@pytest.mark.parametrize("spelling", [-1, 0, "empty", "param"])
def test_dynamic_batch_spellings(tmp_path, spelling):
    """Paddle2ONNX writes a dynamic batch as dim_value -1 (PP-OCR cls: calibrate --samples 4 once fed endless
    empty batches and grew to 21 GB); 0, an empty dim and any dim_param are dynamic too."""
    from quantcli.data.sources import Dataset, input_specs

    m = _spell_batch(small_cnn(), spelling)
    spec = input_specs(m)[0]
    assert spec.batch_dim is None and spec.shape[1:] == (3, 16, 16)
    np.savez(tmp_path / "c.npz", x=cnn_data(5))
    ds = Dataset(tmp_path / "c.npz", [spec])
    assert ds.default_batch_size(None) == 16 and ds.default_batch_size(2) == 2
    assert [len(b["x"]) for b in ds.batches(2)] == [2, 2, 1]
    r = _convert(tmp_path, m, n=5)
    assert r.coverage.mac_share == 1.0 and r.checks[0].cosine > 0.999


def test_batch_size_below_one_is_an_error(tmp_path):
    from quantcli.data.sources import Dataset, input_specs
    from quantcli.errors import QuantcliError

    np.savez(tmp_path / "c.npz", x=cnn_data(3))
    ds = Dataset(tmp_path / "c.npz", input_specs(small_cnn()))
    with pytest.raises(QuantcliError, match="at least 1"):
        ds.default_batch_size(0)
    with pytest.raises(QuantcliError, match="at least 1"):
        next(ds.batches(0))


def test_default_batch_shrinks_for_large_inputs(tmp_path):
    """16 samples of a 480x480 image are 11M values; every tapped activation of such a batch is held at once."""
    from quantcli.data.sources import BATCH_VALUES, Dataset, input_specs

    np.savez(tmp_path / "c.npz", x=cnn_data(3))
    specs = input_specs(small_cnn())
    assert Dataset(tmp_path / "c.npz", specs).default_batch_size(None) == 16
    big = np.zeros((2, 3, 300, 300), np.float32)
    np.savez(tmp_path / "big.npz", x=big)
    big_spec = [dataclasses.replace(specs[0], shape=(None, 3, 300, 300))]
    assert Dataset(tmp_path / "big.npz", big_spec).default_batch_size(None) == BATCH_VALUES // big[0].size
    assert Dataset(tmp_path / "big.npz", big_spec).default_batch_size(5) == 5


@pytest.mark.parametrize("op", ["Reshape", "Unsqueeze", "Squeeze"])
def test_bias_shaped_at_run_time_is_folded_into_the_conv(tmp_path, op):
    """Older Paddle2ONNX exports: the SE convs' bias [C] reshaped to [1, C, 1, 1] by a node of constants, then
    added.  The shape op folds into an initializer, so the Add folds into the Conv's bias and stays no float op."""
    from quantcli.transforms.passes import prepare
    from quantcli.transforms.prepare import fold_constant_shapes

    m = _bias_add_cnn()
    g = m.graph
    cb = next(t for t in g.initializer if t.name == "cb")
    vec = numpy_helper.to_array(cb).reshape(-1)
    g.initializer.remove(cb)
    add = next(n for n in g.node if n.name == "conv1_bias")
    if op == "Reshape":
        g.initializer.extend([numpy_helper.from_array(vec, "cb_vec"),
                              numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "cb_shape")])
        shape_node = helper.make_node("Reshape", ["cb_vec", "cb_shape"], ["cb"], name="cb_reshape")
    elif op == "Unsqueeze":  # opset 13: axes as an input
        g.initializer.extend([numpy_helper.from_array(vec, "cb_vec"),
                              numpy_helper.from_array(np.array([0, 2, -1], np.int64), "cb_axes")])
        shape_node = helper.make_node("Unsqueeze", ["cb_vec", "cb_axes"], ["cb"], name="cb_unsqueeze")
    else:  # [1, 1, 16, 1, 1] -> [1, 16, 1, 1]
        g.initializer.append(numpy_helper.from_array(vec.reshape(1, 1, 16, 1, 1), "cb_vec"))
        g.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "cb_axes"))
        shape_node = helper.make_node("Squeeze", ["cb_vec", "cb_axes"], ["cb"], name="cb_squeeze")
    g.node.insert(list(g.node).index(add), shape_node)
    onnx.checker.check_model(m, full_check=True)
    r = fold_constant_shapes(m)
    assert [e.node for e in r.events] == [shape_node.name]
    folded = next(t for t in r.model.graph.initializer if t.name == "cb")
    np.testing.assert_array_equal(numpy_helper.to_array(folded), vec.reshape(1, 16, 1, 1))
    x = cnn_data(8)
    ref = make_session(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(make_session(r.model).run(None, {"x": x})[0], ref)
    assert not any(n.name == "conv1_bias" for n in prepare(m).model.graph.node)
    q = _convert(tmp_path, m)
    assert q.coverage.mac_share == 1.0 and "conv1_bias" not in q.float_nodes and q.coverage.dq_left == 0


def test_shape_op_of_an_activation_or_a_graph_output_is_left_alone():
    from quantcli.transforms.prepare import fold_constant_shapes

    m = small_cnn()
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.ones(4, np.float32), "k"),
                          numpy_helper.from_array(np.array([2, 2], np.int64), "k_shape")])
    g.node.append(helper.make_node("Reshape", ["k", "k_shape"], ["k2"], name="k_reshape"))
    g.output.append(helper.make_tensor_value_info("k2", onnx.TensorProto.FLOAT, [2, 2]))
    r = fold_constant_shapes(m)
    assert not r.events and any(n.name == "k_reshape" for n in r.model.graph.node)
