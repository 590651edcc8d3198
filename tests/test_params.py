"""Quantization math checked against ONNX Runtime's own QuantizeLinear / DequantizeLinear."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli.quantize import params as qp
from quantcli.runtime.session import make_session


def _ort_qdq(x: np.ndarray, p: qp.QParams) -> tuple[np.ndarray, np.ndarray]:
    """Run x through QuantizeLinear then DequantizeLinear in ONNX Runtime with params p."""
    zp_type = helper.np_dtype_to_tensor_dtype(p.zero_point.dtype)
    kw = {"axis": p.axis} if p.axis is not None and np.ndim(p.scale) == 1 else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("q", zp_type, list(x.shape)),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
                          [numpy_helper.from_array(np.asarray(p.scale, np.float32), "s"),
                           numpy_helper.from_array(np.asarray(p.zero_point), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    q, y = make_session(m).run(None, {"x": x.astype(np.float32)})
    return q, y


def _ort_dq(q: np.ndarray, p: qp.QParams) -> np.ndarray:
    kw = {"axis": p.axis} if p.axis is not None and np.ndim(p.scale) == 1 else {}
    g = helper.make_graph([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)], "dq", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(q.shape))],
                          [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.asarray(p.scale, np.float32), "s"),
                           numpy_helper.from_array(np.asarray(p.zero_point), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return make_session(m).run(None, {})[0]


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 6.0), (-5.0, -1.0), (2.0, 2.5), (-1e-3, 1e-3), (0.0, 0.0)])
def test_asymmetric_activation_matches_ort(lo, hi):
    rng = np.random.default_rng(0)
    x = rng.uniform(lo - 1, hi + 1, size=1000).astype(np.float32)
    x[:5] = [0.0, lo, hi, (lo + hi) / 2, 1e9]  # zero, the edges, a midpoint, an outlier that saturates
    p = qp.activation_params(lo, hi)
    q_ort, y_ort = _ort_qdq(x, p)
    np.testing.assert_array_equal(qp.quantize(x, p), q_ort)
    np.testing.assert_array_equal(qp.dequantize(q_ort, p), y_ort)
    assert y_ort[0] == 0.0  # zero is exactly representable
    assert p.zero_point.dtype == np.uint8 and p.scale > 0


def test_symmetric_activation_matches_ort():
    x = np.linspace(-4, 4, 1001).astype(np.float32)
    p = qp.activation_params(-2.0, 3.0, symmetric=True)
    assert p.zero_point == 0 and p.zero_point.dtype == np.int8
    assert np.isclose(p.scale, 3.0 / 127)
    q_ort, y_ort = _ort_qdq(x, p)
    np.testing.assert_array_equal(qp.quantize(x, p), q_ort)
    np.testing.assert_array_equal(qp.dequantize(q_ort, p), y_ort)


def test_round_half_to_even_like_ort():
    p = qp.QParams(np.array(1.0, np.float32), np.array(128, np.uint8))
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, -128.5, 127.5], np.float32)
    q_ort, _ = _ort_qdq(x, p)
    np.testing.assert_array_equal(qp.quantize(x, p), q_ort)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_per_channel_weights_match_ort(reduce_range):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32) * rng.uniform(0.01, 10, size=(8, 1, 1, 1)).astype(np.float32)
    w[3] = 0.0  # an all-zero channel must not produce a zero scale
    p = qp.weight_params(w, axis=0, reduce_range=reduce_range)
    assert p.scale.shape == (8,) and np.all(p.scale > 0)
    q = qp.quantize_weight(w, p, reduce_range=reduce_range)
    limit = 63 if reduce_range else 127
    assert q.min() >= -limit and q.max() <= limit
    assert np.abs(q).reshape(8, -1).max(axis=1)[[0, 1, 2, 4]].min() == limit  # each channel uses its full range
    q_ort, y_ort = _ort_qdq(w, p)
    np.testing.assert_array_equal(q, q_ort)
    np.testing.assert_allclose(y_ort, w, atol=float(p.scale.max()) / 2 + 1e-7)


def test_per_tensor_weights():
    w = np.array([[-2.0, 1.0], [0.5, 2.0]], np.float32)
    p = qp.weight_params(w, axis=None)
    assert np.ndim(p.scale) == 0 and np.isclose(p.scale, 2.0 / 127)
    np.testing.assert_array_equal(qp.quantize_weight(w, p), [[-127, 64], [32, 127]])


def test_bias_scale_is_input_times_weight_scale_and_matches_ort():
    w = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    wp = qp.weight_params(w, axis=0)
    bias = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    bp, wp2 = qp.bias_params(bias, 0.02, wp)
    np.testing.assert_allclose(bp.scale, np.float32(0.02) * wp.scale)
    assert bp.zero_point.dtype == np.int32 and wp2 is wp
    qb = qp.quantize_bias(bias, bp)
    y_ort = _ort_dq(qb, bp)  # int32 DequantizeLinear, as the bias input of a QDQ Conv/Gemm
    np.testing.assert_array_equal(qp.dequantize(qb, bp), y_ort)
    np.testing.assert_allclose(y_ort, bias, atol=float(bp.scale.max()))


def test_bias_overflow_raises_weight_scale():
    w = np.full((2, 3), 1e-6, np.float32)
    wp = qp.weight_params(w, axis=0)
    bias = np.array([1e4, 1e-6], np.float32)
    bp, wp2 = qp.bias_params(bias, 1e-4, wp)
    qb = qp.quantize_bias(bias, bp)
    assert np.all(np.abs(qb.astype(np.int64)) < 2**31 - 1)
    assert wp2.scale[0] > wp.scale[0] and wp2.scale[1] == wp.scale[1]
    np.testing.assert_allclose(qb * bp.scale, bias, rtol=1e-5)
