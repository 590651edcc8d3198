"""Weight-only INT4 on the decoder sample, side by side in one run: FP32, quantcli (RTN / GPTQ / AWQ, blocks 32 and
64), onnxruntime's MatMulNBitsQuantizer (RTN default, HQQ, GPTQ) and NNCF's compress_weights (INT4, data-free and
AWQ + scale estimation), all on the KV-cache export of ``sample_models/decoder_lm.py`` (13.8M parameters).

Columns: next-token perplexity on the held-out windows (64 x 128 tokens, full windows with an empty past) and its
change against FP32, next-token agreement with FP32, milliseconds per token decoding at batch 1 with the KV cache
(a 32-token prompt, then 64 single-token steps; every variant runs the same tokens, in alternating order, ``--rounds``
times; the ratio to FP32 is the median of the per-round ratios), file size against FP32, quantization wall time and
the quantizer's peak RSS (each quantizer runs in its own process).

    python bench/decoder.py [--rounds 7] [--threads 1] [--only quantcli,ort] [--torch-python PY]

The sample is built once into ~/.cache/quantcli-samples (needs torch==2.13.0 and tokenizers: with
``--torch-python`` another interpreter that has them builds it).  Needs the bench extra (onnx-ir for onnxruntime's
quantizer, nncf); HQQ needs torch in this interpreter and is skipped without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_models"))

import decoder_lm  # noqa: E402

PROMPT, STEPS = 32, 64


def variants(blocks: list[int]) -> list[str]:
    out = []
    for b in blocks:
        out += [f"quantcli rtn b{b}", f"quantcli gptq b{b}", f"quantcli awq b{b}"]
    for b in blocks:
        out += [f"ort rtn b{b}", f"ort rtn+gather acc4 b{b}", f"ort hqq b{b}", f"ort gptq b{b}"]
    for b in blocks:
        out += [f"nncf int4 b{b}", f"nncf int4sym b{b}", f"nncf awq+se b{b}"]
    return out


# -- quantizers (each in its own process: time and peak RSS) ----------------------------------------------------
class _Reader:
    """onnxruntime CalibrationDataReader over the calibration windows (one window per call, empty past)."""

    def __init__(self, data: dict[str, np.ndarray], count: int = 128) -> None:
        self.rows = [{k: v[i:i + 1] for k, v in data.items()} for i in range(min(count, len(data["input_ids"])))]
        self.i = 0

    def get_next(self):
        self.i += 1
        return self.rows[self.i - 1] if self.i <= len(self.rows) else None

    def rewind(self):
        self.i = 0

    def __iter__(self):
        self.rewind()
        return iter(self.rows)


def quantize(name: str, model: Path, calib: Path, out: Path) -> None:
    tool, *algo, block = name.split()
    algo, block = " ".join(algo), int(block[1:])
    data = dict(np.load(calib))
    if tool == "quantcli":
        from quantcli import pipeline
        from quantcli.recipe import CalibrateSettings, ConvertSettings, Precision, WeightAlgorithm

        pipeline.convert(model, out, ConvertSettings(precision=Precision.INT4, algorithm=WeightAlgorithm(algo),
                                                     block_size=block),
                         calib_settings=CalibrateSettings(data=str(calib)))
    elif tool == "ort":
        import logging

        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        if algo == "rtn":
            cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block)
        elif algo == "rtn+gather acc4":
            cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, accuracy_level=4,
                                                   op_types_to_quantize=("MatMul", "Gather"))
        elif algo == "hqq":
            cfg = mnq.HQQWeightOnlyQuantConfig(block_size=block)
        else:
            cfg = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(data), block_size=block)
        q = mnq.MatMulNBitsQuantizer(onnx.load(model), algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(out), use_external_data_format=False)
    else:
        import nncf

        kw = {}
        mode = nncf.CompressWeightsMode.INT4_SYM if algo == "int4sym" else nncf.CompressWeightsMode.INT4_ASYM
        if algo == "awq+se":
            rows = [{k: v[i:i + 1] for k, v in data.items()} for i in range(len(data["input_ids"]))]
            kw = dict(dataset=nncf.Dataset(rows), awq=True, scale_estimation=True, subset_size=len(rows))
        q = nncf.compress_weights(onnx.load(model), mode=mode, ratio=1.0,
                                  group_size=block, **kw)
        onnx.save(q, out)


def run_quantizer(name: str, model: Path, calib: Path, out: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--quantize-one", name, "--model", str(model), "--calib", str(calib),
           "--out", str(out)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0 or not out.exists():
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:120]}
    info = json.loads(p.stdout.strip().splitlines()[-1])
    info["wall"] = time.perf_counter() - t0
    return info


# -- evaluation -------------------------------------------------------------------------------------------------
def _session(path: Path, threads: int):
    from quantcli.runtime.session import make_session

    return make_session(path, threads=threads, spinning=False)


def evaluate(sess, proto: onnx.ModelProto, windows: np.ndarray, batch: int = 8) -> np.ndarray:
    """Logits of every window (an empty past)."""
    outs = []
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        outs.append(sess.run(["logits"], {"input_ids": ids, **decoder_lm.empty_past(proto, len(ids))})[0])
    return np.concatenate(outs)


def decode_seconds(sess, proto: onnx.ModelProto, tokens: np.ndarray) -> float:
    """Seconds per token over STEPS single-token steps after a PROMPT-token prefill, batch 1."""
    names = [o.name for o in sess.get_outputs()]
    r = sess.run(None, {"input_ids": tokens[None, :PROMPT], **decoder_lm.empty_past(proto, 1)})
    past = {n.replace("present", "past"): v for n, v in zip(names[1:], r[1:])}
    t0 = time.perf_counter()
    for t in range(PROMPT, PROMPT + STEPS):
        r = sess.run(None, {"input_ids": tokens[None, t:t + 1], **past})
        past = {n.replace("present", "past"): v for n, v in zip(names[1:], r[1:])}
    return (time.perf_counter() - t0) / STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample-dir", type=Path, default=None)
    ap.add_argument("--torch-python", default=None, help="an interpreter with torch to build the sample with")
    ap.add_argument("--blocks", default="32,64")
    ap.add_argument("--only", default="", help="comma-separated prefixes of the variants to run (default: all)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the quantized models here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="re-use the models (and their quantization time) in --work")
    ap.add_argument("--quantize-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--calib", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quantize_one:
        t0 = time.perf_counter()
        quantize(args.quantize_one, args.model, args.calib, args.out)
        print(json.dumps({"seconds": time.perf_counter() - t0,
                          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    from rich.console import Console
    from rich.table import Table

    from quantcli.cpu import detect
    from quantcli.metrics import next_token_nll, token_agreement_count

    console = Console(width=150)
    sample = decoder_lm.ensure(args.sample_dir, python=args.torch_python, log=console.print)
    model = sample / f"{decoder_lm.NAME}-kv.onnx"
    calib = sample / f"{decoder_lm.NAME}-calib-kv.npz"
    windows = np.load(sample / f"{decoder_lm.NAME}-eval.npz")["input_ids"]
    info = json.loads((sample / "build.json").read_text())
    work = args.work or Path(tempfile.mkdtemp(prefix="quantcli-decoder-"))
    work.mkdir(parents=True, exist_ok=True)
    names = [v for v in variants([int(b) for b in args.blocks.split(",")])
             if not args.only or any(v.startswith(p) for p in args.only.split(","))]
    console.print(f"CPU: {detect().summary()}; onnxruntime {__import__('onnxruntime').__version__}; "
                  f"{args.threads} thread(s); sample {sample.name}: {info['parameters'] / 1e6:.1f}M parameters, "
                  f"{info['tokens_seen']} training tokens", markup=False, highlight=False)
    paths: dict[str, Path] = {"FP32": model}
    quant: dict[str, dict] = {"FP32": {}}
    for name in names:
        out = work / (name.replace(" ", "_").replace("+", "_") + ".onnx")
        meta = out.with_suffix(".json")
        if args.reuse and meta.exists() and out.exists():
            r = json.loads(meta.read_text())
        else:
            r = run_quantizer(name, model, calib, out, args.timeout)
            meta.write_text(json.dumps(r))
        console.print(f"  {name}: " + (r["error"] if "error" in r else f"{r['seconds']:.1f} s, {r['rss_mb']:.0f} MB"),
                      markup=False, highlight=False)
        quant[name] = r
        if "error" not in r:
            paths[name] = out

    sessions = {}
    for k, p in list(paths.items()):
        try:
            sessions[k] = _session(p, args.threads)
        except Exception as exc:  # noqa: BLE001 - a quantizer's output this onnxruntime refuses: a table row
            quant[k] = {"error": "onnxruntime refuses it: " + str(exc).split("FAIL : ")[-1][:90]}
            del paths[k]
    protos = {k: onnx.load(p, load_external_data=False) for k, p in paths.items()}
    logits = {k: evaluate(s, protos[k], windows) for k, s in sessions.items()}
    tokens = windows[1]
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    for k in order:  # warm-up
        decode_seconds(sessions[k], protos[k], tokens)
    for r in range(args.rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            per_round[k].append(decode_seconds(sessions[k], protos[k], tokens))
    size0 = model.stat().st_size
    nll0, count = next_token_nll(logits["FP32"], windows)
    ppl0 = float(np.exp(nll0 / count))
    rows = []
    for k in list(paths) + [n for n in names if n not in paths]:
        if k not in paths:
            rows.append({"variant": k, "error": quant[k]["error"]})
            continue
        nll, _ = next_token_nll(logits[k], windows)
        agree, total = token_agreement_count(logits["FP32"], logits[k])
        ratios = [a / b for a, b in zip(per_round[k], per_round["FP32"])]
        rows.append({"variant": k, "perplexity": float(np.exp(nll / count)),
                     "agreement": agree / total, "ms_per_token": 1000 * float(np.median(per_round[k])),
                     "speed_ratio": float(np.median(ratios)), "size_mb": paths[k].stat().st_size / 1e6,
                     "size_ratio": paths[k].stat().st_size / size0,
                     "seconds": quant[k].get("seconds"), "rss_mb": quant[k].get("rss_mb")})
    t = Table(title=f"{decoder_lm.NAME}: {len(windows)} held-out windows of {windows.shape[1]} tokens; decode: "
                    f"{PROMPT}-token prompt + {STEPS} steps at batch 1, {args.rounds} alternating rounds",
              title_justify="left")
    for col in ("variant", "perplexity", "vs FP32", "agreement", "ms/token", "x FP32", "size MB", "x size",
                "quantize s", "peak RSS MB"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        if "error" in r:
            t.add_row(r["variant"], "failed: " + r["error"], *[""] * 8)
            continue
        q = r["seconds"]
        t.add_row(r["variant"], f"{r['perplexity']:.3f}", f"{100 * (r['perplexity'] / ppl0 - 1):+.2f}%",
                  f"{100 * r['agreement']:.2f}%", f"{r['ms_per_token']:.2f}", f"{r['speed_ratio']:.2f}",
                  f"{r['size_mb']:.1f}", f"{r['size_ratio']:.3f}", "" if q is None else f"{q:.1f}",
                  "" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}")
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps({"sample": info, "threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
