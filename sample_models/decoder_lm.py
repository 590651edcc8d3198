"""A decoder-only LM sample big enough that batch-1 decoding is memory-bound: GPT-style, pre-LN, 11.0M parameters
(44 MB FP32, more than this CPU's 32 MB L3), byte-level BPE vocabulary of 512 trained on text that ships with Python.

    python sample_models/decoder_lm.py [--out DIR] [--steps N]   # needs torch==2.13.0, tokenizers, onnx, numpy

Text: CPython's pydoc topics (prose) followed by the standard library's top-level ``*.py`` modules, sorted by name
(code); the last 5% of the token stream is held out.  Training starts from the text's bigram statistics
(:func:`_bigram_init`) and is seeded, deterministic algorithms, 2 torch threads,
AdamW with warmup and cosine decay (``--steps`` x 8 sequences x 128 tokens: 160 steps took 20 minutes on 2 cores of
an AMD EPYC shared with other jobs; an under-trained model, see build.json's perplexity).  The ONNX graphs are written node by node with onnx.helper from the trained weights (:func:`decoder_graph`
needs only numpy and onnx, so tests build small random-weight decoders with it):

* ``decoder_lm.onnx``: ``input_ids`` [batch, sequence] -> ``logits`` [batch, sequence, vocab] (no cache);
* ``decoder_lm-kv.onnx``: also ``past_key.i`` / ``past_value.i`` [batch, heads, past, head_dim] in and
  ``present_key.i`` / ``present_value.i`` out for every layer; positions start at the past length, so a decode step
  feeds one token and the previous step's presents (an empty past, length 0, for the prompt);
* ``decoder_lm-tokenizer.json`` (Hugging Face tokenizers), ``decoder_lm-calib.npz`` (128 training windows),
  ``decoder_lm-eval.npz`` (64 held-out windows), ``decoder_lm-calib-kv.npz`` (the calibration windows with an
  empty past, for converting the cache model), ``build.json`` (config, held-out perplexity, checks).

Nothing here is committed: the model is 44 MB.  :func:`ensure` builds it into a cache directory keyed by this
file's and the text's content (``bench/decoder.py`` calls it) and re-uses it afterwards.  torch is used here
only; quantcli never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
SEED = 0
CONFIG = dict(d=384, heads=6, layers=6, ffn=1536, vocab=512, context=128)
STEPS, BATCH, LR = 160, 8, 1e-3
BUILD = 4  # bump when the graph or the training code changes what is built
CALIB_WINDOWS, EVAL_WINDOWS = 128, 64
NAME = "decoder_lm"
MASKED = -1e9


# -- text and tokenizer (no torch) ----------------------------------------------------------------------------
def corpus() -> str:
    """The pydoc topics (prose), then the stdlib's top-level modules sorted by name (code)."""
    import sysconfig

    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("*.py"))]
    return "\n".join(parts)


def train_tokenizer(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text[i:i + 100_000] for i in range(0, len(text), 100_000)], trainer)
    return tok


