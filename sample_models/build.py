"""Rebuild the sample models and their data from scikit-learn's bundled digits data set (offline).

    python sample_models/build.py [cnn] [transformer] [mobile] [outlier] [mlp] [lm]   # default: all; needs
                                                    # torch==2.13.0, scikit-learn, onnx, onnxruntime, numpy

Both models are trained with PyTorch (CPU, seeded, deterministic algorithms, one thread) and then written
as ONNX graphs node by node with onnx.helper, copying the trained weights, so the graph structure is
exactly what the quantizer should meet (Conv + BatchNormalization kept apart, LayerNormalization and an
Erf-based GELU in the transformer).  torch is used here only; quantcli never imports it.

Files written next to this script:
  digits_cnn.onnx, digits_cnn-calib.npz (input), digits_cnn-eval.npz (input, labels)
  tiny_transformer.onnx, tiny_transformer-calib.npz (input_ids), tiny_transformer-eval.npz (input_ids, labels)
  mobile_digits.onnx, mobile_digits-calib.npz (input), mobile_digits-eval.npz (input, labels)
  outlier_cnn.onnx (digits_cnn with an activation outlier; uses the digits_cnn data files)
  digits_mlp.onnx, digits_mlp-calib.npz (input), digits_mlp-eval.npz (input, labels)
  tiny_lm.onnx, tiny_lm-calib.npz (input_ids), tiny_lm-eval.npz (input_ids), tiny_lm-vocab.json (the characters):
    a character-level decoder trained on CPython's own pydoc topics text (ships with Python)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
OPSET = 17
SEED = 0


def setup() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def split():
    """Stratified split: 360 held-out evaluation samples; the calibration set comes from the training part."""
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, eval_idx = train_test_split(idx, test_size=360, stratify=digits.target, random_state=SEED)
    return digits.data.astype(np.float32), digits.target.astype(np.int64), np.sort(train_idx), np.sort(eval_idx)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int = 64) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        sched.step()
    model.eval()


def t2n(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def save_model(graph: onnx.GraphProto, path: Path, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="quantcli-sample-builder", doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def ort_logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def normalize(x: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Standardize with the training part's mean and std."""
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    return ((x - mean) / std).astype(np.float32), mean, std


def write_data_and_check(name: str, x: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                         eval_idx: np.ndarray, model: nn.Module | None = None) -> str:
    """<name>-calib.npz (128 training samples) and <name>-eval.npz (the held-out samples, labels); returns a line
    with the model's held-out accuracy in ONNX Runtime (and its largest difference to torch, given the model)."""
    calib = x[train_idx][np.random.default_rng(SEED).permutation(len(train_idx))[:128]]
    np.savez(HERE / f"{name}-calib.npz", input=calib)
    np.savez(HERE / f"{name}-eval.npz", input=x[eval_idx], labels=labels[eval_idx])
    got = ort_logits(HERE / f"{name}.onnx", {"input": x[eval_idx]})
    line = f"{name}: eval accuracy {float((got.argmax(1) == labels[eval_idx]).mean() * 100):.2f}% (ONNX Runtime)"
    if model is not None:
        with torch.no_grad():
            ref = model(torch.from_numpy(x[eval_idx])).numpy()
        line += f", max |ORT - torch| {np.abs(got - ref).max():.2e}"
    return line


