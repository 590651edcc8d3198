"""Issue #12 ("Trust, round two"), one section per class, through the CLI: the exit code, the one-line message,
every input byte-identical afterwards and no stray file."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from models import cnn_data, predicted_labels, small_cnn
from quantcli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture
def work(cnn):
    return cnn


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: (p.read_bytes() if p.is_file() else b"") for p in folder.iterdir()}


def expect(work: Path, args, code: int, message: str, new: tuple[str, ...] = (), env=None):
    """Run, check the exit code and message (one line for errors), that every file that was there is unchanged
    and that nothing but ``new`` appeared."""
    before = files(work)
    r = invoke(*args, env=env)
    assert r.exit_code == code, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    if code in (2, 3):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    after = files(work)
    for name, data in before.items():
        assert after.get(name) == data, f"{name} changed"
    assert set(after) - set(before) == set(new), sorted(set(after) - set(before))
    return r


def recipe(work: Path, extra: str = "", name: str = "r.toml", **paths) -> Path:
    p = work / name
    p.write_text(f'[run]\nmodel = "{work / "cnn.onnx"}"\noutput = "{paths.get("output", work / "q.onnx")}"\n'
                 f'[calibrate]\ndata = "{paths.get("calib", work / "calib.npz")}"\n'
                 f'[compare]\ndata = "{paths.get("eval", work / "eval.npz")}"\nruns = 4\nwarmup = 1\n' + extra)
    return p


# -- 1. no output is ever an input (by path, hard link or symlink) ----------------------------------------------
def test_every_output_differs_from_every_input(work):
    w, m, c, e = work, work / "cnn.onnx", work / "calib.npz", work / "eval.npz"
    os.link(m, w / "hard.onnx")
    os.symlink(c, w / "soft.npz")
    assert invoke("calibrate", m, "--data", c, "-o", w / "c.json").exit_code == 0
    cases = [
        (["convert", m, "--data", c, "-o", w / "q.onnx", "--json", m], "--json output is the same file as the model"),
        (["convert", m, "--data", c, "-o", c], "-o output is the same file as the data input"),
        (["convert", m, "--data", c, "-o", w / "hard.onnx"], "same file as the model input"),
        (["convert", m, "--data", c, "-o", w / "q.onnx", "--json", w / "soft.npz"], "same file as the data input"),
        (["convert", m, "--calibration", w / "c.json", "-o", w / "q.onnx", "--recipe-out", w / "c.json"],
         "same file as the calibration input"),
        (["calibrate", m, "--data", c, "-o", w / "x.json", "--json", w / "x.json"], "same file as the -o output"),
        (["compare", "accuracy", m, m, "--data", e, "--markdown", e], "same file as the data input"),
        (["compare", "accuracy", m, m, "--data", e, "--junit", w / "hard.onnx"], "same file as the FP32 model"),
        (["convert", m, "--calibration", w / "c.json", "-o", c], "same file as the calibration data input"),
        (["convert", m, "--data", c, "-o", "-"], "-o -: only a report (--json, --junit, --markdown) can go to stdout"),
        (["run", recipe(w), "--json", w / "r.toml"], "same file as the recipe input"),
        (["run", recipe(w, name="r2.toml", output=c)], "same file as the calibration data input"),
    ]
    for args, message in cases:
        expect(w, args, 2, message)


# -- 2. devices, FIFOs and symlinks are written through, never replaced; --json -; the umask's mode ---------------
def test_outputs_that_are_not_regular_files(work):
    w = work
    r = expect(w, ["convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / "q.onnx", "--json", "/dev/null"],
               0, "wrote", new=("q.onnx",))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    os.symlink("target.json", w / "link.json")  # dangling: written through, the link stays a link
    assert invoke("convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / "q2.onnx",
                  "--json", w / "link.json").exit_code == 0
    assert (w / "link.json").is_symlink() and json.loads((w / "target.json").read_text())["output"]
    os.mkfifo(w / "fifo")
    reader = subprocess.Popen(["cat", str(w / "fifo")], stdout=subprocess.PIPE)
    assert invoke("inspect", w / "q.onnx", "--json", w / "fifo").exit_code == 0
    assert json.loads(reader.communicate(timeout=30)[0])["model"].endswith("q.onnx")
    assert stat.S_ISFIFO(os.lstat(w / "fifo").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(w / "q.onnx").st_mode) == 0o666 & ~umask
    r = invoke("inspect", w / "q.onnx", "--json", "-")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"].endswith("q.onnx")  # stdout holds the JSON alone
    assert "integer" in r.stderr or "INT8" in r.stderr  # the table went to stderr
    if hasattr(os, "mknod") and os.geteuid() == 0:  # a socket is neither written through nor replaced
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(w / "sock"))
        expect(w, ["inspect", w / "q.onnx", "--json", w / "sock"], 2, "not a regular file")
        s.close()


# -- 3. no silent wrong model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5", "150", "nan", "inf"])
def test_percentile_out_of_range_flag_and_recipe(work, value):
    expect(work, ["calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "c.json",
                  "--method", "percentile", "--percentile", value], 2, "--percentile")
    (work / "p.toml").write_text(f"[calibrate]\nmethod = 'percentile'\npercentile = {value}\n")
    expect(work, ["calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "c.json",
                  "--recipe", work / "p.toml"], 2, "[calibrate] percentile")


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(min=5.0, max=1.0), "min 5 > max 1"),
    (lambda s: s.update(width=0.0), "histogram width 0 <= 0"),
    (lambda s: s.update(width=-1.0), "histogram width -1 <= 0"),
    (lambda s: s.update(count=-3), "negative counts"),
    (lambda s: s.update(max=float("nan")), "max not finite"),
    (lambda s: s.update(bins=0), "calibration file is damaged"),
])
def test_damaged_artifact_is_refused_naming_the_file(work, edit, message):
    assert invoke("calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "c.json").exit_code == 0
    doc = json.loads((work / "c.json").read_text())
    edit(next(iter(doc["tensors"].values()))["stats"])
    (work / "c.json").write_text(json.dumps(doc))
    r = expect(work, ["convert", work / "cnn.onnx", "--calibration", work / "c.json", "-o", work / "q.onnx"], 2,
               message)
    assert f"{work / 'c.json'}:" in r.output
    doc["settings"]["percentile"] = -1  # settings too
    (work / "c.json").write_text(json.dumps(doc))
    expect(work, ["convert", work / "cnn.onnx", "--calibration", work / "c.json", "-o", work / "q.onnx"], 2,
           "c.json: calibration file is damaged")


def test_float64_beyond_float32_range_is_caught_after_the_cast(work):
    x = cnn_data(8).astype(np.float64)
    x[2, 0, 0, 0] = 1e300
    np.savez(work / "big.npz", x=x)
    expect(work, ["calibrate", work / "cnn.onnx", "--data", work / "big.npz", "-o", work / "c.json"], 2,
           "1 NaN/Inf value(s) as float32 (1 beyond float32's range)")


def test_collapsed_model_is_not_written(tmp_path):
    """Per-tensor weights on depthwise layers with 100x spread channel ranges, without the recoveries: the model
    agrees with FP32 on nothing (17% top-1); the post-write check refuses it (exit 3), not only NaN/shape changes."""
    samples = ROOT / "sample_models"
    expect(tmp_path, ["convert", samples / "mobile_digits.onnx", "--data", samples / "mobile_digits-calib.npz",
                      "--weights", "per-tensor", "--no-cle", "--bias-correction", "off", "-o", tmp_path / "q.onnx"],
           3, "collapsed on the check sample (cosine ")


# -- 4. no false PASS -------------------------------------------------------------------------------------------
def test_labels_out_of_range_or_negative(work):
    x = cnn_data(8, seed=5)
    for labels, message in ((np.full(8, 10), "label 10 is out of range for a model with 10 classes"),
                            (np.full(8, -1), "labels must be class ids >= 0, found -1")):
        np.save(work / "labels.npy", labels)
        np.savez(work / "ev.npz", x=x)
        expect(work, ["compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx", "--data", work / "ev.npz",
                      "--labels", work / "labels.npy", "--max-drop", "1", "--runs", 2], 2,
               f"{work / 'labels.npy'}: {message}")


def test_gate_on_a_degenerate_reference_is_an_error(work):
    x = cnn_data(20, seed=6)
    wrong = (predicted_labels(small_cnn(), x) + 1) % 10  # FP32 is 0% right on these
    np.savez(work / "ev.npz", x=x, labels=wrong)
    expect(work, ["compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx", "--data", work / "ev.npz",
                  "--max-drop", "1", "--runs", 2], 2, "at or below chance")
    r = invoke("compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx", "--data", work / "ev.npz", "--runs", 2)
    assert r.exit_code == 0  # without a gate, the numbers are just shown
    expect(work, ["run", recipe(work, "[accept]\nmax_drop = 1\n", eval=work / "ev.npz")], 2, "at or below chance")
    expect(work, ["convert", work / "cnn.onnx", "--data", work / "calib.npz", "--eval-data", work / "ev.npz",
                  "--max-drop", "1", "-o", work / "q2.onnx"], 2, "convert --max-drop: FP32 top-1 accuracy is 0.00%")
    np.savez(work / "ev_big.npz", x=x, labels=np.full(20, 11))  # analyze's evaluator checks labels too
    expect(work, ["analyze", work / "cnn.onnx", "--data", work / "calib.npz", "--eval-data", work / "ev_big.npz"], 2,
           "label 11 is out of range for a model with 10 classes")


# -- 5. user mistakes are exit 2, never "please report it" -------------------------------------------------------
def test_user_mistakes_are_usage_errors(work):
    w = work
    np.savez(w / "zero_d.npz", x=cnn_data(4), labels=np.array(3))
    expect(w, ["compare", "accuracy", w / "cnn.onnx", w / "cnn.onnx", "--data", w / "zero_d.npz"], 2,
           "labels must be a 1-D integer array")
    onnx.save(small_cnn(batch=8), w / "b8.onnx")
    np.savez(w / "four.npz", x=cnn_data(4))
    expect(w, ["compare", "accuracy", w / "b8.onnx", w / "b8.onnx", "--data", w / "four.npz"], 2,
           "4 sample(s), fewer than the model's fixed batch size 8")
    (w / "bins.toml").write_text("[calibrate]\nbins = 0\n")
    expect(w, ["calibrate", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / "c.json", "--recipe",
               w / "bins.toml"], 2, "[calibrate] bins: 0 is out of range")
    (w / "folder.toml").mkdir()
    expect(w, ["convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / "q.onnx", "--recipe",
               w / "folder.toml"], 2, "folder.toml: is a folder, expected a TOML recipe file")
    expect(w, ["convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / "q.onnx", "--json", "/dev/full"], 2,
           "/dev/full: no space left on the device (the disk is full", new=("q.onnx",))
    long = "m" * 300 + ".onnx"
    expect(w, ["convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / long], 2, "file name too long")
    ok = "m" * 250 + ".onnx"  # fits NAME_MAX; its temporary name is shortened to fit too
    expect(w, ["convert", w / "cnn.onnx", "--data", w / "calib.npz", "-o", w / ok], 0, "wrote", new=(ok,))


def test_full_disk_is_named_and_leaves_nothing(work):
    """A real full file system (a 4 kB tmpfs, where mounting is allowed): the atomic write fails cleanly."""
    full = work / "full"
    full.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        r = invoke("convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", full / "q.onnx")
        assert r.exit_code == 2, r.output
        assert r.stderr.strip() == (f"quantcli: error: {full / 'q.onnx'}: no space left on the device (the disk is "
                                    "full, not a problem with the inputs); free some space and run again; nothing "
                                    "was written")
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_stdout_on_a_full_device_is_a_usage_error(work):
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "quantcli", "inspect", str(work / "cnn.onnx")], stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "quantcli: error: stdout: no space left on the device it points to (the " \
                               "environment, not the inputs)"


def test_command_line_usage_errors_are_one_line_too(work):
    p = subprocess.run([sys.executable, "-m", "quantcli", "compare", "accuracy", str(work / "cnn.onnx"),
                        str(work / "cnn.onnx"), "--runs", "abc"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["quantcli: error: Invalid value for '--runs': Input should be a valid integer, "
                                     "unable to parse string as an integer (see 'quantcli compare accuracy --help')"]


# -- 6. every path checked before any work -----------------------------------------------------------------------
def test_run_checks_reports_and_eval_data_before_writing_anything(work):
    expect(work, ["run", recipe(work), "--json", work / "nodir" / "r.json"], 2, "output folder")
    x = cnn_data(8)
    x[1, 1, 1, 1] = np.nan
    np.savez(work / "bad_eval.npz", x=x)
    expect(work, ["run", recipe(work, eval=work / "bad_eval.npz")], 2, "bad_eval.npz: input 'x' contains 1 NaN")
    np.save(work / "lab.npy", np.full(16, 12))
    expect(work, ["run", recipe(work, f'labels = "{work / "lab.npy"}"\n')], 2, "label 12 is out of range")
    expect(work, ["convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx",
                  "--recipe-out", work / "nodir" / "f.toml"], 2, "output folder")


# -- 7. quiet and CI output --------------------------------------------------------------------------------------
def test_quiet_still_prints_a_failed_gate(work):
    onnx.save(small_cnn(seed=1), work / "other.onnx")
    r = expect(work, ["compare", "accuracy", work / "cnn.onnx", work / "other.onnx", "--data", work / "eval.npz",
                      "--max-drop", "0", "--runs", 2, "--quiet"], 1, "FAIL: top-1 accuracy drop")
    assert r.stdout == "" and r.stderr.startswith("FAIL: top-1 accuracy drop")


def test_ci_strips_styling_on_stdout(work):
    r = invoke("inspect", work / "cnn.onnx", env={"CI": "true", "FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert r.exit_code == 0 and "\x1b[" not in r.stdout and "\x1b[" not in r.stderr


def test_no_color_disables_the_progress_bar(monkeypatch):
    from rich.console import Console

    from quantcli.cli.app import UI

    for var in ("CI", "NO_COLOR"):  # CI itself runs with CI=true, which also stops the bar
        monkeypatch.delenv(var, raising=False)
    ui = UI()
    ui.err = Console(stderr=True, force_terminal=True, file=open(os.devnull, "w"))
    advance = ui.progress("x", 3)
    advance(3)  # done: the bar stops
    assert advance.__name__ == "advance"
    monkeypatch.setenv("NO_COLOR", "1")
    assert ui.progress("x", 3).__name__ == "<lambda>"


def embedding_model(vocab: int = 50) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["y"], name="head")]
    inits = [numpy_helper.from_array(rng.normal(size=(vocab, 16)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w")]
    g = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_out_of_vocabulary_ids_are_named_and_ort_stays_silent(work):
    onnx.save(embedding_model(), work / "emb.onnx")
    ids = np.random.default_rng(0).integers(0, 50, size=(6, 5))
    ids[4, 2] = 77
    np.savez(work / "ids.npz", ids=ids)
    expect(work, ["calibrate", work / "emb.onnx", "--data", work / "ids.npz", "-o", work / "c.json"], 2,
           "ids.npz: input 'ids' has id 77, outside the vocabulary of the embedding it indexes (50 entries")
    # a model ONNX Runtime fails to run: its own (ANSI red) log lines must not reach the terminal
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 4])],
        [numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, work / "bad.onnx")
    np.savez(work / "x.npz", x=np.ones((3, 6), np.float32))
    p = subprocess.run([sys.executable, "-m", "quantcli", "compare", "accuracy", str(work / "bad.onnx"),
                        str(work / "bad.onnx"), "--data", str(work / "x.npz")], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, CI="true"), timeout=120)
    assert p.returncode == 2, p.stderr
    assert "\x1b[" not in p.stderr and "[E:onnxruntime" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert "ONNX Runtime failed to run it" in p.stderr


def test_sequences_longer_than_the_position_table_are_named(tmp_path):
    model = ROOT / "sample_models" / "tiny_transformer.onnx"  # Slice(position table of 64 rows, 0, seq_len)
    np.savez(tmp_path / "long.npz", input_ids=np.random.default_rng(0).integers(0, 17, size=(4, 80)))
    expect(tmp_path, ["calibrate", model, "--data", tmp_path / "long.npz", "-o", tmp_path / "c.json"], 2,
           "long.npz: input 'input_ids' has length 80 on axis 1, longer than the 64 positions the model supports")


# -- 8. meaningless options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["convert", "{m}", "-o", "{w}/q.onnx", "--mode", "dynamic", "--calibration", "{w}/missing.json"],
     "--calibration: not used with --mode dynamic"),
    (["convert", "{m}", "-o", "{w}/q.onnx", "--precision", "fp16", "--method", "entropy"],
     "--method: not used with --precision fp16"),
    (["convert", "{m}", "-o", "{w}/q.onnx", "--precision", "bf16", "--no-cle", "--max-drop", "1"],
     "--max-drop, --cle: not used with --precision bf16"),
    (["inspect", "{m}", "--data", "{w}/nope.npz"], "nope.npz: no such file"),
    (["convert", "{m}", "-o", "{w}/q.onnx", "--data", "{w}/calib.npz", "--max-drop", "-1"], "--max-drop: -1 is out"),
    (["convert", "{m}", "-o", "{w}/q.onnx", "--data", "{w}/calib.npz", "--max-drop", "nan"],
     "--max-drop: expected a finite number"),
    (["convert", "{m}", "-o", "{w}/q.onnx", "--data", "{w}/calib.npz", "--min-int8-coverage", "150"],
     "--min-int8-coverage: 150 is out of range; expected a value in [0, 100]"),
    (["calibrate", "{m}", "-o", "{w}/c.json", "--data", "{w}/calib.npz", "--batch-size", "0"], "--batch-size: 0"),
    (["compare", "accuracy", "{m}", "{m}", "--data", "{w}/eval.npz", "--runs", "0"], "--runs: 0 is out of range"),
    (["analyze", "{m}", "--data", "{w}/calib.npz", "--top", "-1"], "--top: -1 is out of range"),
])
def test_meaningless_or_out_of_range_options_are_usage_errors(work, args, message):
    args = [a.format(m=work / "cnn.onnx", w=work) for a in args]
    expect(work, args, 2, message)


def test_inspect_data_that_does_not_fit_is_an_error_not_synthetic(work):
    np.savez(work / "wrong.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    expect(work, ["inspect", work / "cnn.onnx", "--data", work / "wrong.npz"], 2, "axis 2: 8 != 16")


def test_exclude_matching_nothing_warns_naming_the_pattern(work):
    r = expect(work, ["convert", work / "cnn.onnx", "--data", work / "calib.npz", "-o", work / "q.onnx",
                      "--exclude", "conv_typo", "--exclude", "fc", "--quiet"], 0, "", new=("q.onnx",))
    assert r.stderr.startswith("quantcli: warning: --exclude 'conv_typo' matches no node") and "'fc'" not in r.stderr


# -- 9. signals ------------------------------------------------------------------------------------------------
def slow_model(n: int = 300, size: int = 1024) -> onnx.ModelProto:
    """One run of many MatMuls (seconds long): ONNX Runtime stays inside a single run() call."""
    w = numpy_helper.from_array((np.eye(size) * 1.0001).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"t{i}", "w"], [f"t{i + 1}"], name=f"mm{i}")
             for i in range(n)]
    nodes.append(helper.make_node("Identity", [f"t{n}"], ["y"], name="out"))
    g = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _start(work: Path, *args):
    return subprocess.Popen([sys.executable, "-m", "quantcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, CI="1"))


def test_sigterm_inside_one_long_onnxruntime_run_exits_within_2s(work):
    onnx.save(slow_model(), work / "slow.onnx")
    np.save(work / "x.npy", np.ones((1024, 1024), np.float32))
    proc = _start(work, "compare", "accuracy", work / "slow.onnx", work / "slow.onnx", "--data", work / "x.npy",
                  "--json", work / "r.json")
    time.sleep(6)  # imports, loading, and into the first (seconds-long) run
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    latency = time.perf_counter() - t0
    if proc.returncode == 0:
        pytest.skip("finished before the signal on this machine")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert latency < 2.0, latency
    assert not (work / "r.json").exists()


def test_second_sigterm_while_unwinding_is_ignored(work):
    np.savez(work / "big.npz", x=np.random.default_rng(0).normal(size=(20000, 3, 16, 16)).astype(np.float32))
    proc = _start(work, "calibrate", work / "cnn.onnx", "--data", work / "big.npz", "--batch-size", 1,
                  "-o", work / "c.json")
    time.sleep(3)
    for _ in range(3):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("finished before the signal on this machine")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not (work / "c.json").exists() and not [p for p in work.iterdir() if p.name.endswith(".tmp")]


# -- 10. the artifact makes convert reproducible from any folder --------------------------------------------------
def test_artifact_records_absolute_data_and_notices_a_change(work, monkeypatch):
    a, b = work / "a", work / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    (a / "calib.npz").write_bytes((work / "calib.npz").read_bytes())
    assert invoke("calibrate", work / "cnn.onnx", "--data", "calib.npz", "-o", "c.json").exit_code == 0
    settings_ = json.loads((a / "c.json").read_text())["settings"]
    assert settings_["data"] == str(a / "calib.npz") and len(settings_["data_sha256"]) == 64
    assert invoke("convert", work / "cnn.onnx", "--calibration", "c.json", "-o", "q.onnx").exit_code == 0
    monkeypatch.chdir(b)
    assert invoke("convert", work / "cnn.onnx", "--calibration", a / "c.json", "-o", "q.onnx").exit_code == 0
    qa, qb = onnx.load(a / "q.onnx"), onnx.load(b / "q.onnx")
    for m in (qa, qb):
        del m.metadata_props[:]  # the manifest names the artifact by the path given
    assert qa.SerializeToString() == qb.SerializeToString()
    np.savez(a / "calib.npz", x=cnn_data(24, seed=9))
    expect(b, ["convert", work / "cnn.onnx", "--calibration", a / "c.json", "-o", b / "q2.onnx"], 2,
           "its calibration data " + str(a / "calib.npz") + " changed since calibrate")


# -- the property: any value in or out of range works or is one line and exit 2 -----------------------------------
NUMBERS = st.one_of(st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0, 1, 100, 100.0001, 1e-9, -0.0]))
OPTIONS = [("calibrate", "--percentile", "float"), ("calibrate", "--samples", "int"),
           ("calibrate", "--batch-size", "int"), ("compare", "--max-drop", "float"), ("compare", "--runs", "int"),
           ("compare", "--threads", "int"), ("recipe", "bins", "int"), ("recipe", "percentile", "float")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(OPTIONS), value=NUMBERS)
def test_property_any_option_value_works_or_is_one_line_exit_2(work, option, value):
    where, name, kind = option
    if kind == "int":
        if isinstance(value, float) and not np.isfinite(value):
            value = -1
        value = int(value)
    text = repr(value) if kind == "float" else str(value)
    text = {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    out = work / "c.json"
    if where == "compare":
        args = ["compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx", "--data", work / "eval.npz",
                "--runs", "2", name, text] if name != "--runs" else \
            ["compare", "accuracy", work / "cnn.onnx", work / "cnn.onnx", "--data", work / "eval.npz", name, text]
    elif where == "recipe":
        toml_value = {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
        (work / "p.toml").write_text(f"[calibrate]\nmethod = 'percentile'\n{name} = {toml_value}\n")
        args = ["calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", out, "--recipe", work / "p.toml"]
    else:
        args = ["calibrate", work / "cnn.onnx", "--data", work / "calib.npz", "-o", out, "--method", "percentile",
                name, text]
    if out.exists():
        out.unlink()
    r = invoke(*args)
    assert r.exit_code in (0, 1, 2), r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    if r.exit_code == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("quantcli: error:"), r.stderr
        assert not out.exists()
