"""Cross-layer equalization and bias correction: function preserved, skips explained, errors reduced."""

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import cnn_data, small_cnn, static_builder
from quantcli.quantize import params as qp
from quantcli.quantize.policy import PlanOptions, plan
from quantcli.quantize.qdq import insert_qdq
from quantcli.runtime.session import make_session, tap_model
from quantcli.transforms.bias_correction import analytic_shift, relu_gaussian_mean
from quantcli.transforms.equalize import equalization_scales, equalize, find_pairs
from quantcli.transforms.fold_batchnorm import fold_batchnorm


def _chain(act="Relu", share=False, residual=False, groups=1, spread=30.0, seed=0):
    """x -> Conv(8->16) -> act -> depthwise Conv(16) -> Relu -> pointwise Conv(16->8) [-> Add residual]."""
    rng = np.random.default_rng(seed)
    k = np.exp(rng.uniform(-np.log(spread), np.log(spread), 16)).astype(np.float32)
    w1 = rng.normal(size=(16, 8, 3, 3)).astype(np.float32) * k[:, None, None, None] * 0.2
    w2 = rng.normal(size=(16, 16 // groups if groups != 16 else 1, 3, 3)).astype(np.float32) * 0.3
    w3 = rng.normal(size=(8, 16, 1, 1)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    inits += [numpy_helper.from_array(rng.normal(size=16).astype(np.float32) * k * 0.1, "b1"),
              numpy_helper.from_array(rng.normal(size=16).astype(np.float32) * 0.1, "b2"),
              numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    act_node = (helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="act1") if act == "Clip"
                else helper.make_node(act, ["c1"], ["a1"], name="act1"))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4), act_node,
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1] * 4, group=groups),
             helper.make_node("Relu", ["c2"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3"], ["y0"], name="pw")]
    out = "y0"
    if share:
        nodes.append(helper.make_node("Conv", ["a2", "w3"], ["y1"], name="pw_twin"))
        nodes.append(helper.make_node("Add", ["y0", "y1"], ["y"], name="sum"))
        out = "y"
    if residual:
        nodes.append(helper.make_node("Conv", ["a1", "w3"], ["skip"], name="skip_conv"))
        nodes.append(helper.make_node("Add", [out, "skip"], ["y"], name="res"))
        out = "y"
    if out == "y0":
        nodes.append(helper.make_node("Identity", ["y0"], ["y"], name="out"))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


X = np.random.default_rng(1).normal(size=(16, 8, 6, 6)).astype(np.float32)


def _run(m, x=X):
    return make_session(m).run(None, {"x": x})[0]


def _spread(w, axis):
    r = np.max(np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)), axis=1)
    return r.max() / r.min()


def test_scales_equalize_ranges():
    s = equalization_scales(np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]))
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])


def test_depthwise_chain_equalized_and_function_preserved():
    m = _chain(groups=16)
    r = equalize(m)
    assert [line.split(":")[0] for line in r.changed] == ["conv1 -> dw", "dw -> pw"]
    np.testing.assert_allclose(_run(r.model), _run(m), rtol=1e-4, atol=1e-4)
    w1 = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}["w1"]
    w1_before = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}["w1"]
    assert _spread(w1, 0) < _spread(w1_before, 0) / 5


@pytest.mark.parametrize("kwargs,node,reason", [
    ({"act": "Clip"}, "conv1", "Clip after it is not positively homogeneous"),
    ({"residual": True}, "conv1", "several consumers"),
    ({"share": True}, "dw", "several consumers"),
    ({"groups": 2}, "conv1", "grouped convolution"),
])
def test_unsafe_pairs_are_skipped_with_reasons(kwargs, node, reason):
    m = _chain(**kwargs)
    r = equalize(m)
    assert any(n == node and reason in why for n, why in r.skipped), r.skipped
    np.testing.assert_allclose(_run(r.model), _run(m), rtol=1e-4, atol=1e-4)