# -- the CNN --------------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64))
        self.down2 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(128),
                                   nn.ReLU())
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.down1(self.stem(x))
        x = F.relu(self.pw(self.dw(x)) + x)
        x = self.down2(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cnn_images(data: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(data.reshape(-1, 1, 8, 8) / 16.0).float()
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).numpy()


def append_conv_bn(nodes: list, inits: list, prefix: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, x: str,
                   relu: bool) -> str:
    """Conv (its bias, if any) -> BatchNormalization (running statistics) [-> Relu]; returns the output name."""
    w = f"{prefix}.conv.weight"
    inits.append(numpy_helper.from_array(t2n(conv.weight), w))
    ins = [x, w]
    if conv.bias is not None:
        inits.append(numpy_helper.from_array(t2n(conv.bias), f"{prefix}.conv.bias"))
        ins.append(f"{prefix}.conv.bias")
    k = conv.kernel_size[0]
    nodes.append(helper.make_node("Conv", ins, [f"{prefix}/conv_out"], name=f"{prefix}/conv",
                                  kernel_shape=[k, k], strides=list(conv.stride), pads=[conv.padding[0]] * 4,
                                  group=conv.groups))
    for p, t in (("scale", bn.weight), ("bias", bn.bias), ("mean", bn.running_mean), ("var", bn.running_var)):
        inits.append(numpy_helper.from_array(t2n(t), f"{prefix}.bn.{p}"))
    out = f"{prefix}/bn_out"
    nodes.append(helper.make_node("BatchNormalization", [f"{prefix}/conv_out"] + [f"{prefix}.bn.{p}" for p in
                                  ("scale", "bias", "mean", "var")], [out], name=f"{prefix}/bn",
                                  epsilon=bn.eps, momentum=0.9))
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{prefix}/relu_out"], name=f"{prefix}/relu"))
        return f"{prefix}/relu_out"
    return out


def image_classifier_graph(name: str, nodes: list, inits: list, x: str, fc: nn.Linear) -> onnx.GraphProto:
    """GlobalAveragePool -> Flatten -> Gemm head on ``x``, and the graph with input/output declared."""
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["head/pool_out"], name="head/pool"))
    nodes.append(helper.make_node("Flatten", ["head/pool_out"], ["head/flat_out"], name="head/flatten", axis=1))
    inits += [numpy_helper.from_array(t2n(fc.weight), "head.fc.weight"),
              numpy_helper.from_array(t2n(fc.bias), "head.fc.bias")]
    nodes.append(helper.make_node("Gemm", ["head/flat_out", "head.fc.weight", "head.fc.bias"], ["logits"],
                                  name="head/fc", transB=1))
    return helper.make_graph(nodes, name,
                             [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)


def cnn_graph(m: DigitsCNN) -> onnx.GraphProto:
    nodes, inits = [], []
    x = append_conv_bn(nodes, inits, "stem", m.stem[0], m.stem[1], "input", True)
    x = append_conv_bn(nodes, inits, "down1", m.down1[0], m.down1[1], x, True)
    h = append_conv_bn(nodes, inits, "dsblock/dw", m.dw[0], m.dw[1], x, True)
    h = append_conv_bn(nodes, inits, "dsblock/pw", m.pw[0], m.pw[1], h, False)
    nodes.append(helper.make_node("Add", [h, x], ["dsblock/add_out"], name="dsblock/add"))
    nodes.append(helper.make_node("Relu", ["dsblock/add_out"], ["dsblock/relu_out"], name="dsblock/relu"))
    x = append_conv_bn(nodes, inits, "down2", m.down2[0], m.down2[1], "dsblock/relu_out", True)
    return image_classifier_graph("digits_cnn", nodes, inits, x, m.fc)


def build_cnn(data, labels, train_idx, eval_idx) -> None:
    setup()
    images, mean, std = normalize(cnn_images(data), train_idx)
    model = DigitsCNN()
    train(model, torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]), epochs=12, lr=3e-3)
    save_model(cnn_graph(model), HERE / "digits_cnn.onnx",
               "Digits CNN: Conv+BN+ReLU stem, strided Conv, depthwise-separable residual block, GAP, Gemm. "
               f"Input: 8x8 digits upsampled to 32x32, (x/16 - {mean:.4f}) / {std:.4f}.")
    print(write_data_and_check("digits_cnn", images, labels, train_idx, eval_idx, model)
          + f", normalization mean {mean:.4f} std {std:.4f}")


# -- the transformer ------------------------------------------------------------------------------------------
D, HEADS, FFN, LAYERS, VOCAB, SEQ = 64, 4, 256, 2, 17, 64


