"""Bad input, determinism and interruption: one clear line, the documented exit code, nothing half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from models import cnn_data, small_cnn
from quantcli.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def work(tmp_path):
    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=cnn_data(24))
    np.savez(tmp_path / "eval.npz", x=cnn_data(16, seed=3), labels=np.arange(16) % 10)
    return tmp_path


def _expect(args, code, message, leftovers_in: Path | None = None):
    r = invoke(*args)
    assert r.exit_code == code, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    if leftovers_in is not None:
        assert not [p for p in leftovers_in.iterdir() if p.name.endswith(".tmp")]
    return r


def test_truncated_model(work):
    data = (work / "cnn.onnx").read_bytes()
    (work / "cut.onnx").write_bytes(data[: len(data) // 2])
    _expect(["convert", work / "cut.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx"], 2,
            "not a valid ONNX model", work)
    assert not (work / "q.onnx").exists()


@pytest.mark.parametrize("opset,message", [(9, "opset 9 is too old"), (40, "opset 40 is newer")])
def test_unsupported_opset(work, opset, message):
    m = small_cnn()
    m.opset_import[0].version = opset
    onnx.save(m, work / "m.onnx")
    _expect(["calibrate", work / "m.onnx", "--data", work / "calib.npz", "-o", work / "c.json"], 2, message, work)


def test_custom_domain_op(work):
    m = small_cnn()
    m.graph.node[2].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(m, work / "m.onnx")
    _expect(["convert", work / "m.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx"], 2,
            "custom op 'Relu' of domain 'com.example'", work)


def test_missing_external_data(work):
    m = small_cnn()
    onnx.save(m, work / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    (work / "ext.weights").unlink()
    _expect(["convert", work / "ext.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx"], 2,
            "external data file 'ext.weights'", work)


def test_model_with_external_data_converts(work):
    onnx.save(small_cnn(), work / "ext.onnx", save_as_external_data=True, location="ext.weights", size_threshold=0)
    r = invoke("convert", work / "ext.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx")
    assert r.exit_code == 0, r.output


def test_nan_in_calibration_data(work):
    x = cnn_data(8)
    x[3, 0, 0, 0] = np.nan
    np.savez(work / "nan.npz", x=x)
    _expect(["calibrate", work / "cnn.onnx", "--data", work / "nan.npz", "-o", work / "c.json"], 2,
            "contains 1 NaN/Inf value(s)", work)
    assert not (work / "c.json").exists()


def test_zero_variance_tensors(work):
    """An all-zero weight channel and a constant (all-zero) activation channel still give a valid model."""
    m = small_cnn()
    for t in m.graph.initializer:
        if t.name == "w3":
            w = numpy_helper.to_array(t).copy()
            w[2] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, "w3"))
    onnx.save(m, work / "z.onnx")
    np.savez(work / "zeros.npz", x=np.zeros((8, 3, 16, 16), np.float32))
    r = invoke("convert", work / "z.onnx", "--data", work / "zeros.npz", "-o", work / "q.onnx")
    assert r.exit_code == 0, r.output
    q = onnx.load(work / "q.onnx")
    scales = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_scale")]
    assert all(np.all(s > 0) and np.all(np.isfinite(s)) for s in scales)


def test_labels_of_wrong_length(work):
    np.save(work / "labels.npy", np.zeros(5, np.int64))
    invoke("convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx")
    _expect(["compare", "accuracy", work / "cnn.onnx", work / "q.onnx", "--data", work / "eval.npz",
             "--labels", work / "labels.npy"], 2, "5 labels for 16 samples")


def test_bad_recipe_on_every_command(work):
    (work / "r.toml").write_text('[convert]\nprecison = "int8"\n')
    for args in (["calibrate", work / "cnn.onnx", "-o", work / "c.json"],
                 ["convert", work / "cnn.onnx", "-o", work / "q.onnx"],
                 ["compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx"],
                 ["run"]):
        _expect(args + ["--recipe" if args[0] != "run" else "", work / "r.toml"] if args[0] != "run"
                else ["run", work / "r.toml"], 2, "unknown key 'precison'")


def test_output_parent_is_a_file(work):
    _expect(["convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "calib.npz" / "q.onnx"], 2,
            "is not a folder")


def test_inputs_are_never_modified(work):
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    invoke("calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "c.json")
    invoke("convert", work / "cnn.onnx", "--calibration", work / "c.json", "-o", work / "q.onnx")
    invoke("compare", "accuracy", work / "cnn.onnx", work / "q.onnx", "--data", work / "eval.npz", "--runs", 4)
    for name, data in before.items():
        assert (work / name).read_bytes() == data


def test_deterministic_outputs_and_reports(work):
    outs = []
    for k in range(2):
        invoke("calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / f"c{k}.json",
               "--method", "entropy")
        invoke("convert", work / "cnn.onnx", "--calibration", work / f"c{k}.json", "-o", work / f"q{k}.onnx",
               "--json", work / f"r{k}.json")
        rep = json.loads((work / f"r{k}.json").read_text())
        rep.pop("seconds")
        rep["output"] = rep["output"].replace(f"q{k}", "q")
        rep["manifest"]["settings"]["calibration"] = None
        outs.append(((work / f"c{k}.json").read_bytes(), (work / f"q{k}.onnx").read_bytes(), rep))
    assert outs[0][0].replace(b"c0.json", b"") == outs[1][0].replace(b"c1.json", b"")
    a, b = onnx.load_from_string(outs[0][1]), onnx.load_from_string(outs[1][1])
    for m in (a, b):  # the manifest names the calibration file, which differs by name only
        del m.metadata_props[:]
    assert a.SerializeToString() == b.SerializeToString()
    assert outs[0][2] == outs[1][2]


def test_manifest_in_outputs(work):
    invoke("convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx")
    props = {p.key: p.value for p in onnx.load(work / "q.onnx").metadata_props}
    man = json.loads(props["quantcli.manifest"])
    assert man["input_model"]["sha256"] and man["versions"]["onnxruntime"] and "flags" in man["cpu"]
    assert man["settings"]["convert"]["weights"] == "auto" and man["seed"] == 0


@pytest.mark.parametrize("delay", [0.4, 1.2, 2.5])  # while the libraries load, while Typer parses, mid-run
def test_sigterm_leaves_no_partial_file(work, delay):
    """Kill a long calibration at any moment: exit 130, a clear message, no traceback, no output, no temp file."""
    np.savez(work / "big.npz", x=np.random.default_rng(0).normal(size=(20000, 3, 16, 16)).astype(np.float32))
    env = dict(os.environ, CI="1")
    proc = subprocess.Popen([sys.executable, "-m", "quantcli", "calibrate", str(work / "cnn.onnx"), "--data",
                             str(work / "big.npz"), "--batch-size", "1", "-o", str(work / "c.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("calibration finished before the signal on this machine")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (work / "c.json").exists()
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_latency_ratio_pairs_blocks_of_the_same_round():
    """A slow spell in one round (round 2 here: both sides x3) does not move the paired ratio; the ratio of
    overall medians would see one side's slow blocks only if the spell hit it alone."""
    from quantcli.runtime.bench import Latency

    base = Latency(1.0, 1.0, 40, [1.0, 1.0, 3.0, 1.0])
    quant = Latency(1.2, 1.2, 40, [1.2, 1.2, 3.6, 1.2])
    assert quant.ratio_to(base) == pytest.approx(1.2)
    assert Latency(2.0, 2.0, 1).ratio_to(Latency(1.0, 1.0, 1)) == 2.0  # no blocks recorded: overall medians
