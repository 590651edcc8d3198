"""SmoothQuant: the migration scales, where 1/s is folded (LayerNorm, decomposed LayerNorm, bias Add after a
MatMul, explicit Mul), FP32 equality checked with real ONNX Runtime sessions, the per-layer search and auto's rule,
the row sample of the statistics pass, and calibrate / convert agreeing on --smoothquant."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from models import _init, _model
from quantcli.calibration.requests import ChannelObserver, Stat, StatRequest
from quantcli.cli.app import app
from quantcli.transforms import smoothquant as sq
from quantcli.transforms.graph import EventKind
from quantcli.transforms.passes import SMOOTHQUANT, SMOOTHQUANT_PASS, PassContext, prepare
from quantcli.quantize.qdq import QDQOptions

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
# FP32 equality: the smoothed graph computes X/s and diag(s) W in float32, so outputs differ from the original by
# rounding only; 1e-5 relative to the output's largest value (observed: a few 1e-7)
RTOL = 1e-5


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> None:
    for x, y in zip(_run(a, feeds), _run(b, feeds)):
        assert np.max(np.abs(x - y)) <= RTOL * np.max(np.abs(x)), np.max(np.abs(x - y))


def _outlier_input(n: int = 64, c: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 5, c)).astype(np.float32)
    x[..., 3] *= 40.0  # one systematic outlier channel, as transformers have
    return x


def _producer_model(kind: str, c: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x -> (LayerNormalization | Mul+Add | MatMul+Add | LayerNormalization feeding a residual too) -> two MatMuls."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(size=(c, 8))), _init("w2", rng.normal(size=(c, 8)))]
    head = {
        "ln": [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1)],
        "decomposed": [helper.make_node("Mul", ["x", "gamma"], ["xg"], name="ln/mul"),
                       helper.make_node("Add", ["xg", "beta"], ["h"], name="ln/add")],
        "bias-add": [helper.make_node("MatMul", ["x", "w0"], ["x0"], name="fc0"),
                     helper.make_node("Add", ["x0", "beta"], ["h"], name="fc0/bias")],
        "residual": [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1)],
    }[kind]
    inits += [_init("gamma", rng.uniform(0.5, 2, c)), _init("beta", rng.normal(size=c)),
              _init("w0", rng.normal(size=(c, c)))]
    outs = ["y1", "y2"] + (["h"] if kind == "residual" else [])
    nodes = head + [helper.make_node("MatMul", ["h", "w1"], ["y1"], name="fc1"),
                    helper.make_node("MatMul", ["h", "w2"], ["y2"], name="fc2")]
    used = {i for n in nodes for i in n.input}
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, c])],
                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 5, c if o == "h" else 8]) for o in outs],
                  [t for t in inits if t.name in used])


@pytest.mark.parametrize("kind,folded_into", [("ln", "ln"), ("decomposed", "ln/add"), ("bias-add", "fc0/bias"),
                                               ("residual", None)])
def test_scales_fold_where_the_graph_allows_and_fp32_is_unchanged(kind, folded_into):
    model = _producer_model(kind)
    groups, _ = sq.find_groups(model)
    (group,) = [g for g in groups if g.tensor == "h"]
    assert [n.name for n in group.layers] == ["fc1", "fc2"]
    assert (group.producer or None) == folded_into
    s = np.random.default_rng(1).uniform(0.05, 20, 16)
    smoothed = sq.apply_scales(model, {"h": s})
    ops = [n.op_type for n in smoothed.graph.node]
    assert ops.count("Mul") == [n.op_type for n in model.graph.node].count("Mul") + (folded_into is None)
    _assert_same(model, smoothed, {"x": _outlier_input()})


def test_migration_scales_follow_the_formula():
    act, w = np.array([8.0, 1.0, 0.0, 2.0]), np.array([0.5, 2.0, 1.0, 0.0])
    s = sq.migration_scales(act, w, 0.5)
    np.testing.assert_allclose(s, [np.sqrt(8 / 0.5), np.sqrt(1 / 2.0), 1.0, 1.0])
    np.testing.assert_allclose(sq.migration_scales(act, w, 1.0)[:2], [8.0, 1.0])


def test_search_prefers_smoothing_an_outlier_channel_and_auto_states_its_rule():
    x = _outlier_input().reshape(-1, 16)
    w = [np.random.default_rng(2).normal(size=(16, 8))]
    lo, hi = x.min(axis=0), x.max(axis=0)
    choice = sq.search(x, lo, hi, w)
    assert choice.alpha in sq.ALPHAS and choice.errors[choice.alpha] < 0.5 * choice.errors[None]
    assert sq.decide(choice, folded=False, mode="auto").alpha == choice.alpha
    flat = np.random.default_rng(3).normal(size=(320, 16)).astype(np.float32)  # no outliers: nothing to gain
    plain = sq.search(flat, flat.min(axis=0), flat.max(axis=0), w)
    kept = sq.decide(plain, folded=False, mode="auto")
    if plain.errors[plain.alpha] > sq.KEEP_MUL * plain.errors[None]:
        assert kept.alpha is None and np.all(kept.scales == 1)
    assert sq.decide(plain, folded=False, mode="on").alpha == plain.alpha


def test_row_sample_is_strided_bounded_and_deterministic():
    obs = ChannelObserver(StatRequest("t", Stat.ROWS, axis=-1, limit=8))
    data = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    for i in range(0, 100, 7):
        obs.update(data[i:i + 7])
    rows = obs.result()
    assert 8 <= len(rows) < 16
    np.testing.assert_array_equal(rows, data[::obs.step][:len(rows)])


def test_pass_on_the_transformer_sample_is_fp32_equal_and_reports_each_layer():
    model = onnx.load(SAMPLES / "tiny_transformer.onnx")
    with np.load(SAMPLES / "tiny_transformer-calib.npz") as z:
        feeds = {k: z[k] for k in z.files if k != "labels"}
    prep = prepare(model, cle=True)
    batches = [{k: v[i:i + 16] for k, v in feeds.items()} for i in range(0, 64, 16)]
    ctx = PassContext(qdq=QDQOptions(), batches=lambda: batches, smoothquant="on")
    smoothed = prep.then(SMOOTHQUANT_PASS, ctx)
    events = smoothed.results[SMOOTHQUANT].events
    assert len([e for e in events if e.kind == EventKind.SMOOTHED]) == 9
    assert all("alpha" in e.detail for e in events)
    _assert_same(prep.model, smoothed.model, {k: v[:32] for k, v in feeds.items()})
    again = prep.then(SMOOTHQUANT_PASS, PassContext(recorded={SMOOTHQUANT: smoothed.data(SMOOTHQUANT)}))
    assert again.model.SerializeToString() == smoothed.model.SerializeToString()


def test_calibrate_and_convert_must_agree_and_the_artifact_replays(tmp_path):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    model, data = SAMPLES / "tiny_transformer.onnx", SAMPLES / "tiny_transformer-calib.npz"
    r = invoke("calibrate", model, "--data", data, "--samples", 32, "-o", tmp_path / "c.json", "--smoothquant", "on")
    assert r.exit_code == 0, r.output
    art = json.loads((tmp_path / "c.json").read_text())
    assert art["passes"][-1] == SMOOTHQUANT and art["pass_data"][SMOOTHQUANT]["groups"]
    r = invoke("convert", model, "--calibration", tmp_path / "c.json", "-o", tmp_path / "x.onnx", "--smoothquant",
               "off")
    assert r.exit_code == 2 and "calibrated with SmoothQuant on" in r.output and not (tmp_path / "x.onnx").exists()
    for out in ("a.onnx", "b.onnx"):
        r = invoke("convert", model, "--calibration", tmp_path / "c.json", "-o", tmp_path / out, "--smoothquant", "on",
                   "--json", tmp_path / f"{out}.json")
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    lines = json.loads((tmp_path / "a.onnx.json").read_text())["transforms"]
    assert sum("smoothed, alpha" in line for line in lines) == 9


def test_damaged_scales_in_the_artifact_are_a_clear_error(tmp_path):
    runner = CliRunner()
    model, data = SAMPLES / "tiny_transformer.onnx", SAMPLES / "tiny_transformer-calib.npz"
    r = runner.invoke(app, [str(a) for a in ("calibrate", model, "--data", data, "--samples", 16, "-o",
                                             tmp_path / "c.json", "--smoothquant", "on")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c.json").read_text())
    group = next(iter(doc["pass_data"][SMOOTHQUANT]["groups"].values()))
    group["scales"] = group["scales"][:-1] + [-1.0]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    r = runner.invoke(app, [str(a) for a in ("convert", model, "--calibration", tmp_path / "c.json", "-o",
                                             tmp_path / "q.onnx", "--smoothquant", "on")])
    assert r.exit_code == 2 and "SmoothQuant scales do not fit" in r.output, r.output
    assert not (tmp_path / "q.onnx").exists()


def test_recipe_key_turns_it_off_for_calibrate_and_convert(tmp_path):
    runner = CliRunner()
    model, data = SAMPLES / "tiny_transformer.onnx", SAMPLES / "tiny_transformer-calib.npz"
    (tmp_path / "r.toml").write_text('[convert]\nsmoothquant = "off"\n')
    r = runner.invoke(app, [str(a) for a in ("calibrate", model, "--data", data, "--samples", 16, "-o",
                                             tmp_path / "c.json", "--recipe", tmp_path / "r.toml")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert SMOOTHQUANT not in doc["passes"] and "pass_data" not in doc
    r = runner.invoke(app, [str(a) for a in ("convert", model, "--calibration", tmp_path / "c.json", "-o",
                                             tmp_path / "q.onnx", "--smoothquant", "on")])
    assert r.exit_code == 2 and "calibrated with SmoothQuant off" in r.output, r.output
    r = runner.invoke(app, [str(a) for a in ("convert", model, "--calibration", tmp_path / "c.json", "-o",
                                             tmp_path / "q.onnx", "--json", tmp_path / "q.json")])
    assert r.exit_code == 0, r.output  # auto follows an artifact made without it, and says so
    assert any("SmoothQuant (auto) not applied" in n for n in json.loads((tmp_path / "q.json").read_text())["notes"])


def test_calibrate_twice_records_the_same_scales(tmp_path):
    runner = CliRunner()
    model, data = SAMPLES / "tiny_transformer.onnx", SAMPLES / "tiny_transformer-calib.npz"
    docs = []
    for name in ("a.json", "b.json"):
        r = runner.invoke(app, [str(a) for a in ("calibrate", model, "--data", data, "--samples", 32, "-o",
                                                 tmp_path / name, "--smoothquant", "on")])
        assert r.exit_code == 0, r.output
        docs.append(json.loads((tmp_path / name).read_text())["pass_data"])
    assert docs[0] == docs[1]