class Layer(nn.Module):
    """Post-LN transformer layer; ``causal``: each position attends to itself and earlier ones only."""

    def __init__(self, d: int = D, heads: int = HEADS, ffn: int = FFN, causal: bool = False) -> None:
        super().__init__()
        self.d, self.heads, self.causal = d, heads, causal
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, s, _ = x.shape
        hd = self.d // self.heads
        q = self.q(x).view(b, s, self.heads, hd).transpose(1, 2)
        k = self.k(x).view(b, s, self.heads, hd).permute(0, 2, 3, 1)
        v = self.v(x).view(b, s, self.heads, hd).transpose(1, 2)
        scores = (q @ k) * (1.0 / math.sqrt(hd))
        if self.causal:
            scores = scores + causal_mask(s)
        att = torch.softmax(scores, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, self.d)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


MASKED = -1e9  # additive mask value for future positions (finite: exp underflows to exactly 0)


def causal_mask(s: int) -> torch.Tensor:
    return torch.triu(torch.full((s, s), MASKED), diagonal=1)


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(SEQ, D))
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.cls = nn.Linear(D, 10)

    def forward(self, ids):
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.cls(x.mean(dim=1))


def transformer_graph(m: TinyTransformer) -> onnx.GraphProto:
    nodes, inits = [], []
    x = transformer_body(m, nodes, inits)
    pooled = _node(nodes, "ReduceMean", [x], "head/pooled", "head/mean", axes=[1], keepdims=0)
    w = _const(inits, "head.cls.weight", t2n(m.cls.weight).T.copy())
    b = _const(inits, "head.cls.bias", t2n(m.cls.bias))
    h = _node(nodes, "MatMul", [pooled, w], "head/cls_matmul_out", "head/cls_matmul")
    _node(nodes, "Add", [h, b], "logits", "head/cls_bias_add")
    return helper.make_graph(
        nodes, "tiny_transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)


def _const(inits: list, name: str, arr) -> str:
    inits.append(numpy_helper.from_array(np.asarray(arr), name))
    return name


def _node(nodes: list, op: str, ins: list, out: str, name: str, **kw) -> str:
    nodes.append(helper.make_node(op, ins, [out], name=name, **kw))
    return out


def _linear(nodes: list, inits: list, prefix: str, lin: nn.Linear, x: str) -> str:
    w = _const(inits, f"{prefix}.weight", t2n(lin.weight).T.copy())
    b = _const(inits, f"{prefix}.bias", t2n(lin.bias))
    h = _node(nodes, "MatMul", [x, w], f"{prefix}/matmul_out", f"{prefix}/matmul")
    return _node(nodes, "Add", [h, b], f"{prefix}/out", f"{prefix}/bias_add")


def transformer_body(m: nn.Module, nodes: list, inits: list) -> str:
    """Embeddings and the layers of ``m`` (a TinyTransformer or TinyLM) as ONNX nodes; returns the last hidden state."""

    def const(name, arr):
        return _const(inits, name, arr)

    def node(op, ins, out, name, **kw):
        return _node(nodes, op, ins, out, name, **kw)

    def linear(prefix, lin: nn.Linear, x):
        return _linear(nodes, inits, prefix, lin, x)

    d, heads = m.layers[0].d, m.layers[0].heads
    hd = d // heads
    causal = m.layers[0].causal
    const("heads_shape", np.array([0, 0, heads, hd], np.int64))
    const("model_shape", np.array([0, 0, d], np.int64))
    const("zero", np.array([0], np.int64))
    const("axis0", np.array([0], np.int64))
    const("attn_scale", np.array(1.0 / math.sqrt(hd), np.float32))
    const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    const("one", np.array(1.0, np.float32))
    const("half", np.array(0.5, np.float32))
    const("embed.tok", t2n(m.tok.weight))
    const("embed.pos", t2n(m.pos))
    tok = node("Gather", ["embed.tok", "input_ids"], "embed/tok_out", "embed/tok", axis=0)
    seq = node("Shape", ["input_ids"], "embed/seq_len", "embed/shape", start=1, end=2)
    pos = node("Slice", ["embed.pos", "zero", seq, "axis0"], "embed/pos_out", "embed/pos_slice")
    x = node("Add", [tok, pos], "embed/out", "embed/add")
    if causal:  # the [SEQ, SEQ] additive mask sliced to the input's length on both axes
        const("attn.mask", t2n(causal_mask(m.pos.shape[0])))
        const("axes01", np.array([0, 1], np.int64))
        const("zeros2", np.array([0, 0], np.int64))
        both = node("Concat", [seq, seq], "attn/mask_end", "attn/mask_end", axis=0)
        mask = node("Slice", ["attn.mask", "zeros2", both, "axes01"], "attn/mask_out", "attn/mask_slice")
    for i, layer in enumerate(m.layers):
        p = f"layer{i}"
        q = linear(f"{p}/attn/q", layer.q, x)
        k = linear(f"{p}/attn/k", layer.k, x)
        v = linear(f"{p}/attn/v", layer.v, x)
        q = node("Transpose", [node("Reshape", [q, "heads_shape"], f"{p}/attn/q_heads", f"{p}/attn/q_reshape")],
                 f"{p}/attn/q_t", f"{p}/attn/q_transpose", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "heads_shape"], f"{p}/attn/k_heads", f"{p}/attn/k_reshape")],
                 f"{p}/attn/k_t", f"{p}/attn/k_transpose", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, "heads_shape"], f"{p}/attn/v_heads", f"{p}/attn/v_reshape")],
                 f"{p}/attn/v_t", f"{p}/attn/v_transpose", perm=[0, 2, 1, 3])
        s = node("MatMul", [q, k], f"{p}/attn/scores", f"{p}/attn/qk_matmul")
        s = node("Mul", [s, "attn_scale"], f"{p}/attn/scaled", f"{p}/attn/scale")
        if causal:
            s = node("Add", [s, mask], f"{p}/attn/masked", f"{p}/attn/mask_add")
        a = node("Softmax", [s], f"{p}/attn/probs", f"{p}/attn/softmax", axis=-1)
        c = node("MatMul", [a, v], f"{p}/attn/ctx", f"{p}/attn/av_matmul")
        c = node("Transpose", [c], f"{p}/attn/ctx_t", f"{p}/attn/ctx_transpose", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, "model_shape"], f"{p}/attn/ctx_merged", f"{p}/attn/ctx_reshape")
        o = linear(f"{p}/attn/o", layer.o, c)
        r = node("Add", [x, o], f"{p}/attn/residual_out", f"{p}/attn/residual")
        x = node("LayerNormalization", [r, const(f"{p}.ln1.scale", t2n(layer.ln1.weight)),
                                        const(f"{p}.ln1.bias", t2n(layer.ln1.bias))], f"{p}/ln1_out", f"{p}/ln1",
                 axis=-1, epsilon=layer.ln1.eps)
        h = linear(f"{p}/ffn/fc1", layer.ff1, x)
        e = node("Erf", [node("Div", [h, "sqrt2"], f"{p}/ffn/gelu_div_out", f"{p}/ffn/gelu_div")],
                 f"{p}/ffn/gelu_erf_out", f"{p}/ffn/gelu_erf")
        e = node("Add", [e, "one"], f"{p}/ffn/gelu_add_out", f"{p}/ffn/gelu_add")
        g = node("Mul", [node("Mul", [h, e], f"{p}/ffn/gelu_mul_out", f"{p}/ffn/gelu_mul"), "half"],
                 f"{p}/ffn/gelu_out", f"{p}/ffn/gelu_half")
        h = linear(f"{p}/ffn/fc2", layer.ff2, g)
        r = node("Add", [x, h], f"{p}/ffn/residual_out", f"{p}/ffn/residual")
        x = node("LayerNormalization", [r, const(f"{p}.ln2.scale", t2n(layer.ln2.weight)),
                                        const(f"{p}.ln2.bias", t2n(layer.ln2.bias))], f"{p}/ln2_out", f"{p}/ln2",
                 axis=-1, epsilon=layer.ln2.eps)
    return x