def test_shared_weights_are_not_equalized():
    m = _chain()
    m.graph.node.insert(1, helper.make_node("Conv", ["x", "w1"], ["extra"], name="w1_user", pads=[1] * 4))
    m.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 16, 6, 6]))
    pairs, skipped = find_pairs(m)
    assert ("conv1", "weight of conv1 is shared with other nodes") in skipped


def test_cnn_with_residual_and_bn_keeps_outputs():
    m = fold_batchnorm(small_cnn()).model
    r = equalize(m)
    x = cnn_data(8)
    np.testing.assert_allclose(make_session(r.model).run(None, {"x": x})[0],
                               make_session(m).run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert any("dwconv -> pwconv" in c for c in r.changed)


def test_relu_gaussian_mean_matches_sampling():
    rng = np.random.default_rng(0)
    for mu, sigma in ((0.0, 1.0), (1.5, 0.5), (-2.0, 1.0)):
        mc = np.maximum(rng.normal(mu, sigma, 400_000), 0).mean()
        assert abs(relu_gaussian_mean(np.array([mu]), np.array([sigma]))[0] - mc) < 0.01


def test_analytic_shift_is_expected_error():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    p = qp.weight_params(w, axis=None)
    wq = qp.dequantize(qp.quantize_weight(w, p), p)
    mean_in = np.array([0.5, 1.0, 2.0])
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    x = np.broadcast_to(mean_in[None, :, None, None], (1, 3, 3, 3))
    expected = ((wq - w) * x).reshape(4, -1).sum(axis=1)
    np.testing.assert_allclose(analytic_shift(node, w, wq, mean_in), expected, rtol=1e-6)


def test_empirical_bias_correction_reduces_each_layers_mean_error(tmp_path):
    """On held-out data, every corrected layer's mean output error per channel gets smaller."""
    from quantcli.quantize.empirical_bias import empirical_bias_correction
    from quantcli.quantize.qdq import QDQOptions

    m = equalize(_chain(groups=16, spread=3.0)).model
    rng = np.random.default_rng(5)
    # inputs with a non-zero mean, like images, so weight rounding biases every layer's output
    calib = [{"x": (rng.normal(size=(16, 8, 6, 6)) + 1.0).astype(np.float32)} for _ in range(8)]
    held = (rng.normal(size=(64, 8, 6, 6)) + 1.0).astype(np.float32)
    p = plan(m, PlanOptions(per_channel=False))
    tensors = p.calibrated_tensors()
    vals = make_session(tap_model(m, tensors)).run(None, calib[0])
    ranges = {t: (float(v.min()), float(v.max())) for t, v in zip(tensors, vals)}
    opts = QDQOptions()
    layers = ["conv1", "dw", "pw"]
    fixed, report = empirical_bias_correction(m, p, ranges, opts, calib, layers)
    assert [(e.kind.value, e.node) for e in report] == [("bias-shifted", n) for n in layers]

    def layer_errors(model):
        q = insert_qdq(model, p, ranges, opts).model
        outs = {n.name: n.output[0] for n in q.graph.node if n.name in layers}
        ref = dict(zip(layers, make_session(tap_model(m, [next(n.output[0] for n in m.graph.node if n.name == l)
                                                          for l in layers])).run(None, {"x": held})))
        got = dict(zip(layers, make_session(tap_model(q, [outs[l] for l in layers])).run(None, {"x": held})))
        return {l: np.abs((got[l] - ref[l]).mean(axis=(0, 2, 3))).mean() for l in layers}

    before, after = layer_errors(m), layer_errors(fixed)
    for layer in layers:
        assert after[layer] < before[layer], (layer, before, after)


def test_bias_correction_frontier_measures_what_the_whole_prefix_measures():
    """Each layer's pass runs from the kept values of final nodes (Frontier); its per-channel means must equal
    a pass of the whole prefix from the inputs, also through unnamed nodes (opset upgrades add unnamed
    Constants: keyed by name, two of them once collapsed into one and the pass failed to load)."""
    from quantcli.calibration.collect import collect_statistics
    from quantcli.calibration.requests import Stat, StatRequest
    from quantcli.quantize.empirical_bias import Frontier

    def whole_prefix(model, tensor):
        req = StatRequest(tensor, Stat.CHANNEL_MEAN, 1)
        return collect_statistics(tap_model(model, [tensor]), [req], batches).channels[req].result()

    m = small_cnn(opset=13)
    m.graph.node[0].input[0] = "xs"  # x -> Unsqueeze -> Squeeze (axes from unnamed Constants) -> conv1
    m.graph.node.insert(0, helper.make_node("Squeeze", ["xu", "ax2"], ["xs"]))
    m.graph.node.insert(0, helper.make_node("Unsqueeze", ["x", "ax1"], ["xu"]))
    for name in ("ax2", "ax1"):
        m.graph.node.insert(0, helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.array([0], np.int64), name)))
    batches = [{"x": cnn_data(4, seed=s)} for s in range(3)]
    frontier = Frontier(batches)
    for layer in ("conv1", "dwconv", "pwconv"):
        node = next(n for n in m.graph.node if n.name == layer)
        whole = whole_prefix(m, node.output[0])
        (mean,) = frontier.channel_means(m, [(layer, 1)])
        np.testing.assert_allclose(mean, whole, rtol=1e-5, atol=1e-6)
    assert "conv1" in {n.name for n in m.graph.node}  # the model itself is not changed