# -- the ONNX graph (numpy weights -> onnx; no torch) ---------------------------------------------------------
def decoder_graph(w: dict[str, np.ndarray], cfg: dict, kv: bool, name: str = NAME) -> onnx.ModelProto:
    """A pre-LN decoder as ONNX (opset 17): token + learned position embeddings (Gather), per layer LayerNorm ->
    q/k/v MatMul+Add -> causal attention -> out-projection, residual, LayerNorm -> fc1 -> erf GELU -> fc2,
    residual; final LayerNorm and an untied ``lm_head`` MatMul.  Weights are [in, out] (``x @ W``).  With ``kv``
    the keys and values of earlier positions come in as ``past_key.i`` / ``past_value.i`` and leave, with the new
    ones appended, as ``present_key.i`` / ``present_value.i``."""
    d, heads, layers = cfg["d"], cfg["heads"], cfg["layers"]
    hd = d // heads
    nodes, inits = [], []

    def const(n, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(op, ins, out, n, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=n, **kw))
        return out

    def linear(prefix, x):
        h = node("MatMul", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"])], f"{prefix}/MatMul_out",
                 f"/{prefix}/MatMul")
        return node("Add", [h, const(f"{prefix}.bias", w[f"{prefix}.bias"])], f"{prefix}/out", f"/{prefix}/Add")

    def layernorm(prefix, x):
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])], f"{prefix}/out",
                    f"/{prefix}/LayerNormalization", axis=-1, epsilon=1e-5)

    const("heads_shape", np.array([0, 0, heads, hd], np.int64))
    const("model_shape", np.array([0, 0, d], np.int64))
    const("attn_scale", np.array(1.0 / math.sqrt(hd), np.float32))
    const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    const("one", np.array(1.0, np.float32))
    const("half", np.array(0.5, np.float32))
    const("step", np.array(1, np.int64))
    const("masked", np.array(MASKED, np.float32))
    const("zero_f", np.array(0.0, np.float32))
    seq = node("Squeeze", [node("Shape", ["input_ids"], "seq_len_1d", "/seq_shape", start=1, end=2)], "seq_len",
               "/seq_squeeze")
    if kv:
        past = node("Squeeze", [node("Shape", ["past_key.0"], "past_len_1d", "/past_shape", start=2, end=3)],
                    "past_len", "/past_squeeze")
    else:
        past = const("past_len", np.array(0, np.int64))
    total = node("Add", [past, seq], "total_len", "/total_len")
    qpos = node("Range", [past, total, "step"], "position_ids", "/positions")
    kpos = node("Range", [const("zero_i", np.array(0, np.int64)), total, "step"], "key_positions", "/key_positions")
    later = node("Greater", [node("Unsqueeze", [kpos, const("axis0", np.array([0], np.int64))], "kpos_row",
                                  "/kpos_row"),
                             node("Unsqueeze", [qpos, const("axis1", np.array([1], np.int64))], "qpos_col",
                                  "/qpos_col")], "future", "/future")
    mask = node("Where", [later, "masked", "zero_f"], "attn_mask", "/attn_mask")  # [sequence, total]
    tok = node("Gather", [const("model.embed_tokens.weight", w["model.embed_tokens.weight"]), "input_ids"],
               "embed_tokens_out", "/model/embed_tokens/Gather", axis=0)
    pos = node("Gather", [const("model.embed_positions.weight", w["model.embed_positions.weight"]), qpos],
               "embed_positions_out", "/model/embed_positions/Gather", axis=0)
    x = node("Add", [tok, pos], "embed_out", "/model/embed_add")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", cfg["vocab"]])]
    for i in range(layers):
        p = f"model.layers.{i}"
        h = layernorm(f"{p}.ln1", x)
        q, k, v = (node("Reshape", [linear(f"{p}.attn.{n}_proj", h), "heads_shape"], f"{p}/{n}_heads",
                        f"/{p}/attn/{n}_reshape") for n in "qkv")
        q = node("Transpose", [q], f"{p}/q_t", f"/{p}/attn/q_transpose", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}/k_t", f"/{p}/attn/k_transpose", perm=[0, 2, 1, 3])
        v = node("Transpose", [v], f"{p}/v_t", f"/{p}/attn/v_transpose", perm=[0, 2, 1, 3])
        if kv:
            for n in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_{n}.{i}", TensorProto.FLOAT,
                                                            ["batch", heads, "past", hd]))
                outputs.append(helper.make_tensor_value_info(f"present_{n}.{i}", TensorProto.FLOAT,
                                                             ["batch", heads, "total", hd]))
            k = node("Concat", [f"past_key.{i}", k], f"present_key.{i}", f"/{p}/attn/k_concat", axis=2)
            v = node("Concat", [f"past_value.{i}", v], f"present_value.{i}", f"/{p}/attn/v_concat", axis=2)
        kt = node("Transpose", [k], f"{p}/k_tt", f"/{p}/attn/k_transpose2", perm=[0, 1, 3, 2])
        s = node("MatMul", [q, kt], f"{p}/scores", f"/{p}/attn/qk_MatMul")
        s = node("Mul", [s, "attn_scale"], f"{p}/scaled", f"/{p}/attn/scale")
        s = node("Add", [s, mask], f"{p}/masked", f"/{p}/attn/mask_add")
        a = node("Softmax", [s], f"{p}/probs", f"/{p}/attn/softmax", axis=-1)
        c = node("MatMul", [a, v], f"{p}/ctx", f"/{p}/attn/av_MatMul")
        c = node("Transpose", [c], f"{p}/ctx_t", f"/{p}/attn/ctx_transpose", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, "model_shape"], f"{p}/ctx_merged", f"/{p}/attn/ctx_reshape")
        x = node("Add", [x, linear(f"{p}.attn.o_proj", c)], f"{p}/attn_residual", f"/{p}/attn_residual")
        h = linear(f"{p}.mlp.fc1", layernorm(f"{p}.ln2", x))
        e = node("Erf", [node("Div", [h, "sqrt2"], f"{p}/gelu_div", f"/{p}/mlp/gelu_div")], f"{p}/gelu_erf",
                 f"/{p}/mlp/gelu_erf")
        e = node("Add", [e, "one"], f"{p}/gelu_add", f"/{p}/mlp/gelu_add")
        g = node("Mul", [node("Mul", [h, e], f"{p}/gelu_mul", f"/{p}/mlp/gelu_mul"), "half"], f"{p}/gelu_out",
                 f"/{p}/mlp/gelu_half")
        x = node("Add", [x, linear(f"{p}.mlp.fc2", g)], f"{p}/mlp_residual", f"/{p}/mlp_residual")
    x = layernorm("model.norm", x)
    node("MatMul", [x, const("lm_head.weight", w["lm_head.weight"])], "logits", "/lm_head/MatMul")
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantcli-samples")
    model.ir_version = 8
    return model


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for :func:`decoder_graph` drawn at random (GPT-2 style scales): small decoders for tests."""
    rng = np.random.default_rng(seed)
    d, ffn, vocab = cfg["d"], cfg["ffn"], cfg["vocab"]

    def mat(k, n):
        return (rng.normal(size=(k, n)) * 0.6 / math.sqrt(k)).astype(np.float32)

    def vec(n, mean=0.0):
        return (mean + 0.02 * rng.normal(size=n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (rng.normal(size=(vocab, d)) * 0.5).astype(np.float32),
         "model.embed_positions.weight": (rng.normal(size=(cfg["context"], d)) * 0.1).astype(np.float32),
         "model.norm.weight": vec(d, 1.0), "model.norm.bias": vec(d), "lm_head.weight": mat(d, vocab)}
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}"
        for n in ("ln1", "ln2"):
            w[f"{p}.{n}.weight"], w[f"{p}.{n}.bias"] = vec(d, 1.0), vec(d)
        for n, (k, m) in {"attn.q_proj": (d, d), "attn.k_proj": (d, d), "attn.v_proj": (d, d),
                          "attn.o_proj": (d, d), "mlp.fc1": (d, ffn), "mlp.fc2": (ffn, d)}.items():
            w[f"{p}.{n}.weight"], w[f"{p}.{n}.bias"] = mat(k, m), vec(m)
    return w


def empty_past(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past_key.i / past_value.i feeds of the cache model for ``batch`` sequences."""
    out = {}
    for v in model.graph.input:
        if v.name.startswith("past_"):
            dims = v.type.tensor_type.shape.dim
            out[v.name] = np.zeros((batch, dims[1].dim_value, 0, dims[3].dim_value), np.float32)
    return out


