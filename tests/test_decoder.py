"""INT4 on decoders: embedding tables as GatherBlockQuantized (checked against how ONNX Runtime executes it), the
output head 8-bit by default, the KV-cache export of sample_models/decoder_lm.py (random weights: no torch), the
range (clip) search and GPTQ's act-order."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from models import _model, correlated_layer
from quantcli.cli.app import app
from quantcli.quantize.blockwise import block_params, quantize_blockwise
from quantcli.runtime.session import make_session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))

import decoder_lm  # noqa: E402

SMALL = dict(d=256, heads=4, layers=1, ffn=512, vocab=512, context=32)


def _embedding_model(rows: int, d: int, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """ids -> Gather(table) -> MatMul(w) -> y; the table [rows, d] with uneven row scales."""
    rng = np.random.default_rng(seed)
    table = (rng.normal(size=(rows, d)) * rng.uniform(0.1, 2.0, size=(rows, 1))).astype(np.float32)
    w = (rng.normal(size=(d, 300)) / np.sqrt(d)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    m = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 300])],
               [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")])
    return m, table


def _convert(tmp_path, model, *extra) -> tuple[onnx.ModelProto, dict]:
    onnx.save(model, tmp_path / "m.onnx")
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "m.onnx"), "--precision", "int4", "-o",
                                 str(tmp_path / "q.onnx"), "--json", str(tmp_path / "r.json"), "-q", *extra])
    assert r.exit_code == 0, r.output
    return onnx.load(tmp_path / "q.onnx"), json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("bits,symmetric,d", [(4, False, 256), (4, True, 256), (8, False, 256), (4, False, 272)])
def test_embedding_gather_becomes_gather_block_quantized_and_ort_returns_our_dequantized_rows(tmp_path, bits,
                                                                                            symmetric, d):
    """ONNX Runtime's GatherBlockQuantized must return exactly the rows of our own dequantized table (4- and 8-bit,
    with and without zero points, and D = 272, not a whole number of 32-value blocks)."""
    model, table = _embedding_model(300, d)
    extra = (["--symmetric-weights"] if symmetric else []) + (["--node", "embed:precision=int4"] if bits == 4 else [])
    q, report = _convert(tmp_path, model, "--no-clip-search", *extra)
    (gbq,) = [n for n in q.graph.node if n.op_type == "GatherBlockQuantized"]
    assert report["quantized_nodes"]["embed"] == "Gather"
    assert next(a.i for a in gbq.attribute if a.name == "bits") == bits
    assert "table" not in {i.name for i in q.graph.initializer}  # the float table is gone
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info("e", TensorProto.FLOAT, None))
    ids = np.array([[0, 5, 299, 17, 5]], np.int64)
    got = make_session(probe).run(["e"], {"ids": ids})[0]
    want = quantize_blockwise(np.ascontiguousarray(table.T), 32, symmetric=symmetric, bits=bits).dequantize().T[ids]
    np.testing.assert_array_equal(got, want)
    step = np.abs(table).max() / (7 if bits == 4 else 127)
    assert np.abs(got - table[ids]).max() <= step


def test_small_tables_and_gathers_of_activations_stay_as_they_are(tmp_path):
    model, _ = _embedding_model(64, 256)  # 16,384 values: too small to matter
    q, report = _convert(tmp_path, model)
    assert any(n.op_type == "Gather" for n in q.graph.node)
    assert "too small for INT4 to matter" in report["float_nodes"]["embed"]["detail"]


def _small_decoder(tmp_path, kv: bool, seed: int = 0) -> Path:
    path = tmp_path / f"dec{'-kv' if kv else ''}.onnx"
    onnx.save(decoder_lm.decoder_graph(decoder_lm.random_weights(SMALL, seed), SMALL, kv=kv), path)
    return path


def _decode(sess, model: onnx.ModelProto, ids: np.ndarray, prompt: int) -> np.ndarray:
    """Logits of ``ids`` [1, S]: the first ``prompt`` at once, then one token per step through the cache."""
    names = [o.name for o in sess.get_outputs()]
    r = sess.run(None, {"input_ids": ids[:, :prompt], **decoder_lm.empty_past(model, 1)})
    out = [r[0]]
    for t in range(prompt, ids.shape[1]):
        past = {n.replace("present", "past"): v for n, v in zip(names[1:], r[1:])}
        r = sess.run(None, {"input_ids": ids[:, t:t + 1], **past})
        out.append(r[0])
    return np.concatenate(out, axis=1)


def test_decoder_kv_cache_export_matches_the_full_window_before_and_after_int4(tmp_path):
    """The cache export's step-by-step logits equal the no-cache export's, for FP32 and for the INT4 model; INT4
    quantizes every projection to 4 bits, the token embedding (GatherBlockQuantized) and the lm_head to 8."""
    plain, cached = _small_decoder(tmp_path, False), _small_decoder(tmp_path, True)
    ids = np.random.default_rng(1).integers(0, SMALL["vocab"], size=(1, 20))
    full = make_session(plain).run(None, {"input_ids": ids})[0]
    kv_model = onnx.load(cached)
    np.testing.assert_allclose(_decode(make_session(cached), kv_model, ids, 8), full, atol=1e-4)
    onnx.save(kv_model, tmp_path / "m.onnx")
    q, report = _convert(tmp_path, kv_model)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulNBits") == 7 and ops.count("GatherBlockQuantized") == 1  # 6 projections + lm_head
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in q.graph.node
            if n.op_type == "MatMulNBits"}
    assert bits.pop("/lm_head/MatMul") == 8 and set(bits.values()) == {4}
    gbq = next(n for n in q.graph.node if n.op_type == "GatherBlockQuantized")
    assert next(a.i for a in gbq.attribute if a.name == "bits") == 8
    assert any("8-bit weights: /lm_head/MatMul, /model/embed_tokens/Gather" in n for n in report["notes"])
    got = _decode(make_session(q), q, ids, 8)
    full_q = make_session(q).run(["logits"], {"input_ids": ids, **decoder_lm.empty_past(q, 1)})[0]
    np.testing.assert_allclose(got, full_q, atol=1e-3 * np.abs(full_q).max())
    cos = np.sum(full * full_q) / np.sqrt(np.sum(full ** 2) * np.sum(full_q ** 2))
    assert cos > 0.98, cos
    assert (tmp_path / "q.onnx").stat().st_size < 0.3 * cached.stat().st_size


def test_an_int4_node_rule_makes_the_head_4_bit_and_static_int8_refuses_it(tmp_path):
    """(8-bit by default: 4-bit cost 4.2% perplexity on the decoder sample against 0.07% at 8.)"""
    q, _ = _convert(tmp_path, onnx.load(_small_decoder(tmp_path, False)), "--node", "/lm_head/MatMul:precision=int4")
    head = next(n for n in q.graph.node if n.name == "/lm_head/MatMul")
    assert head.op_type == "MatMulNBits" and next(a.i for a in head.attribute if a.name == "bits") == 4
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "m.onnx"), "--node", "/lm_head/MatMul:precision=int4",
                                 "--data", str(tmp_path / "none.npz"), "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code != 0


def test_clip_search_never_rounds_worse_and_lowers_the_weighted_error():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(256, 64))
    imp = rng.uniform(0.1, 3.0, size=256)
    for symmetric in (False, True):
        errs = {}
        for clip in (False, True):
            deq = quantize_blockwise(w.astype(np.float32), 32, symmetric=symmetric, clip=clip,
                                     importance=imp).dequantize()
            errs[clip] = float(np.sum(imp[:, None] * (deq - w) ** 2))
        assert errs[True] < 0.95 * errs[False], (symmetric, errs)
    # per block: the searched range is never worse than the full range (1.0 is on the grid)
    blocks = w.T.reshape(64, 8, 32)
    for clip in (False, True):
        scale, zp = block_params(blocks, False, clip=clip)
        q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, 15)
        err = ((blocks - (q - zp[..., None]) * scale[..., None]) ** 2).sum(-1)
        if clip:
            assert np.all(err <= full + 1e-9)
        full = err


def test_gptq_act_order_beats_natural_order_where_input_energy_is_uneven():
    from quantcli.quantize.gptq import gptq_quantize

    w, fit, sqnr = correlated_layer(256, 64)

    natural = gptq_quantize(w, fit.T @ fit, len(fit), 32)
    ordered = gptq_quantize(w, fit.T @ fit, len(fit), 32, act_order=True)
    assert sqnr(ordered) > sqnr(natural) + 3, (sqnr(ordered), sqnr(natural))
    assert ordered.packed.shape == natural.packed.shape