def test_empirical_bias_correction_is_left_out_where_it_lowers_the_held_sqnr(tmp_path):
    """Corrections fit on one distribution, checked on another (inputs 20x smaller): the guard measures both
    models on the held samples and writes the uncorrected one, saying so; on matching data it keeps them."""
    from quantcli import pipeline
    from quantcli.recipe import BiasCorrection, CalibrateSettings, ConvertSettings

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=cnn_data(32))
    np.savez(tmp_path / "small.npz", x=(cnn_data(32, seed=5) * 0.05).astype(np.float32))
    calib = CalibrateSettings(data=str(tmp_path / "c.npz"))
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx",
                         ConvertSettings(eval_data=str(tmp_path / "small.npz")), calib_settings=calib)
    note = next(n for n in r.notes if n.startswith("bias correction left out"))
    merit = {int(k): float(v) for k, v in re.findall(r"(\d+): (-?[\d.]+)", note.split("corrected,")[1].split(" dB")[0])}
    assert merit[max(merit)] < merit[0]
    off = pipeline.convert(tmp_path / "m.onnx", tmp_path / "off.onnx",
                           ConvertSettings(eval_data=str(tmp_path / "small.npz"),
                                           bias_correction=BiasCorrection.OFF), calib_settings=calib)
    assert not any(n.startswith("bias correction") for n in off.notes)
    inits = lambda p: {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(p).graph.initializer}
    assert inits(tmp_path / "q.onnx") == inits(tmp_path / "off.onnx")
    kept = pipeline.convert(tmp_path / "m.onnx", tmp_path / "k.onnx", ConvertSettings(), calib_settings=calib)
    assert any(n.startswith("bias correction (empirical)") for n in kept.notes)