def build_transformer(data, labels, train_idx, eval_idx) -> None:
    setup()
    ids = data.astype(np.int64)  # 64 pixels per image, each an intensity token 0..16
    model = TinyTransformer()
    train(model, torch.from_numpy(ids[train_idx]), torch.from_numpy(labels[train_idx]), epochs=60, lr=2e-3)
    path = HERE / "tiny_transformer.onnx"
    save_model(transformer_graph(model), path,
               "Tiny post-LN transformer encoder classifier over digits as 64 intensity tokens (vocab 17): "
               "d_model 64, 4 heads, FFN 256 with erf GELU, 2 layers, mean pooling.")
    calib = ids[train_idx][np.random.default_rng(SEED).permutation(len(train_idx))[:128]]
    np.savez(HERE / "tiny_transformer-calib.npz", input_ids=calib)
    np.savez(HERE / "tiny_transformer-eval.npz", input_ids=ids[eval_idx], labels=labels[eval_idx])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids[eval_idx])).numpy()
    got = ort_logits(path, {"input_ids": ids[eval_idx]})
    short = ort_logits(path, {"input_ids": ids[eval_idx][:1, :32]})
    assert short.shape == (1, 10)
    acc = float((got.argmax(1) == labels[eval_idx]).mean() * 100)
    print(f"tiny_transformer: eval accuracy {acc:.2f}% (ONNX Runtime), max |ORT - torch| "
          f"{np.abs(got - ref).max():.2e}; runs with batch 1, sequence 32")