# -- training (torch) -----------------------------------------------------------------------------------------
def _torch_model(cfg: dict):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    d, heads = cfg["d"], cfg["heads"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(d, cfg["ffn"]), nn.Linear(cfg["ffn"], d)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.ln1(x)

            def split(z):
                return z.view(b, t, heads, d // heads).transpose(1, 2)

            a = F.scaled_dot_product_attention(split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h)),
                                               is_causal=True)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg["vocab"], d)
            self.embed_positions = nn.Embedding(cfg["context"], d)
            self.layers = nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.norm = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, cfg["vocab"], bias=False)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
            for blk in self.layers:  # GPT-2: residual projections scaled by depth
                for lin in (blk.o_proj, blk.fc2):
                    nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg["layers"]))

        def forward(self, ids):
            x = self.embed_tokens(ids) + self.embed_positions.weight[: ids.shape[1]]
            for blk in self.layers:
                x = blk(x)
            return self.lm_head(self.norm(x))

    return Decoder()


def _bigram_init(model, train_ids: np.ndarray, cfg: dict) -> None:
    """Start from the training text's bigram statistics: token embeddings drawn at random (each row zero-mean, unit
    variance, so the final LayerNorm passes them through while the layers' outputs are still small) and an lm_head
    fitted by least squares so that embedding @ lm_head ~ log P(next | current) (rank d of the V x V table).  The
    training budget here (a few hundred thousand tokens) is far too small to leave the unigram plateau from a random
    start (seen: loss stuck at the held-out unigram cross-entropy, 5.35 nats); from here the layers learn what
    the bigram table cannot say."""
    import torch

    v, d = cfg["vocab"], cfg["d"]
    counts = np.zeros((v, v))
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    logp = np.log((counts + 0.1) / (counts + 0.1).sum(1, keepdims=True))
    logp -= logp.mean(1, keepdims=True)
    e = np.random.default_rng(SEED).normal(size=(v, d))
    e = (e - e.mean(1, keepdims=True)) / e.std(1, keepdims=True)
    head = np.linalg.lstsq(e, logp, rcond=None)[0]
    with torch.no_grad():
        model.embed_tokens.weight.copy_(torch.from_numpy(e.astype(np.float32)))
        model.lm_head.weight.copy_(torch.from_numpy(np.ascontiguousarray(head.T).astype(np.float32)))