def _two_part(big_err: float, small_err: float, scale: float = 100.0) -> onnx.ModelProto:
    """y = Concat(scale * x + big_err, x + small_err) along axis 1: one output in two units (boxes and scores)."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["xb"], name="big"),
             helper.make_node("Add", ["xb", "eb"], ["yb"], name="big_err"),
             helper.make_node("Add", ["x", "es"], ["ys"], name="small_err"),
             helper.make_node("Concat", ["yb", "ys"], ["y"], name="cat", axis=1)]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("s", scale), ("eb", big_err), ("es", small_err))]
    g = helper.make_graph(nodes, "two_part", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 64])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_slice_sqnr_weighs_each_part_of_a_concatenated_output():
    """The whole-output SQNR is the large-unit part's; the mean per-slice SQNR sees the small part too (YOLOv8n:
    boxes in pixels next to class scores in 0..1)."""
    from quantcli.sensitivity import Evaluator

    batches = [{"x": np.random.default_rng(s).normal(size=(4, 1, 64)).astype(np.float32)} for s in range(3)]
    ev = Evaluator(_two_part(0.0, 0.0), batches)
    small_broken, big_shifted = (ev.score(_two_part(0.1, 0.5), slices=True),
                                 ev.score(_two_part(2.0, 0.01), slices=True))
    assert small_broken.sqnr_db > big_shifted.sqnr_db + 10            # the whole output prefers the broken scores
    assert small_broken.slice_sqnr_db < big_shifted.slice_sqnr_db - 3  # per part: 33 vs 37 dB
    assert ev.score(_two_part(0.0, 0.0), slices=True).slice_sqnr_db == pytest.approx(120.0)  # exact: capped, not inf


def test_bias_correction_guard_measures_samples_the_correction_did_not_fit(tmp_path):
    """Where the evaluation data is the calibration data, the guard scores the samples after those bias correction
    fitted its shifts on (small_cnn: all of the first 256): here they come from another distribution (20x smaller),
    so the correction is left out; measured on the fitted samples it looked better and was kept."""
    from quantcli import pipeline
    from quantcli.recipe import CalibrateSettings, ConvertSettings

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    x = np.concatenate([cnn_data(256), cnn_data(40, seed=5) * 0.05]).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(),
                         calib_settings=CalibrateSettings(data=str(tmp_path / "c.npz")))
    note = next(n for n in r.notes if n.startswith("bias correction left out"))
    assert "on 32 held samples" in note


def test_bias_prefix_keeps_exactly_the_shifts_of_the_leading_layers(tmp_path):
    """The guard's candidates 'first k layers corrected' reuse the full pass's shifts: the first k layers' int32
    biases are the fully corrected model's, the others the uncorrected model's, everything else the same."""
    model = small_cnn()
    build = static_builder(tmp_path, model, cnn_data(32))
    layers = build.corrected_layers()
    assert len(layers) >= 3

    def biases(m):
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
        return {n.name: inits[dq[n.input[2]].input[0]] for n in m.graph.node if n.name in layers}

    full, none, one = build().model, build.probe()().model, build.bias_prefix(1)().model
    b_full, b_none, b_one = biases(full), biases(none), biases(one)
    assert not np.array_equal(b_full[layers[1]], b_none[layers[1]])
    np.testing.assert_array_equal(b_one[layers[0]], b_full[layers[0]])
    for name in layers[1:]:
        np.testing.assert_array_equal(b_one[name], b_none[name])
    def rest(m):
        dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
        bias = {dq[n.input[2]].input[0] for n in m.graph.node if n.name in layers}
        return {t.name: t.SerializeToString() for t in m.graph.initializer if t.name not in bias}

    assert rest(one) == rest(full)
    assert sum(e.kind.name == "BIAS_SHIFTED" for e in build.bias_prefix(1)().events) == 1
    assert build.bias_prefix(len(layers)) is build and build.bias_prefix(0) is build.probe()

    # the prefixed builder's other builds (--max-drop candidates, nodes alone) correct only those layers too
    two = build.bias_prefix(2)
    shifted = lambda built: [e.node for e in built.events if e.kind.name == "BIAS_SHIFTED"]  # noqa: E731
    assert shifted(two((layers[-1],))) == layers[:2] and shifted(build((layers[-1],)))[2:]
    assert shifted(two((), (layers[-1],))) == [] and shifted(two((), (layers[0],))) == [layers[0]]
    assert shifted(build((), (layers[-1],))) == [layers[-1]]


def _spread_depthwise(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(3->16, channel gains 1/128..1) -> HardSwish -> depthwise Conv (gains 1/those) -> HardSwish ->
    pointwise Conv -> Relu, as PicoDet's backbone: HardSwish keeps equalization away (not positively homogeneous)
    and is not absorbed, so the depthwise input's channels, spread 128x, are quantized twice (the Conv's output
    and the HardSwish's) with one scale and amplified back to one scale by the depthwise layer."""
    rng = np.random.default_rng(seed)
    k = np.exp(np.linspace(np.log(1 / 128), 0.0, 16)).astype(np.float32)
    kk = k[:, None, None, None]
    inits = [numpy_helper.from_array((rng.normal(size=(16, 3, 3, 3)) * 2.0 * kk).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.normal(size=(16, 1, 3, 3)) * 0.3 / kk).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.normal(size=(8, 16, 1, 1)) * 0.3).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("HardSwish", ["c1"], ["a1"], name="hs1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="dw", pads=[1] * 4, group=16),
             helper.make_node("HardSwish", ["c2"], ["a2"], name="hs2"),
             helper.make_node("Conv", ["a2", "w3"], ["c3"], name="pw"),
             helper.make_node("Relu", ["c3"], ["y"], name="out")]
    g = helper.make_graph(nodes, "spread_dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_elementwise_source_walks_activations_back_to_one_tensor():
    """A HardSwish decomposed as Paddle2ONNX writes it (x * Clip(x + 3, 0, 6) / 6, constants in Constant nodes) and
    a Relu lead back to x; a residual Add of two activations, or a tensor no activation produces, to None."""
    from quantcli.quantize.policy import elementwise_source
    from quantcli.transforms.graph import GraphIndex

    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(  # noqa: E731
        np.array(v, np.float32), name))
    nodes = [helper.make_node("Conv", ["in", "w"], ["x"], name="conv"),
             c("three", 3.0), c("six", 6.0),
             helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["b"]),
             helper.make_node("Div", ["b", "six"], ["d"]), helper.make_node("Mul", ["x", "d"], ["hs"]),
             helper.make_node("Relu", ["hs"], ["r"]), helper.make_node("Relu", ["in"], ["r2"]),
             helper.make_node("Add", ["r", "r2"], ["res"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("in", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("res", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
                           numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    idx = GraphIndex(g)
    assert elementwise_source("hs", idx) == "x" and elementwise_source("r", idx) == "x"
    assert elementwise_source("res", idx) is None and elementwise_source("x", idx) is None
    assert elementwise_source("r", idx, max_nodes=3) is None


def test_depthwise_conv_amplifying_its_input_noise_stays_float(tmp_path, monkeypatch):
    """The rule keeps the depthwise layer float and the Conv before it, whose output reaches it through the
    HardSwish, says why, and the output is closer to FP32 than with either of them in int8 (here 34.4 dB, the
    depthwise layer alone float 11.8, both int8 11.0; PicoDet: F1 vs FP32 43.5% all int8, 62.3% the depthwise
    layers float, 83.3% with the Convs before them)."""
    from quantcli import pipeline
    from quantcli.quantize import static
    from quantcli.recipe import CalibrateSettings, ConvertSettings

    m = _spread_depthwise()
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.abs(cnn_data(32)))
    calib = CalibrateSettings(data=str(tmp_path / "c.npz"))
    r = pipeline.convert(tmp_path / "m.onnx", tmp_path / "q.onnx", ConvertSettings(), calib_settings=calib)
    assert r.float_nodes["dw"].reason.value == "amplified"
    assert r.float_nodes["conv1"].reason.value == "amplified" and "depthwise dw" in r.float_nodes["conv1"].detail
    assert "pw" in r.quantized_nodes
    monkeypatch.setattr(static, "elementwise_source", lambda *a, **k: None)  # the depthwise layer alone float
    alone = pipeline.convert(tmp_path / "m.onnx", tmp_path / "a.onnx", ConvertSettings(), calib_settings=calib)
    assert "conv1" in alone.quantized_nodes and "dw" in alone.float_nodes
    monkeypatch.setattr(static, "MAX_DEPTHWISE_AMPLIFICATION", float("inf"))
    forced = pipeline.convert(tmp_path / "m.onnx", tmp_path / "f.onnx", ConvertSettings(), calib_settings=calib)
    assert "dw" in forced.quantized_nodes
    x = np.abs(cnn_data(16, seed=7))
    ref = make_session(m).run(None, {"x": x})[0]
    def sqnr(path):
        err = ref - make_session(onnx.load(path)).run(None, {"x": x})[0]
        return 10 * np.log10((ref ** 2).sum() / (err ** 2).sum())

    rule, dw_alone, forced_int8 = sqnr(tmp_path / "q.onnx"), sqnr(tmp_path / "a.onnx"), sqnr(tmp_path / "f.onnx")
    assert rule > dw_alone + 0.5 and dw_alone > forced_int8 + 0.5, (rule, dw_alone, forced_int8)


def test_requantize_matches_a_fresh_qdq_model(tmp_path):
    """Empirical bias correction keeps one Q/DQ model up to date as biases move (``requantize``) instead of
    rebuilding it per layer: the initializers must be the ones ``insert_qdq`` writes for the moved biases, also
    where a bias so large its int32 form needs a raised weight scale."""
    from quantcli.quantize.qdq import insert_qdq, requantize
    from quantcli.transforms.bias_correction import bias_tensor
    from quantcli.transforms.graph import GraphIndex, set_initializer

    model = small_cnn()
    build = static_builder(tmp_path, model, cnn_data(32))
    build()
    plain, work, qplan, ranges, options, _ = build._bc_parts
    idx = GraphIndex(work.graph)
    nodes = {n.name: n for n in work.graph.node}
    biases = {bias_tensor(work, nodes[name], idx)[0] for name in build.corrected_layers()}
    big = sorted(biases)[0]
    set_initializer(work.graph, big, np.full_like(idx.const(big), 3e7))  # int32 overflow at this scale: raised
    inits = lambda m: {t.name: t.SerializeToString() for t in m.graph.initializer}  # noqa: E731

    q = insert_qdq(plain, qplan, ranges, options).model
    fresh = insert_qdq(work, qplan, ranges, options).model
    assert inits(q) != inits(fresh)
    requantize(q, work, qplan, ranges, options, biases)
    assert inits(q) == inits(fresh)
    assert [n.SerializeToString() for n in q.graph.node] == [n.SerializeToString() for n in fresh.graph.node]


def test_bias_correction_measures_independent_layers_in_one_pass(tmp_path, monkeypatch):
    """Layers none of which depends on another (two heads on one backbone) are measured in one pass: the shifts
    are those of correcting them one by one in graph order, with fewer passes."""
    from test_sensitivity import _two_heads

    from quantcli.quantize import empirical_bias

    x = np.random.default_rng(0).normal(size=(24, 3, 8, 8)).astype(np.float32)
    passes = []
    real = empirical_bias.Frontier.channel_means

    def counted(self, q, layers, **kw):
        passes.append([name for name, _ in layers])
        return real(self, q, layers, **kw)

    monkeypatch.setattr(empirical_bias.Frontier, "channel_means", counted)
    grouped = static_builder(tmp_path, _two_heads(), x)().model
    measured = [p for p in passes if "head_a" in p or "head_b" in p]
    monkeypatch.setattr(empirical_bias, "REF_LAYERS", 1)
    passes.clear()
    (tmp_path / "one").mkdir()
    single = static_builder(tmp_path / "one", _two_heads(), x)().model
    assert ["head_a", "head_b"] in measured and ["head_a"] in passes and ["head_b"] in passes
    inits = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    a, b = inits(grouped), inits(single)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)