# -- the decoder LM -------------------------------------------------------------------------------------------
LM_D, LM_HEADS, LM_FFN, LM_LAYERS, LM_SEQ = 128, 4, 512, 2, 64


class TinyLM(nn.Module):
    """Character-level decoder: causal post-LN layers and a next-character head at every position."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, LM_D)
        self.pos = nn.Parameter(torch.randn(LM_SEQ, LM_D) * 0.1)
        self.layers = nn.ModuleList(Layer(LM_D, LM_HEADS, LM_FFN, causal=True) for _ in range(LM_LAYERS))
        self.head = nn.Linear(LM_D, vocab)

    def forward(self, ids):
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def lm_text() -> tuple[str, list[str]]:
    """English prose that ships with CPython (the pydoc topics), and its characters as the vocabulary."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    return text, sorted(set(text))


def lm_graph(m: TinyLM, vocab: int) -> onnx.GraphProto:
    nodes, inits = [], []
    x = transformer_body(m, nodes, inits)
    w = _const(inits, "head.lm.weight", t2n(m.head.weight).T.copy())
    b = _const(inits, "head.lm.bias", t2n(m.head.bias))
    h = _node(nodes, "MatMul", [x, w], "head/lm_matmul_out", "head/lm_matmul")
    _node(nodes, "Add", [h, b], "logits", "head/lm_bias_add")
    return helper.make_graph(
        nodes, "tiny_lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])], inits)


def build_lm(steps: int = 1500, batch: int = 32) -> None:
    setup()
    text, chars = lm_text()
    ids = np.array([chars.index(c) for c in text], np.int64)
    cut = int(len(ids) * 0.9)
    train_ids, held = ids[:cut], ids[cut:]
    model = TinyLM(len(chars))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(SEED)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(train_ids) - LM_SEQ - 1, batch)
        xb = torch.from_numpy(np.stack([train_ids[s:s + LM_SEQ + 1] for s in starts]))
        loss = F.cross_entropy(model(xb[:, :-1]).reshape(-1, len(chars)), xb[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    path = HERE / "tiny_lm.onnx"
    save_model(lm_graph(model, len(chars)), path,
               f"Character-level decoder LM trained on CPython's pydoc topics (vocab {len(chars)} characters): "
               f"d_model {LM_D}, {LM_HEADS} heads, FFN {LM_FFN} with erf GELU, {LM_LAYERS} causal layers, "
               f"context {LM_SEQ}; logits for the next character at every position.")
    calib_starts = rng.integers(0, len(train_ids) - LM_SEQ, 128)
    np.savez(HERE / "tiny_lm-calib.npz", input_ids=np.stack([train_ids[s:s + LM_SEQ] for s in calib_starts]))
    windows = np.stack([held[i:i + LM_SEQ] for i in range(0, len(held) - LM_SEQ, LM_SEQ)][:256])
    np.savez(HERE / "tiny_lm-eval.npz", input_ids=windows)
    (HERE / "tiny_lm-vocab.json").write_text(__import__("json").dumps(chars) + "\n")
    with torch.no_grad():
        ref = model(torch.from_numpy(windows)).numpy()
    got = ort_logits(path, {"input_ids": windows})
    nll = -np.take_along_axis(got[:, :-1] - np.log(np.exp(got[:, :-1]).sum(-1, keepdims=True)),
                              windows[:, 1:, None], -1).mean()
    print(f"tiny_lm: held-out perplexity {np.exp(nll):.2f} per character (ONNX Runtime), max |ORT - torch| "
          f"{np.abs(got - ref).max():.2e}")


# -- the MobileNet-style CNN -----------------------------------------------------------------------------------
class MobileDigits(nn.Module):
    """MobileNet-v1 style: a stem, depthwise-separable blocks with BatchNorm + ReLU, GAP, a linear head."""

    WIDTHS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2)]

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        blocks = []
        for cin, cout, stride in self.WIDTHS:
            blocks.append(nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()))
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mobile_graph(m: MobileDigits) -> onnx.GraphProto:
    nodes, inits = [], []
    x = append_conv_bn(nodes, inits, "stem", m.stem[0], m.stem[1], "input", True)
    for i, b in enumerate(m.blocks):
        x = append_conv_bn(nodes, inits, f"block{i}/dw", b[0], b[1], x, True)
        x = append_conv_bn(nodes, inits, f"block{i}/pw", b[3], b[4], x, True)
    return image_classifier_graph("mobile_digits", nodes, inits, x, m.fc)