def _numpy_weights(model) -> dict[str, np.ndarray]:
    """The torch state dict under decoder_graph's names, Linear weights transposed to [in, out]."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.detach().numpy().astype(np.float32)
        name = k.replace("model.", "")
        name = {"embed_tokens.weight": "model.embed_tokens.weight",
                "embed_positions.weight": "model.embed_positions.weight"}.get(name, name)
        if name.startswith("layers."):
            name = "model." + name.replace(".q_proj", ".attn.q_proj").replace(".k_proj", ".attn.k_proj").replace(
                ".v_proj", ".attn.v_proj").replace(".o_proj", ".attn.o_proj").replace(".fc1", ".mlp.fc1").replace(
                ".fc2", ".mlp.fc2")
        if name.startswith("norm."):
            name = "model." + name
        if a.ndim == 2 and "embed" not in name:
            a = np.ascontiguousarray(a.T)
        out[name] = a
    return out


def _nll(logits: np.ndarray, ids: np.ndarray) -> float:
    lg = logits[:, :-1].astype(np.float64)
    top = lg.max(-1, keepdims=True)
    logz = top[..., 0] + np.log(np.exp(lg - top).sum(-1))
    return float((logz - np.take_along_axis(lg, ids[:, 1:, None], -1)[..., 0]).mean())


def build(out: Path, steps: int = STEPS, log=print) -> dict:
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(CONFIG)
    text = corpus()
    tok = train_tokenizer(text, cfg["vocab"])
    tok.save(str(out / f"{NAME}-tokenizer.json"))
    ids = np.array(tok.encode(text).ids, np.int64)
    cut = int(len(ids) * 0.95)
    train_ids, held = ids[:cut], ids[cut:]
    seq = cfg["context"]
    log(f"{NAME}: {len(text)} characters -> {len(ids)} tokens ({cut} training)")
    model = _torch_model(cfg)
    _bigram_init(model, train_ids, cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=LR,
                            betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(train_ids) - seq - 1, BATCH)
        xb = torch.from_numpy(np.stack([train_ids[s:s + seq + 1] for s in starts]))
        loss = F.cross_entropy(model(xb[:, :-1]).reshape(-1, cfg["vocab"]), xb[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    w = _numpy_weights(model)
    plain, cached = decoder_graph(w, cfg, kv=False), decoder_graph(w, cfg, kv=True)
    onnx.save(plain, out / f"{NAME}.onnx")
    onnx.save(cached, out / f"{NAME}-kv.onnx")
    calib = np.stack([train_ids[s:s + seq] for s in rng.integers(0, len(train_ids) - seq, CALIB_WINDOWS)])
    windows = np.stack([held[i:i + seq] for i in range(0, len(held) - seq, seq)][:EVAL_WINDOWS])
    np.savez(out / f"{NAME}-calib.npz", input_ids=calib)
    np.savez(out / f"{NAME}-calib-kv.npz", input_ids=calib, **empty_past(cached, len(calib)))
    np.savez(out / f"{NAME}-eval.npz", input_ids=windows)
    with torch.no_grad():
        ref = model(torch.from_numpy(windows[:4])).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s_plain = ort.InferenceSession(str(out / f"{NAME}.onnx"), so, providers=["CPUExecutionProvider"])
    s_kv = ort.InferenceSession(str(out / f"{NAME}-kv.onnx"), so, providers=["CPUExecutionProvider"])
    got = s_plain.run(None, {"input_ids": windows})[0]
    # the cache model: the first 96 tokens as a prompt, then the rest one token at a time, must give the same logits
    first = s_kv.run(None, {"input_ids": windows[:2, :96], **empty_past(cached, 2)})
    names = [o.name for o in s_kv.get_outputs()]
    past = {n.replace("present", "past"): v for n, v in zip(names[1:], first[1:])}
    steps_out = [first[0]]
    for t in range(96, seq):
        r = s_kv.run(None, {"input_ids": windows[:2, t:t + 1], **past})
        past = {n.replace("present", "past"): v for n, v in zip(names[1:], r[1:])}
        steps_out.append(r[0])
    kv_err = float(np.abs(np.concatenate(steps_out, 1) - got[:2]).max())
    info = {"config": cfg, "steps": steps, "batch": BATCH, "tokens_seen": steps * BATCH * seq,
            "train_seconds": round(time.time() - t0, 1), "corpus_tokens": int(len(ids)),
            "heldout_perplexity": round(math.exp(_nll(got, windows)), 3),
            "max_abs_ort_vs_torch": float(np.abs(got[:4] - ref).max()), "max_abs_kv_vs_full": kv_err,
            "parameters": int(sum(a.size for a in w.values())), "python": sys.version.split()[0]}
    (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"{NAME}: held-out perplexity {info['heldout_perplexity']} per token, |ORT - torch| "
        f"{info['max_abs_ort_vs_torch']:.1e}, |cache - full| {kv_err:.1e}")
    assert info["max_abs_ort_vs_torch"] < 1e-3 and kv_err < 1e-3, info
    return info


def cache_key(steps: int = STEPS) -> str:
    """What the built files depend on: the recipe (configuration, training schedule, BUILD) and the text."""
    h = hashlib.sha256(json.dumps([BUILD, CONFIG, steps, BATCH, LR, CALIB_WINDOWS, EVAL_WINDOWS]).encode())
    h.update(corpus().encode("utf-8"))
    return h.hexdigest()[:12]


def default_dir() -> Path:
    base = Path(os.environ.get("QUANTCLI_SAMPLES_CACHE", Path.home() / ".cache" / "quantcli-samples"))
    return base / f"{NAME}-{cache_key()}"


def ensure(directory: Path | None = None, python: str | None = None, log=print) -> Path:
    """The directory holding the built sample: re-used when complete, else built (with ``python``, an interpreter
    that has torch, when this one has none)."""
    directory = directory or default_dir()
    if (directory / "build.json").exists():
        return directory
    try:
        import torch  # noqa: F401
    except ImportError:
        if not python:
            raise SystemExit(f"{NAME} is not built in {directory} and torch is missing here: "
                             "pip install torch==2.13.0 tokenizers (or pass an interpreter that has them)")
        import subprocess

        subprocess.run([python, __file__, "--out", str(directory)], check=True)
        return directory
    build(directory, log=log)
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=STEPS)
    args = ap.parse_args()
    out = args.out or default_dir()
    build(out, args.steps)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
