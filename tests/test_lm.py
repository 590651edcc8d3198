"""Language-model metrics in compare: next-token perplexity and token agreement, on the decoder sample."""

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.metrics import lm_token_ids, next_token_nll, token_agreement_count

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_next_token_nll_is_the_cross_entropy_of_the_following_token():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    total, count = next_token_nll(logits, ids)
    want = 0.0
    for b in range(2):
        for t in range(4):
            p = np.exp(logits[b, t].astype(np.float64))
            want -= np.log(p[ids[b, t + 1]] / p.sum())
    assert count == 8 and abs(total - want) < 1e-9
    assert lm_token_ids({"input_ids": ids}, logits) is ids
    assert lm_token_ids({"input_ids": ids + 7}, logits) is None          # ids beyond the vocabulary
    assert lm_token_ids({"x": ids.astype(np.float32)}, logits) is None   # not token ids
    assert token_agreement_count(logits, logits) == (10, 10)


def test_compare_reports_perplexity_and_gates_on_its_increase(tmp_path):
    model, data = SAMPLES / "tiny_lm.onnx", SAMPLES / "tiny_lm-eval.npz"
    q = tmp_path / "lm.int4.onnx"
    run = CliRunner().invoke
    assert run(app, ["convert", str(model), "--precision", "int4", "-o", str(q), "-q"]).exit_code == 0
    r = run(app, ["compare", "accuracy", str(model), str(q), "--data", str(data), "--runs", "4", "--max-drop", "5",
                  "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "c.json").read_text())
    fp32, quant = c["perplexity"]
    assert 3.5 < fp32 < 4.5 and fp32 < quant < 1.05 * fp32  # the sample's held-out perplexity is 4.06 per character
    assert c["metric"] == "perplexity" and 0 < c["drop"] < 5 and 0.9 < c["token_agreement"] < 1.0
    assert "next-token perplexity" in r.output and "PASS: perplexity increase" in r.output
    r = run(app, ["compare", "accuracy", str(model), str(q), "--data", str(data), "--runs", "4", "--max-drop", "0.01"])
    assert r.exit_code == 1 and "FAIL: perplexity increase" in r.output