def spread_channel_scales(model: MobileDigits, factor: float = 10.0) -> None:
    """Spread the per-channel scales of every depthwise layer with the ReLU scaling symmetry, exactly.

    relu(k * x) = k * relu(x) for k > 0, so multiplying a depthwise layer's BatchNorm (gamma, beta) by k_c and
    dividing the next pointwise layer's input channel c by k_c leaves the network's function unchanged.
    BatchNorm makes a trained network blind to these scales, and in real MobileNets folding BatchNorm into
    depthwise weights gives channel ranges that differ by orders of magnitude; k_c is log-uniform in
    [1/factor, factor] (seeded) to reproduce that here.
    """
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for b in model.blocks:
            bn, pw = b[1], b[3]
            k = torch.from_numpy(np.exp(rng.uniform(-np.log(factor), np.log(factor), bn.num_features))).float()
            bn.weight.mul_(k)
            bn.bias.mul_(k)
            pw.weight.div_(k.view(1, -1, 1, 1))


def build_mobile(data, labels, train_idx, eval_idx) -> None:
    setup()
    images, mean, std = normalize(cnn_images(data), train_idx)
    model = MobileDigits()
    train(model, torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]), epochs=15, lr=3e-3)
    with torch.no_grad():
        before = model(torch.from_numpy(images[eval_idx])).numpy()
    spread_channel_scales(model)
    with torch.no_grad():
        after = model(torch.from_numpy(images[eval_idx])).numpy()
    print(f"mobile_digits: channel-scale spread changes the logits by at most {np.abs(after - before).max():.2e}")
    save_model(mobile_graph(model), HERE / "mobile_digits.onnx",
               "MobileNet-v1 style digits classifier: depthwise-separable blocks with BatchNorm and ReLU. "
               f"Input: 8x8 digits upsampled to 32x32, (x/16 - {mean:.4f}) / {std:.4f}.")
    print(write_data_and_check("mobile_digits", images, labels, train_idx, eval_idx))


