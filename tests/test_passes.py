"""Passes as objects: per-operator weight layout, typed events, the preparation list, and the artifact's record
of the passes calibrate and convert must agree on (format version 2; version 1 still read)."""

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from typer.testing import CliRunner

from models import cnn_data, small_cnn
from quantcli.calibration.artifact import load_artifact
from quantcli.cli.app import app
from quantcli.errors import QuantcliError
from quantcli.transforms.graph import EventKind
from quantcli.transforms.layout import layout
from quantcli.transforms.passes import CLE, PREPARE_NAMES, agreed_passes, prepare

LAYERS = onnx.parser.parse_graph("""
layers (float[1, 8, 6, 6] x, float[4, 3] a) => (float[1, 8, 6, 6] c, float[1, 8, 6, 6] d, float[1, 8, 6, 6] t,
                                                float[4, 5] g, float[4, 5] gt, float[4, 5] m)
<float[8, 8, 3, 3] wc, float[8, 1, 3, 3] wd, float[8, 8, 3, 3] wt, float[3, 5] wg, float[5, 3] wgt, float[3, 5] wm>
{
    c = Conv <pads = [1, 1, 1, 1]> (x, wc)
    d = Conv <pads = [1, 1, 1, 1], group = 8> (x, wd)
    t = ConvTranspose <pads = [1, 1, 1, 1]> (x, wt)
    g = Gemm (a, wg)
    gt = Gemm <transB = 1> (a, wgt)
    m = MatMul (a, wm)
}
""")


@pytest.mark.parametrize("op,out_axis,in_axis,bias", [
    ("c", 0, 1, 2), ("d", 0, 0, 2), ("t", 1, 0, 2), ("g", 1, 0, 2), ("gt", 0, 1, 2), ("m", 1, 0, None)])
def test_layout_axes_per_operator(op, out_axis, in_axis, bias):
    node = next(n for n in LAYERS.node if n.output[0] == op)
    lay = layout(node)
    assert (lay.out_axis, lay.in_axis, lay.bias) == (out_axis, in_axis, bias)
    weight = node.input[lay.weight]
    out_dims = {"c": 8, "d": 8, "t": 8, "g": 5, "gt": 5, "m": 5}
    # the channel count it reports is the length of the layer's output channel dimension
    w_shape = {"wc": (8, 8, 3, 3), "wd": (8, 1, 3, 3), "wt": (8, 8, 3, 3), "wg": (3, 5), "wgt": (5, 3),
               "wm": (3, 5)}[weight]
    assert lay.channels(w_shape) == out_dims[op]


def test_layout_scales_along_the_right_axis():
    gemm_t = next(n for n in LAYERS.node if n.output[0] == "gt")
    w = np.ones((5, 3), np.float32)
    s = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(layout(gemm_t).scale_out(w, s), s[:, None] * w)
    np.testing.assert_array_equal(layout(gemm_t).scale_in(w, np.arange(1, 4, dtype=np.float32)),
                                  w * np.arange(1, 4)[None, :])
    assert layout(onnx.helper.make_node("Relu", ["a"], ["b"])) is None


def test_prepare_runs_the_passes_in_order_with_typed_events():
    prep = prepare(small_cnn(), cle=True)
    assert list(prep.results) == list(PREPARE_NAMES)
    assert [(e.kind, e.node) for e in prep.results["fold-batchnorm"].events] == [(EventKind.FOLDED, "bn1")]
    assert set(prep.data("fold-batchnorm")) == {"conv1"}          # (beta, gamma) of the folded BN's output
    assert all(e.kind in (EventKind.EQUALIZED, EventKind.SKIPPED) for e in prep.results[CLE].events)
    assert prep.agreed == agreed_passes(cle=True)
    assert CLE not in prepare(small_cnn(), cle=False).results
    assert "1 BatchNormalization node(s) folded into the preceding Conv/Gemm" in prep.notes


def test_a_preparation_holds_one_model_not_one_per_pass():
    """Each pass copies the model; the results keep their events and data only (holding each pass's copy cost
    8x the weights: MiniLM's 91 MB held ~0.7 GB through calibrate and convert)."""
    prep = prepare(small_cnn(), cle=True)
    assert all(r.model is None for r in prep.results.values())
    assert prep.model.graph.node and prep.data("fold-batchnorm")


def test_opset_11_model_is_upgraded_with_an_event():
    prep = prepare(small_cnn(opset=11))
    (event,) = prep.results["opset-13"].events
    assert event.kind == EventKind.CHANGED and "opset 11 upgraded to 13" in event.detail
    assert not prepare(small_cnn()).results["opset-13"].events


@pytest.fixture
def calibrated(tmp_path):
    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=cnn_data(16))
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "cnn.onnx"), "--data", str(tmp_path / "calib.npz"),
                                 "-o", str(tmp_path / "c.json"), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path


def test_artifact_records_the_agreed_passes(calibrated):
    doc = json.loads((calibrated / "c.json").read_text())
    assert doc["version"] == 2 and doc["passes"] == agreed_passes(cle=True, smoothquant=True)


def test_version_1_artifact_is_read_and_converts_to_the_same_model(calibrated):
    doc = json.loads((calibrated / "c.json").read_text())
    doc["version"] = 1
    del doc["passes"]
    (calibrated / "v1.json").write_text(json.dumps(doc))
    assert load_artifact(calibrated / "v1.json").passes == agreed_passes(cle=True)
    outs = []
    for name in ("c.json", "v1.json"):
        out = calibrated / f"q-{name}.onnx"
        r = CliRunner().invoke(app, ["convert", str(calibrated / "cnn.onnx"), "--calibration", str(calibrated / name),
                                     "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        m = onnx.load(out)
        del m.metadata_props[:]  # the manifest names the artifact file
        outs.append(m.SerializeToString())
    assert outs[0] == outs[1]


def test_artifact_with_other_passes_is_refused(calibrated):
    doc = json.loads((calibrated / "c.json").read_text())
    doc["passes"] = [p for p in doc["passes"] if p != "fold-bias-add"]
    (calibrated / "other.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(app, ["convert", str(calibrated / "cnn.onnx"), "--calibration",
                                 str(calibrated / "other.json"), "-o", str(calibrated / "q.onnx")])
    assert r.exit_code == 2
    assert "only in convert: fold-bias-add" in r.output and not (calibrated / "q.onnx").exists()


def test_unknown_artifact_version_is_refused(calibrated):
    doc = json.loads((calibrated / "c.json").read_text())
    doc["version"] = 9
    (calibrated / "v9.json").write_text(json.dumps(doc))
    with pytest.raises(QuantcliError, match="version 9 is not supported"):
        load_artifact(calibrated / "v9.json")
