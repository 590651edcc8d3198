"""The three commands end to end through the CLI, on tiny models and on the bundled samples."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from models import small_cnn, small_mlp
from quantcli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_calibrate_convert_compare(cnn):
    r = invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "calib.json")
    assert r.exit_code == 0, r.output
    art = json.loads((cnn / "calib.json").read_text())
    assert art["format"] == "quantcli-calibration" and art["samples"] == 32
    assert art["settings"]["method"] == "minmax"
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "calib.json", "-o", cnn / "q.onnx",
               "--json", cnn / "convert.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((cnn / "convert.json").read_text())
    assert rep["coverage"]["mac_share"] == 1.0
    assert "INT8 MAC coverage" in r.output
    r = invoke("compare", "accuracy", cnn / "cnn.onnx", cnn / "q.onnx", "--data", cnn / "eval.npz",
               "--runs", 20, "--json", cnn / "cmp.json")
    assert r.exit_code == 0, r.output
    cmp = json.loads((cnn / "cmp.json").read_text())
    assert cmp["samples"] == 16 and cmp["top1"] is not None and cmp["outputs"][0]["cosine"] > 0.99


def test_convert_with_data_and_other_method_in_one_step(cnn):
    """--method percentile in convert: the activation scales are the 99.9th-percentile ranges of the same
    statistics (not minmax), and --weights per-tensor gives one scale per weight."""
    from onnx import numpy_helper

    from quantcli.calibration.artifact import load_artifact
    from quantcli.quantize.params import activation_params

    r = invoke("convert", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "q.onnx",
               "--method", "percentile", "--percentile", "99.9", "--weights", "per-tensor")
    assert r.exit_code == 0, r.output
    assert invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "c.json").exit_code == 0
    art = load_artifact(cnn / "c.json")
    q = onnx.load(cnn / "q.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    pct, mm = art.ranges("percentile", 99.9)["x"], art.ranges("minmax")["x"]
    assert pct != mm
    assert float(inits["x_scale"]) == pytest.approx(float(activation_params(*pct).scale), rel=1e-6)
    weight_scales = [inits[n.input[1]] for n in q.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
                     and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8]
    assert weight_scales and all(np.ndim(s) == 0 for s in weight_scales)


def test_same_inputs_give_byte_identical_models(cnn):
    invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "c.json")
    for out in ("a.onnx", "b.onnx"):
        assert invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "c.json", "-o", cnn / out).exit_code == 0
    assert (cnn / "a.onnx").read_bytes() == (cnn / "b.onnx").read_bytes()


def test_max_drop_gates_with_exit_code_1(cnn):
    onnx.save(small_cnn(seed=1), cnn / "other.onnx")  # another network: far below FP32's 100% on these labels
    r = invoke("compare", "accuracy", cnn / "cnn.onnx", cnn / "other.onnx", "--data", cnn / "eval.npz",
               "--max-drop", "0", "--runs", 4)
    assert r.exit_code == 1 and "FAIL" in r.output


def test_dynamic_and_fp16(tmp_path):
    onnx.save(small_mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(8, 5, 32)).astype(np.float32))
    r = invoke("convert", tmp_path / "mlp.onnx", "--mode", "dynamic", "-o", tmp_path / "dyn.onnx")
    assert r.exit_code == 0, r.output
    r = invoke("convert", tmp_path / "mlp.onnx", "--precision", "fp16", "-o", tmp_path / "h.onnx")
    assert r.exit_code == 0, r.output
    r = invoke("compare", "accuracy", tmp_path / "mlp.onnx", tmp_path / "h.onnx", "--data", tmp_path / "d.npz",
               "--runs", 4)
    assert r.exit_code == 0, r.output
    assert "agreement" in r.output


def test_recipe_drives_commands_and_flags_override(cnn):
    recipe = cnn / "r.toml"
    recipe.write_text(f'[calibrate]\ndata = "{cnn / "calib.npz"}"\nmethod = "entropy"\n'
                      '[convert]\nweights = "per-tensor"\n')
    r = invoke("calibrate", cnn / "cnn.onnx", "-o", cnn / "c.json", "--recipe", recipe, "--method", "mse")
    assert r.exit_code == 0, r.output
    assert json.loads((cnn / "c.json").read_text())["settings"]["method"] == "mse"
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "c.json", "-o", cnn / "q.onnx",
               "--recipe", recipe, "--json", cnn / "rep.json")
    assert r.exit_code == 0, r.output
    assert json.loads((cnn / "rep.json").read_text())["settings"]["weights"] == "per-tensor"


# -- bad input: one clear line, exit 2, nothing written ---------------------------------------------------
def _bad(args, message, out: Path | None = None):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.*"))  # no temp file left behind


def test_bad_inputs(cnn):
    model, calib = cnn / "cnn.onnx", cnn / "calib.npz"
    _bad(["calibrate", cnn / "missing.onnx", "--data", calib, "-o", cnn / "c.json"], "no such file", cnn / "c.json")
    (cnn / "junk.onnx").write_bytes(b"\x00garbage\xff" * 10)
    _bad(["calibrate", cnn / "junk.onnx", "--data", calib, "-o", cnn / "c.json"], "not a valid ONNX model")
    np.savez(cnn / "wrong.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    _bad(["calibrate", model, "--data", cnn / "wrong.npz", "-o", cnn / "c.json"], "axis 2: 8 != 16", cnn / "c.json")
    np.savez(cnn / "empty.npz", x=np.zeros((0, 3, 16, 16), np.float32))
    _bad(["convert", model, "--data", cnn / "empty.npz", "-o", cnn / "q.onnx"], "empty", cnn / "q.onnx")
    _bad(["convert", model, "--data", calib, "-o", cnn / "nodir" / "q.onnx"], "does not exist")
    _bad(["convert", model, "--data", calib, "-o", model], "same file as the model input")
    _bad(["convert", model, "-o", cnn / "q.onnx"], "needs ranges", cnn / "q.onnx")


def test_failing_checker_model(cnn):
    m = small_cnn()
    m.graph.node[0].input[1] = "does_not_exist"
    onnx.save(m, cnn / "broken.onnx")
    _bad(["convert", cnn / "broken.onnx", "--data", cnn / "calib.npz", "-o", cnn / "q.onnx"],
         "fails the ONNX checker", cnn / "q.onnx")


def test_calibration_for_another_model_is_refused(cnn):
    invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "c.json")
    onnx.save(small_cnn(seed=5), cnn / "other.onnx")
    _bad(["convert", cnn / "other.onnx", "--calibration", cnn / "c.json", "-o", cnn / "q.onnx"],
         "made for another model", cnn / "q.onnx")


def test_unwritable_output_folder(cnn):
    import os

    ro = cnn / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        _bad(["convert", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", ro / "q.onnx"], "not writable")
    finally:
        ro.chmod(0o700)


def test_run_gates_on_accept_criteria_and_writes_reports(cnn):
    recipe = cnn / "run.toml"
    base = (f'[run]\nmodel = "{cnn / "cnn.onnx"}"\noutput = "{cnn / "q.onnx"}"\n'
            f'[calibrate]\ndata = "{cnn / "calib.npz"}"\n[compare]\ndata = "{cnn / "eval.npz"}"\nruns = 10\n')
    recipe.write_text(base + "[accept]\nmax_drop = 100\nmin_int8_coverage = 95\nmax_size_mb = 10\n")
    r = invoke("run", recipe, "--junit", cnn / "j.xml", "--markdown", cnn / "s.md", "--json", cnn / "r.json")
    assert r.exit_code == 0, r.output
    assert (cnn / "q.onnx").exists() and (cnn / "q.onnx.calib.json").exists()
    import xml.etree.ElementTree as ET

    suite = ET.parse(cnn / "j.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    assert "all criteria hold" in (cnn / "s.md").read_text()
    assert json.loads((cnn / "r.json").read_text())["passed"] is True
    recipe.write_text(base + "[accept]\nmax_size_mb = 0.0001\n")
    r = invoke("run", recipe, "--junit", cnn / "j.xml")
    assert r.exit_code == 1 and "FAIL" in r.output
    suite = ET.parse(cnn / "j.xml").getroot()
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None


def test_run_without_model_is_a_usage_error(cnn):
    (cnn / "r.toml").write_text("[accept]\nmax_drop = 1\n")
    r = invoke("run", cnn / "r.toml")
    assert r.exit_code == 2 and "[run] model is not set" in r.output


def test_inspect_and_min_coverage_gates(cnn):
    r = invoke("inspect", cnn / "cnn.onnx", "--min-int8-coverage", 50)
    assert r.exit_code == 1 and "0.0% of" in r.output
    r = invoke("convert", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "q.onnx",
               "--min-int8-coverage", 95)
    assert r.exit_code == 0, r.output
    r = invoke("inspect", cnn / "q.onnx", "--min-int8-coverage", 95, "--json", cnn / "i.json")
    assert r.exit_code == 0 and json.loads((cnn / "i.json").read_text())["coverage"]["mac_share"] == 1.0
    r = invoke("convert", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "q2.onnx", "--exclude", "Conv",
               "--min-int8-coverage", 95)
    assert r.exit_code == 1 and (cnn / "q2.onnx").exists()


def test_symmetric_activations_need_a_matching_calibration(cnn):
    invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "c.json")
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "c.json", "-o", cnn / "q.onnx",
               "--activations", "symmetric")
    assert r.exit_code == 2 and "re-run quantcli calibrate with --activations symmetric" in r.output
    invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "s.json",
           "--activations", "symmetric")
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "s.json", "-o", cnn / "q.onnx",
               "--activations", "symmetric", "--exclude", "Conv")
    assert r.exit_code == 0, r.output


def test_cle_must_match_between_calibrate_and_convert(cnn):
    invoke("calibrate", cnn / "cnn.onnx", "--data", cnn / "calib.npz", "-o", cnn / "c.json", "--no-cle")
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "c.json", "-o", cnn / "q.onnx")
    assert r.exit_code == 2 and "run calibrate and convert with the same --cle" in r.output
    r = invoke("convert", cnn / "cnn.onnx", "--calibration", cnn / "c.json", "-o", cnn / "q.onnx", "--no-cle",
               "--bias-correction", "analytic", "--json", cnn / "r.json")
    assert r.exit_code == 0, r.output
    assert any("analytic" in t for t in json.loads((cnn / "r.json").read_text())["transforms"])


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("quantcli ")
    r = invoke()
    assert r.exit_code == 0 and "calibrate" in r.output and "convert" in r.output


def test_inspect_counts_dynamic_int8_matmuls(tmp_path):
    """A dynamic INT8 model's MatMulInteger nodes are integer kernels: inspect said 0.0% (the MACs were keyed by
    the quantized node's own name, looked up by the float node's)."""
    onnx.save(small_mlp(), tmp_path / "mlp.onnx")
    r = invoke("convert", tmp_path / "mlp.onnx", "--mode", "dynamic", "-o", tmp_path / "d.onnx")
    assert r.exit_code == 0, r.output
    r = invoke("inspect", tmp_path / "d.onnx", "--min-int8-coverage", 99, "--json", tmp_path / "i.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "i.json").read_text())["coverage"]["mac_share"] == 1.0
