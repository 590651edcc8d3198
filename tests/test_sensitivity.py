"""Sensitivity analysis and the --max-drop mixed-precision search on the activation-outlier sample."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcli import pipeline
from quantcli.cli.app import app
from quantcli.quantize.policy import resolve_presets
from quantcli.quantize.reasons import Reason, Why
from quantcli.recipe import CalibrateSettings, ConvertSettings
from quantcli.sensitivity import search_exclusions

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODEL = SAMPLES / "outlier_cnn.onnx"
CALIB = CalibrateSettings(data=str(SAMPLES / "digits_cnn-calib.npz"))
EVAL = str(SAMPLES / "digits_cnn-eval.npz")


def test_analyze_ranks_the_outlier_layers_first():
    r = pipeline.analyze(MODEL, ConvertSettings(eval_data=EVAL), calib_settings=CALIB)
    assert r.all_int8_drop > 1.0 and r.metric == "top-1 accuracy"
    top3 = {n["node"] for n in r.nodes[:3]}
    assert top3 <= {"down1/conv", "dsblock/dw/conv", "dsblock/pw/conv", "down2/conv"}
    assert all(n["full_sqnr_db"] is not None for n in r.nodes)
    assert abs(sum(n["mac_share"] for n in r.nodes) - 1.0) < 1e-6
    assert r.evaluations == len(r.nodes) + 1  # one evaluation per node, plus the all-INT8 model


def test_max_drop_finds_a_model_within_budget_with_few_float_nodes(tmp_path):
    conv = pipeline.convert(MODEL, tmp_path / "m.onnx", ConvertSettings(max_drop=1.0, eval_data=EVAL),
                            calib_settings=CALIB)
    s = conv.search
    assert s.all_int8_drop > 1.0 and s.drop <= 1.0
    assert 1 <= len(s.float_nodes) <= 3
    assert all(conv.float_nodes[n].reason == Reason.MAX_DROP for n in s.float_nodes)
    assert all(str(conv.float_nodes[n]).startswith("kept float by the --max-drop search") for n in s.float_nodes)
    assert 'exclude = ["' in s.recipe_fragment
    res = pipeline.compare(MODEL, tmp_path / "m.onnx",
                           pipeline.CompareSettings(data=EVAL, runs=2, warmup=2))
    assert res.drop <= 1.0
    again = pipeline.convert(MODEL, tmp_path / "m2.onnx", ConvertSettings(max_drop=1.0, eval_data=EVAL),
                             calib_settings=CALIB)
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "m2.onnx").read_bytes()  # deterministic


def test_search_bisects_over_the_ranking():
    class FakeEval:
        evaluations = 0

        def score(self, model):
            from quantcli.sensitivity import Score

            k = len(model)  # the "model" here is the tuple of float nodes
            return Score(drop=max(0.0, 5.0 - 2.0 * k), sqnr_db=0.0, metric=0.0)

    excluded, score, _, steps = search_exclusions(list("abcdefgh"), lambda ex: ex, FakeEval(), 1.0)
    assert excluded == ("a", "b") and score.drop == 1.0
    assert [s["float_nodes"] for s in steps] == [0, 4, 2, 1]  # 0, then bisection: all 8 float is not needed

    class Unreachable(FakeEval):  # only all 8 in float meets it: measured once nothing smaller holds
        def score(self, model):
            from quantcli.sensitivity import Score

            return Score(drop=0.0 if len(model) == 8 else 3.0, sqnr_db=0.0, metric=0.0)

    excluded, score, _, steps = search_exclusions(list("abcdefgh"), lambda ex: ex, Unreachable(), 1.0)
    assert len(excluded) == 8 and score.drop == 0.0 and [s["float_nodes"] for s in steps] == [0, 4, 6, 7, 8]
    excluded, score, _, steps = search_exclusions(list("abcdefgh"), lambda ex: ex, Unreachable(), -1.0)
    assert len(excluded) == 8 and score.drop == 0.0  # not reachable at all: the most it can do, said upstream


def test_presets_first_and_last():
    import onnx

    m = onnx.load(MODEL)
    assert resolve_presets(m, ["@first", "@last", "x"]) == ("stem/conv", "head/fc", "x")


def test_cli_analyze_and_convert_max_drop(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["analyze", str(MODEL), "--data", CALIB.data, "--eval-data", EVAL, "--json",
                            str(tmp_path / "a.json"), "--top", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.json").read_text())["nodes"][0]["alone_drop"] > 0
    r = runner.invoke(app, ["convert", str(MODEL), "--data", CALIB.data, "--eval-data", EVAL, "--max-drop", "1",
                            "-o", str(tmp_path / "q.onnx"), "--recipe-out", str(tmp_path / "frag.toml")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    frag = (tmp_path / "frag.toml").read_text()
    r = runner.invoke(app, ["convert", str(MODEL), "--data", CALIB.data, "-o", str(tmp_path / "q2.onnx"),
                            "--recipe", str(tmp_path / "frag.toml"), "--exclude", "@first"], catch_exceptions=False)
    assert r.exit_code == 0 and "exclude" in frag


def test_node_rules_fp16_fp32_and_int8_overrides(tmp_path):
    import onnx
    from onnx import TensorProto

    from quantcli.recipe import Method, NodePrecision, NodeRule, Weights

    rules = [NodeRule("head/fc", NodePrecision.FP16), NodeRule("stem/conv", NodePrecision.FP32),
             NodeRule("dsblock/*", weights=Weights.PER_TENSOR, method=Method.PERCENTILE, percentile=99.9)]
    base = SAMPLES / "digits_cnn.onnx"
    conv = pipeline.convert(base, tmp_path / "n.onnx", ConvertSettings(nodes=rules), calib_settings=CALIB)
    assert conv.float_nodes["head/fc"] == Why(Reason.NODE_RULE, "runs in FP16 (node rule)")
    assert conv.float_nodes["stem/conv"] == Why(Reason.NODE_RULE, "kept FP32 (node rule)")
    m = onnx.load(tmp_path / "n.onnx")
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["head.fc.weight"].data_type == TensorProto.FLOAT16
    dq = {n.input[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert list(inits["dsblock/dw.conv.weight_scale"].dims) == []      # per-tensor by the rule
    assert list(inits["down2.conv.weight_scale"].dims) == [128]        # per-channel elsewhere
    assert "stem.conv.weight_quantized" not in inits and dq
    assert conv.coverage.integer_kernels.get("QLinearConv") == 4
    res = pipeline.compare(base, tmp_path / "n.onnx", pipeline.CompareSettings(data=EVAL, runs=2, warmup=2))
    assert res.drop <= 1.0


def test_node_rules_from_recipe_and_flag(tmp_path):
    from quantcli.errors import QuantcliError
    from quantcli.recipe import load_recipe, parse_node_rule

    p = tmp_path / "r.toml"
    p.write_text('[[convert.nodes]]\nmatch = "head/*"\nprecision = "fp16"\n'
                 '[[convert.nodes]]\nmatch = "re:down.*"\nweights = "per-tensor"\n')
    r = load_recipe(p)
    assert [n.match for n in r.convert.nodes] == ["head/*", "re:down.*"]
    assert parse_node_rule("a/b:precision=fp32").precision.value == "fp32"
    for bad in ("nokey", "x:precision=int3", "x:colour=red"):  # int4 is valid (with --precision int4)
        with pytest.raises(QuantcliError):
            parse_node_rule(bad)
    p.write_text('[[convert.nodes]]\nprecision = "fp16"\n')
    with pytest.raises(QuantcliError, match="'match' is required"):
        load_recipe(p)


def test_agreement_on_sequences_counts_positions_not_whole_samples():
    """A sequence output (CTC recogniser, LM) where one step of each sample flips scores by position: 19 of 20
    positions agree (95%), not 0% as requiring every step of a sample to agree would say."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from quantcli.sensitivity import Evaluator

    def model(bump: float):
        delta = np.zeros((1, 20, 4), np.float32)
        delta[0, 7, 3] = bump  # position 7: class 3 wins by `bump`
        g = helper.make_graph([helper.make_node("Add", ["x", "d"], ["y"])], "seq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 20, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 20, 4])],
                              [numpy_helper.from_array(delta, "d")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = np.zeros((6, 20, 4), np.float32)
    x[..., 0] = 1.0  # class 0 everywhere
    ev = Evaluator(model(0.0), [{"x": x[:3]}, {"x": x[3:]}])
    score = ev.score(model(5.0))
    assert abs(score.metric - 95.0) < 1e-9 and abs(score.drop - 5.0) < 1e-9
    assert len(ev.subset(3).batches) == 1 and ev.subset(3).score(model(5.0)).metric == score.metric


def _scorer(bias: float):
    """x [N, 8] -> MatMul -> Sigmoid -> Reshape to [N]: one probability per sample (a voice-activity score)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["zb"]),
         helper.make_node("Sigmoid", ["zb"], ["p"]), helper.make_node("Reshape", ["p", "flat"], ["prob"])],
        "scorer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([bias], np.float32), "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_one_probability_per_sample_is_scored_by_its_decision(tmp_path):
    """An output of one probability per sample: agreement is the same decision at 0.5 (an argmax over one value
    always agrees: the search scored silero-vad's speech score as 0% agreement, 100-pt drop, at 137 dB SQNR),
    the same in the search's Evaluator and in compare."""
    import numpy as np

    from quantcli.recipe import CompareSettings
    from quantcli.sensitivity import Evaluator

    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    ref, shifted = _scorer(0.0), _scorer(0.3)
    z = x @ np.linspace(-1, 1, 8, dtype=np.float32)
    expected = 100.0 * np.mean((z > 0) == (z + 0.3 > 0))
    assert 50 < expected < 100
    ev = Evaluator(ref, [{"x": x[:32]}, {"x": x[32:]}])
    assert ev.kind == "decision" and ev.metric_name.startswith("decision agreement")
    assert ev.score(ref).drop == 0.0
    s = ev.score(shifted)
    assert abs(s.metric - expected) < 1e-9 and abs(s.drop - (100 - expected)) < 1e-9
    import onnx

    onnx.save(ref, tmp_path / "a.onnx")
    onnx.save(shifted, tmp_path / "b.onnx")
    np.savez(tmp_path / "e.npz", x=x)
    c = pipeline.compare(tmp_path / "a.onnx", tmp_path / "b.onnx", CompareSettings(data=str(tmp_path / "e.npz"), runs=3))
    assert abs(100 * c.outputs[0].agreement - expected) < 1e-9 and abs(c.drop - (100 - expected)) < 1e-9


def test_fidelity_sums_in_chunks_match_float64():
    """FidelityAccumulator sums float32 dot products over 64k-value chunks in float64: the same cosine / SQNR / max
    error as a float64 computation, across chunk and batch boundaries; NaN/inf pairs are left out and counted."""
    import numpy as np

    from quantcli.metrics import FidelityAccumulator

    rng = np.random.default_rng(3)
    r = (rng.standard_normal(300_001) * 5).astype(np.float32)
    t = (r + 0.02 * rng.standard_normal(r.size)).astype(np.float32)
    t[[7, 90_000]] = [np.nan, np.inf]  # the first batch takes the exact path, the second the chunked one
    f = FidelityAccumulator()
    for lo, hi in ((0, 100_000), (100_000, 300_001)):
        f.update(r[lo:hi], t[lo:hi])
    ok = np.isfinite(t)
    r64, t64 = r[ok].astype(np.float64), t[ok].astype(np.float64)
    sqnr = 10 * np.log10((r64 @ r64) / ((r64 - t64) @ (r64 - t64)))
    cos = (r64 @ t64) / np.sqrt((r64 @ r64) * (t64 @ t64))
    assert f.nonfinite == 2
    assert abs(f.sqnr_db - sqnr) < 1e-4 and abs(f.cosine - cos) < 1e-7
    assert abs(f.max_abs - float(np.max(np.abs(r64 - t64)))) < 1e-6


def test_outputs_kept_past_their_session_do_not_hold_its_memory_arena():
    """An ONNX Runtime output lives in its session's arena and keeps all of it alive, however small: the FP32
    outputs an Evaluator caches, the check sample's reference outputs and the bias-correction frontier's values are
    copies (PicoDet convert: 1190 -> 821 MiB)."""
    import numpy as np

    from models import cnn_data, small_cnn
    from quantcli.quantize.empirical_bias import Frontier
    from quantcli.runtime.session import make_session, run
    from quantcli.sensitivity import Evaluator
    from quantcli.validate.output import reference_outputs

    model = small_cnn()
    batches = [{"x": cnn_data(4, seed=s)} for s in range(2)]
    session = make_session(model)
    assert not run(session, batches[0])[0].flags.owndata  # ONNX Runtime's own buffer (the premise)
    assert all(o.flags.owndata for o in run(session, batches[0], keep=True))
    assert all(r.flags.owndata for r in Evaluator(model, batches).ref)
    assert all(r.flags.owndata for r in reference_outputs(model, batches[0]))
    frontier = Frontier(batches)
    frontier.channel_means(model, [("dwconv", 1)])  # conv1 -> relu1 are final now: r1 is kept per batch
    kept = [v for values in frontier.values for k, v in values.items() if k != "x"]
    assert kept and all(v.flags.owndata for v in kept)


METRICS = '''
import numpy as np

def top1(reference, candidate, labels):
    assert len(reference) == len(candidate) and all(len(r) == len(c) for r, c in zip(reference, candidate))
    pred = np.concatenate([outs[0].argmax(-1) for outs in candidate])
    return 100.0 * float((pred == labels).mean())

def indifferent(reference, candidate, labels):
    return 50.0

def broken(reference, candidate, labels):
    raise ValueError("boxes and scores differ in length")
'''


def test_max_drop_with_a_task_metric_drives_the_search(tmp_path):
    """--metric FILE.py:FUNCTION: the user's function, given every output per batch and the labels, decides the
    drop; the built-in top-1 accuracy re-written as a task metric keeps the same nodes float."""
    (tmp_path / "metrics.py").write_text(METRICS)
    builtin = pipeline.convert(MODEL, tmp_path / "a.onnx", ConvertSettings(max_drop=1.0, eval_data=EVAL),
                               calib_settings=CALIB).search
    task = pipeline.convert(MODEL, tmp_path / "b.onnx", ConvertSettings(
        max_drop=1.0, eval_data=EVAL, metric=f"{tmp_path / 'metrics.py'}:top1"), calib_settings=CALIB).search
    assert task.metric.endswith("metrics.py:top1")
    assert task.float_nodes == builtin.float_nodes and task.float_nodes
    assert abs(task.all_int8_drop - builtin.all_int8_drop) < 1e-9 and abs(task.drop - builtin.drop) < 1e-9
    flat = pipeline.convert(MODEL, tmp_path / "c.onnx", ConvertSettings(
        max_drop=1.0, eval_data=EVAL, metric=f"{tmp_path / 'metrics.py'}:indifferent"), calib_settings=CALIB).search
    assert flat.all_int8_drop == 0.0 and flat.float_nodes == []  # the metric sees no loss: nothing kept float
    # compare gates on the same metric: its values are the built-in top-1 accuracies
    settings = pipeline.CompareSettings(data=EVAL, runs=2, warmup=1, max_drop=1.0)
    plain = pipeline.compare(MODEL, tmp_path / "b.onnx", settings)
    task_cmp = pipeline.compare(MODEL, tmp_path / "b.onnx", pipeline.CompareSettings(
        data=EVAL, runs=2, warmup=1, max_drop=1.0, metric=f"{tmp_path / 'metrics.py'}:top1"))
    assert task_cmp.task[1:] == pytest.approx(plain.top1) and task_cmp.drop == pytest.approx(plain.drop)
    assert task_cmp.metric.endswith("metrics.py:top1") and bool(task_cmp)
    r = CliRunner().invoke(app, ["compare", "accuracy", str(MODEL), str(tmp_path / "c.onnx"), "--data", EVAL,
                                 "--runs", "2", "--max-drop", "1", "--metric", f"{tmp_path / 'metrics.py'}:top1"])
    text = " ".join(r.output.split())
    # the drop itself depends on the CPU (12.78 pts with AVX512-VNNI, 13.89 with AVX2 only: 7-bit weights there)
    assert r.exit_code == 1 and "FAIL: " in text, r.output
    assert re.search(r"metrics\.py:top1 drop \d+\.\d\d pts \(max 1 pts\)", text), r.output


def test_task_metric_errors_are_one_line_usage_errors(tmp_path):
    (tmp_path / "metrics.py").write_text(METRICS)
    runner = CliRunner()
    base = ["convert", str(MODEL), "--data", CALIB.data, "--eval-data", EVAL, "-o", str(tmp_path / "q.onnx")]
    cases = {f"{tmp_path / 'metrics.py'}:broken": "raised ValueError: boxes and scores differ in length",
             f"{tmp_path / 'metrics.py'}:nope": "no function 'nope' (it defines: broken, indifferent, top1)",
             f"{tmp_path / 'missing.py'}:top1": "missing.py: no such file",
             "metrics.py": "expected FILE.py:FUNCTION"}
    for spec, message in cases.items():
        r = runner.invoke(app, base + ["--max-drop", "1", "--metric", spec])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "q.onnx").exists()
    r = runner.invoke(app, base + ["--metric", f"{tmp_path / 'metrics.py'}:top1"])
    assert r.exit_code == 2 and "only --max-drop reads it" in r.output


def test_ranking_samples_shrink_with_the_model_cost_and_known_scores_are_not_rerun():
    from quantcli.quantize.search import RANK_MIN_SAMPLES, RANK_SAMPLES, rank_samples
    from quantcli.sensitivity import Score

    assert rank_samples(54, 0.016) == RANK_SAMPLES                 # a 16 MMAC classifier: all 64
    assert RANK_MIN_SAMPLES < rank_samples(70, 1.0) < RANK_SAMPLES  # PP-OCRv6 rec-sized: fewer
    assert rank_samples(83, 3.2) == RANK_MIN_SAMPLES               # YOLOX-sized: the floor
    assert rank_samples(0, 1.0) == rank_samples(5, 0.0) == RANK_SAMPLES

    class CountingEval:
        def __init__(self):
            self.runs = []

        def score(self, model):
            self.runs.append(len(model))
            return Score(drop=max(0.0, 5.0 - 2.0 * len(model)), sqnr_db=0.0, metric=0.0)

    ev = CountingEval()
    excluded, score, _, steps = search_exclusions(list("abcdefgh"), lambda ex: ex, ev, 1.0,
                                                  known={0: Score(drop=5.0, sqnr_db=0.0, metric=95.0)})
    assert excluded == ("a", "b") and 0 not in ev.runs and steps[0] == {"float_nodes": 0, "drop": 5.0, "sqnr_db": 0.0}


def test_agreement_over_a_last_axis_that_holds_no_probabilities_is_flagged():
    import numpy as np

    from quantcli.metrics import is_distribution
    from quantcli.quantize.search import _metric_hint
    from quantcli.sensitivity import Evaluator

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10, 6)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert is_distribution(probs) and is_distribution(np.log(probs)) and not is_distribution(logits)
    rows = np.concatenate([rng.uniform(0, 320, (4, 10, 4)), rng.uniform(0, 1, (4, 10, 2))], -1)  # YOLOX-like
    hint = _metric_hint(Evaluator(None, [{"x": rows}], ref=[rows]))
    assert "--metric FILE.py:FUNCTION" in hint and "[4, 10, 6]" in hint
    assert _metric_hint(Evaluator(None, [{"x": probs}], ref=[probs])) == ""
    emb = rng.normal(size=(8, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert "embeddings" in _metric_hint(Evaluator(None, [{"x": emb}], ref=[emb]))
    assert _metric_hint(Evaluator(None, [{"x": emb}], ref=[emb * 3])) == ""  # classifier logits: no hint


def test_with_a_task_metric_the_sqnr_is_the_worst_outputs(tmp_path):
    """A node that changes only a second output (PicoDet: one stride's branch) must not score "exact" by the first
    output's SQNR: with a task metric (every output held) a score's SQNR is the lowest over the float outputs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from quantcli.sensitivity import Evaluator, worst_output_sqnr
    from quantcli.task_metric import TaskMetric

    def two_outputs(gain: float) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Mul", ["x", "k"], ["b"]),
             helper.make_node("ArgMax", ["x"], ["c"], axis=1)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info(n, t, None) for n, t in (("a", TensorProto.FLOAT),
                                                                    ("b", TensorProto.FLOAT), ("c", TensorProto.INT64))],
            [helper.make_tensor("k", TensorProto.FLOAT, [], [gain])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    batches = [{"x": x[:3]}, {"x": x[3:]}]
    task = TaskMetric("t.py:f", lambda ref, cand, labels: 100.0, "0")
    ev = Evaluator(two_outputs(2.0), batches, task=task)
    score = ev.score(two_outputs(2.02))
    assert score.sqnr_db == pytest.approx(40.0, abs=0.01)  # 1% error on b; a is exact, c is an integer output
    assert ev.score(two_outputs(2.0)).sqnr_db == float("inf")
    assert Evaluator(two_outputs(2.0), batches).score(two_outputs(2.02)).sqnr_db == float("inf")  # first output only
    assert worst_output_sqnr([[x]], [[x * 0.99]]) == pytest.approx(40.0, abs=0.01)


def _two_heads():
    """A backbone (two convs and a skip Add) feeding two heads, one output each: a node of one head changes only
    its own output."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = lambda name, *shape: numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), name)  # noqa
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="skip"),
             helper.make_node("Conv", ["s", "wa", "ba"], ["ha"], name="head_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["s", "wb", "bb"], ["hb"], name="head_b", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["ha"], ["a"], name="out_a"),
             helper.make_node("Sigmoid", ["hb"], ["b"], name="out_b")]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 8, 3, 3), w("b2", 8), w("wa", 16, 8, 3, 3), w("ba", 16),
             w("wb", 16, 8, 3, 3), w("bb", 16)]
    g = helper.make_graph(nodes, "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("held", [None, 1])
def test_alone_scorer_runs_only_what_a_node_changes_and_scores_as_the_whole_model(tmp_path, monkeypatch, held):
    """The ranking's models (each node quantized alone) are scored from base's held values through only the part
    the node changes: the same scores as running each model whole, with a task metric over both outputs (all held
    at once, or -- held=1 value -- a pass of the float model per node)."""
    import numpy as np
    from models import static_builder

    from quantcli import sensitivity
    from quantcli.quantize.search import ranked_nodes
    from quantcli.sensitivity import AloneScorer, Evaluator
    from quantcli.task_metric import TaskMetric

    if held:
        monkeypatch.setattr(sensitivity, "ALONE_HELD_VALUES", held)
    model = _two_heads()
    x = np.random.default_rng(0).normal(size=(24, 3, 8, 8)).astype(np.float32)
    build = static_builder(tmp_path, model, x)
    nodes = ranked_nodes(build())
    assert sorted(nodes) == ["c1", "c2", "head_a", "head_b"]

    def close(ref, cand, labels):  # % of values within 0.05 of FP32, over both outputs
        pairs = [(r, c) for rb, cb in zip(ref, cand) for r, c in zip(rb, cb)]
        return 100.0 * sum(int((np.abs(r - c) < 0.05).sum()) for r, c in pairs) / sum(r.size for r, _ in pairs)

    ev = Evaluator(model, [{"x": x[i:i + 8]} for i in range(0, 24, 8)], task=TaskMetric("t.py:f", close, "0"))
    scorer = AloneScorer(build((), ()).model, ev, nodes)
    for name in nodes:
        quant = build((), (name,)).model
        part, whole = scorer.score(quant, name), ev.score(quant)
        assert part.metric == pytest.approx(whole.metric, abs=1e-9), name
        assert part.sqnr_db == pytest.approx(whole.sqnr_db, abs=1e-3), name
    assert scorer.parts == 4 and scorer.whole == 0
    changed, _ = scorer._changed(build((), ("head_a",)).model)
    assert "head_b" not in {n.name for n in changed} and "head_a" in {n.name for n in changed}