# -- the activation-outlier CNN (derived from digits_cnn) -------------------------------------------------------
def build_outlier(scale: float = 128.0, channel: int | None = None) -> None:
    """digits_cnn with one channel of its residual stream scaled by ``scale``, exactly preserving the function.

    Channel c of down1's output is multiplied by ``scale`` (its BatchNorm gamma and beta), the depthwise conv
    reading it divides channel c back, the pointwise BatchNorm multiplies its output channel c so both operands
    of the residual Add carry the same scale, and down2 divides its input channel c.  The residual stream then
    holds one channel with a ``scale``x wider range than the others -- an activation outlier on a tensor with
    several consumers, which cross-layer equalization cannot reach.
    """
    model = onnx.load(str(HERE / "digits_cnn.onnx"))
    inits = {t.name: t for t in model.graph.initializer}

    def arr(name):
        return numpy_helper.to_array(inits[name]).copy()

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    if channel is None:  # the channel with the largest folded BatchNorm output scale
        channel = int(np.argmax(np.abs(arr("down1.bn.scale"))))
    for bn in ("down1.bn", "dsblock/pw.bn"):
        for p in ("scale", "bias"):
            v = arr(f"{bn}.{p}")
            v[channel] *= scale
            put(f"{bn}.{p}", v)
    w = arr("dsblock/dw.conv.weight")
    w[channel] /= scale
    put("dsblock/dw.conv.weight", w)
    w = arr("down2.conv.weight")
    w[:, channel] /= scale
    put("down2.conv.weight", w)
    model.graph.name = "outlier_cnn"
    model.doc_string = (f"digits_cnn with channel {channel} of the residual stream scaled by {scale:g} (function "
                        "unchanged): an activation outlier that per-tensor activation ranges cannot absorb.")
    onnx.checker.check_model(model, full_check=True)
    path = HERE / "outlier_cnn.onnx"
    onnx.save(model, str(path))
    with np.load(HERE / "digits_cnn-eval.npz") as z:
        x, y = z["input"], z["labels"]
    ref, got = ort_logits(HERE / "digits_cnn.onnx", {"input": x}), ort_logits(path, {"input": x})
    print(f"outlier_cnn: channel {channel} x{scale:g}; max |logits - digits_cnn| {np.abs(got - ref).max():.2e}; "
          f"eval accuracy {float((got.argmax(1) == y).mean() * 100):.2f}% (uses the digits_cnn data files)")


# -- the MLP ----------------------------------------------------------------------------------------------------
MLP_HIDDEN = 768


class DigitsMLP(nn.Module):
    """64 pixels -> 768 -> 768 -> 10: a Gemm-heavy classifier whose batch-1 time is reading its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, MLP_HIDDEN), nn.Linear(MLP_HIDDEN, MLP_HIDDEN), nn.Linear(MLP_HIDDEN, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def mlp_graph(m: DigitsMLP) -> onnx.GraphProto:
    nodes, inits, x = [], [], "input"
    for i, fc in enumerate((m.fc1, m.fc2, m.fc3), start=1):
        inits += [numpy_helper.from_array(t2n(fc.weight), f"fc{i}.weight"),
                  numpy_helper.from_array(t2n(fc.bias), f"fc{i}.bias")]
        out = "logits" if i == 3 else f"fc{i}/out"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        x = out
        if i < 3:
            nodes.append(helper.make_node("Relu", [x], [f"fc{i}/relu_out"], name=f"fc{i}/relu"))
            x = f"fc{i}/relu_out"
    return helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)


def build_mlp(data, labels, train_idx, eval_idx) -> None:
    setup()
    x, mean, std = normalize(data / 16.0, train_idx)
    model = DigitsMLP()
    train(model, torch.from_numpy(x[train_idx]), torch.from_numpy(labels[train_idx]), epochs=30, lr=1e-3)
    save_model(mlp_graph(model), HERE / "digits_mlp.onnx",
               "Digits MLP: 64 pixels -> Gemm 768 + Relu -> Gemm 768 + Relu -> Gemm 10. "
               f"Input: the 8x8 digit flattened, (x/16 - {mean:.4f}) / {std:.4f}.")
    print(write_data_and_check("digits_mlp", x, labels, train_idx, eval_idx, model))


def main() -> None:
    data, labels, train_idx, eval_idx = split()
    which = set(sys.argv[1:]) or {"cnn", "transformer", "mobile", "outlier", "mlp", "lm"}
    if "cnn" in which:
        build_cnn(data, labels, train_idx, eval_idx)
    if "transformer" in which:
        build_transformer(data, labels, train_idx, eval_idx)
    if "mobile" in which:
        build_mobile(data, labels, train_idx, eval_idx)
    if "outlier" in which:
        build_outlier()
    if "mlp" in which:
        build_mlp(data, labels, train_idx, eval_idx)
    if "lm" in which:
        build_lm()


if __name__ == "__main__":
    main()
