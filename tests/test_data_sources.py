"""Data sources behind one interface: image folders with recipe preprocessing (presets), text with a
tokenizer.json, WAV audio windows, and seeded / class-balanced calibration subsets -- on real files and real
ONNX Runtime sessions.  The bar: the digits CNN calibrated and evaluated straight from a folder of PNG images
gives exactly what the .npz path gives on the same images; tiny_lm calibrated from text through its tokenizer
gives exactly the statistics of its token-id .npz."""

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from quantcli import pipeline
from quantcli.cli.app import app
from quantcli.data.config import (AudioSettings, Color, DataSettings, DType, ImageSettings, Layout, Padding,
                                  SampleBy, TextSettings)
from quantcli.data.images import preprocess
from quantcli.data.sampling import choose, quotas
from quantcli.data.sources import Dataset, input_specs
from quantcli.data.specs import InputSpec
from quantcli.errors import QuantcliError
from quantcli.recipe import CompareSettings, data_settings, load_recipe

PIL = pytest.importorskip("PIL.Image")
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "digits_cnn.onnx"
DIGITS_RECIPE = ROOT / "recipes" / "digits-cnn-images.toml"
sys.path.insert(0, str(SAMPLES))
invoke = CliRunner().invoke


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits samples as PNG folders (calib flat, eval one folder per class) and, read back from those PNG
    files by plain Pillow + numpy (the reference), the same images as .npz."""
    import digits_images

    out = tmp_path_factory.mktemp("digits")
    digits_images.write(out)
    for part in ("calib", "eval"):
        files = sorted((out / part).rglob("*.png"))
        x = np.stack([_reference(f) for f in files])
        labels = {"labels": np.array([int(f.parent.name[-1]) for f in files])} if part == "eval" else {}
        np.savez(out / f"{part}.npz", input=x, **labels)
    return out


def _reference(path: Path) -> np.ndarray:
    """What recipes/digits-cnn-images.toml declares, spelled out: grey, bilinear to 32x32, / 240, mean/std."""
    with PIL.open(path) as im:
        im = im.convert("L").resize((32, 32), PIL.Resampling.BILINEAR)
    return ((np.asarray(im, np.float32) * np.float32(1 / 240) - np.float32(0.3054)) / np.float32(0.3237))[None]


def test_digits_cnn_from_image_folders_equals_the_npz_path(digits, tmp_path):
    recipe = ["--recipe", str(DIGITS_RECIPE)]
    for src, name in ((digits / "calib", "folder"), (digits / "calib.npz", "npz")):
        r = invoke(app, ["calibrate", str(DIGITS), *recipe, "--data", str(src), "-o", str(tmp_path / f"{name}.json"),
                         "-q"])
        assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("folder", "npz"))
    assert a["tensors"] == b["tensors"] and a["samples"] == b["samples"] == 128
    # convert reads the recorded folder and its preprocessing back (empirical bias correction) with no recipe
    r = invoke(app, ["convert", str(DIGITS), "--calibration", str(tmp_path / "folder.json"), "-o",
                     str(tmp_path / "q.onnx"), "--json", str(tmp_path / "conv.json"), "-q"])
    assert r.exit_code == 0, r.output
    assert any("bias correction (empirical)" in n for n in json.loads((tmp_path / "conv.json").read_text())["notes"])
    data = load_recipe(DIGITS_RECIPE).data
    settings = CompareSettings(runs=2, warmup=1)
    folder = pipeline.compare(DIGITS, tmp_path / "q.onnx", settings.__class__(data=str(digits / "eval"), runs=2,
                                                                             warmup=1), data=data)
    npz = pipeline.compare(DIGITS, tmp_path / "q.onnx", CompareSettings(data=str(digits / "eval.npz"), runs=2,
                                                                        warmup=1))
    assert folder.samples == npz.samples == 360
    assert folder.top1 == npz.top1 and folder.outputs[0].sqnr_db == npz.outputs[0].sqnr_db
    shipped = pipeline.compare(DIGITS, DIGITS, CompareSettings(data=str(SAMPLES / "digits_cnn-eval.npz"), runs=2,
                                                                warmup=1))
    assert folder.top1[0] == pytest.approx(shipped.top1[0])  # the PNGs are the digits the .npz holds: 99.44%


def test_sample_by_class_balances_the_calibration_subset_and_the_reports_show_it(digits, tmp_path):
    args = ["calibrate", str(DIGITS), "--recipe", str(DIGITS_RECIPE), "--data", str(digits / "eval"), "--samples",
            "25", "-o", str(tmp_path / "c.json"), "--json", str(tmp_path / "c.res.json"), "--report",
            str(tmp_path / "c.html")]
    r = invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "c.res.json").read_text())
    assert res["sample_by"] == "class" and res["samples"] == 25  # class folders: balanced by default
    assert list(res["classes"].values()) == [3] * 5 + [2] * 5 and list(res["classes"])[0] == "digit0"
    assert "samples per class (class): digit0 3" in r.output
    page = (tmp_path / "c.html").read_text()
    assert "Calibration samples per class" in page and 'aria-label="Calibration samples per class (class): digit0 3' in page
    again = invoke(app, args[:-6] + ["-o", str(tmp_path / "d.json"), "-q"])
    assert again.exit_code == 0
    other = invoke(app, args[:-6] + ["--seed", "7", "-o", str(tmp_path / "e.json"), "-q"])
    assert other.exit_code == 0
    c, d, e = (json.loads((tmp_path / f"{n}.json").read_text())["tensors"] for n in "cde")
    assert c == d and c != e  # deterministic for a seed, another seed draws other images


def test_sampling_rules():
    assert quotas([10, 1, 10], 9) == [4, 1, 4] and quotas([2, 2], 9) == [2, 2] and quotas([5, 5, 5], 4) == [2, 1, 1]
    labels = np.repeat([0, 1, 2], [50, 5, 45])
    chosen = choose(100, 30, SampleBy.CLASS, labels, 0, "x")
    assert list(np.bincount(labels[chosen])) == [13, 5, 12] and list(chosen) == sorted(chosen)
    assert list(choose(100, 30, SampleBy.RANDOM, None, 3, "x")) == list(choose(100, 30, SampleBy.RANDOM, None, 3, "x"))
    assert choose(100, 30, SampleBy.FIRST, labels, 0, "x") is None
    with pytest.raises(QuantcliError, match="--sample-by class needs labels"):
        choose(100, 30, SampleBy.CLASS, None, 0, "data.npz")


def test_npz_first_samples_stay_as_before_and_labels_can_stratify(tmp_path):
    ev = SAMPLES / "digits_cnn-eval.npz"
    r = invoke(app, ["calibrate", str(DIGITS), "--data", str(ev), "--samples", "40", "-o", str(tmp_path / "a.json"),
                     "-q"])
    assert r.exit_code == 0, r.output
    art = json.loads((tmp_path / "a.json").read_text())
    assert not {"sample_by", "seed", "data_config"} & set(art["settings"])  # .npz artifacts as they were
    first = np.load(ev)
    np.savez(tmp_path / "first.npz", input=first["input"][:40])
    r = invoke(app, ["calibrate", str(DIGITS), "--data", str(tmp_path / "first.npz"), "-o", str(tmp_path / "b.json"),
                     "-q"])
    assert json.loads((tmp_path / "b.json").read_text())["tensors"] == art["tensors"]
    r = invoke(app, ["calibrate", str(DIGITS), "--data", str(ev), "--samples", "40", "--sample-by", "class", "-o",
                     str(tmp_path / "c.json"), "--json", str(tmp_path / "c.res.json"), "-q"])
    assert r.exit_code == 0, r.output
    assert list(json.loads((tmp_path / "c.res.json").read_text())["classes"].values()) == [4] * 10
    assert "is .npz/.npy data, already model inputs" in _cli_error(  # a preset means nothing there
        ["calibrate", str(DIGITS), "--data", str(ev), "--data-preset", "imagenet", "-o", str(tmp_path / "d.json")])


def _image(path: Path, w: int, h: int) -> Path:
    """A real photo-like RGB image (smooth gradients plus seeded noise), saved as PNG."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    rgb = np.clip(rgb + np.random.default_rng(0).normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    PIL.fromarray(rgb).save(path)
    return path


def test_imagenet_preset_is_torchvision_resize_crop_normalize(tmp_path):
    s = data_settings({}, "--data-preset", "imagenet").image
    with PIL.open(_image(tmp_path / "a.png", 300, 200)) as im:
        got = preprocess(im.convert("RGB"), s, np.dtype(np.float32))
        ref = im.convert("RGB").resize((384, 256), PIL.Resampling.BILINEAR).crop((80, 16, 304, 240))
    want = (np.asarray(ref, np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), atol=1e-6)


def test_yolo_letterbox_and_ppocr_height_presets(tmp_path):
    yolo = data_settings({}, "--data-preset", "yolo").image
    with PIL.open(_image(tmp_path / "wide.png", 320, 160)) as im:
        x = preprocess(im.convert("RGB"), yolo, np.dtype(np.float32))
    assert x.shape == (3, 640, 640)
    assert np.allclose(x[:, :160], 114 / 255, atol=1e-6) and np.allclose(x[:, 480:], 114 / 255, atol=1e-6)
    assert x[:, 160:480].std() > 0.05 and 0 <= x.min() and x.max() <= 1
    rec = data_settings({}, "--data-preset", "ppocr-rec").image
    with PIL.open(_image(tmp_path / "line.png", 100, 20)) as im:
        x = preprocess(im.convert("RGB"), rec, np.dtype(np.float32))
        ref = np.asarray(im.convert("RGB").resize((240, 48), PIL.Resampling.BILINEAR), np.float32)[:, :, ::-1]
    assert x.shape == (3, 48, 320) and np.all(x[:, :, 240:] == 0)  # padded right with 0 after normalization
    np.testing.assert_allclose(x[:, :, :240], ((ref / 255 - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)
    nhwc = preprocess(PIL.new("L", (8, 8), 255), ImageSettings(color=Color.GRAY, layout=Layout.NHWC,
                                                                dtype=DType.UINT8, scale=1.0), np.dtype(np.float32))
    assert nhwc.shape == (8, 8, 1) and nhwc.dtype == np.uint8 and nhwc.max() == 255


def _cli_error(args) -> str:
    r = invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("quantcli: error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_bad_image_data_is_one_line_naming_the_file(digits, tmp_path):
    bad = tmp_path / "imgs"
    (bad / "cat").mkdir(parents=True)
    _image(bad / "cat" / "a.png", 40, 40)
    (bad / "cat" / "b.png").write_bytes(b"not a png at all")
    base = ["calibrate", str(DIGITS), "--recipe", str(DIGITS_RECIPE), "-o", str(tmp_path / "c.json")]
    assert "b.png: cannot decode the image" in _cli_error(base + ["--data", str(bad), "--sample-by", "first"])
    assert "expects [batch, 1, 32, 32] (axis 1: 3 != 1)" in _cli_error(
        ["calibrate", str(DIGITS), "--data", str(digits / "calib"), "--data-preset", "imagenet", "-o",
         str(tmp_path / "c.json")])
    assert "no data preset 'nope'" in _cli_error(base + ["--data", str(bad), "--data-preset", "nope"])
    (bad / "loose.png").write_bytes((bad / "cat" / "a.png").read_bytes())
    assert "has both sample files and class sub-folders" in _cli_error(base + ["--data", str(bad)])
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data.image]\nmean = [0.1, 0.2]\n')
    assert "[data.image] mean: 2 values for 3 channel(s)" in _cli_error(
        ["calibrate", str(DIGITS), "--recipe", str(recipe), "--data", str(digits / "calib"), "-o",
         str(tmp_path / "c.json")])


@pytest.mark.parametrize("module, extra, data", [("PIL", "images", "imgs"), ("tokenizers", "text", "t.txt")])
def test_a_missing_decoder_names_its_extra(tmp_path, module, extra, data):
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "a.png", 8, 8)
    (tmp_path / "t.txt").write_text("hello\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data.text]\ntokenizer = "{SAMPLES / "tiny_lm-tokenizer.json"}"\n')
    code = (f"import sys; sys.modules[{module!r}] = None; sys.modules[{module + '.Image'!r}] = None; "
            "from quantcli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "calibrate", str(SAMPLES / "tiny_lm.onnx"), "--recipe",
                           str(recipe), "--data", str(tmp_path / data), "-o", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and f"pip install 'quantcli[{extra}]'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_tiny_lm_calibrated_from_text_with_its_tokenizer_equals_its_token_ids(tmp_path):
    pytest.importorskip("tokenizers")
    lm = SAMPLES / "tiny_lm.onnx"
    r = invoke(app, ["calibrate", str(lm), "--recipe", str(ROOT / "recipes" / "tiny-lm-text.toml"), "-o",
                     str(tmp_path / "text.json"), "-q"])
    assert r.exit_code == 0, r.output
    r = invoke(app, ["calibrate", str(lm), "--data", str(SAMPLES / "tiny_lm-calib.npz"), "-o",
                     str(tmp_path / "ids.json"), "-q"])
    assert r.exit_code == 0, r.output
    text, ids = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("text", "ids"))
    assert text["samples"] == ids["samples"] == 128 and text["tensors"] == ids["tensors"]
    assert text["settings"]["data_config"]["text"]["tokenizer"].startswith("/")  # convert finds it from anywhere


def test_text_lines_make_ids_mask_and_type_ids_as_the_model_asks(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "t.txt").write_text("abc\n\nhello world, longer than eight\n")
    specs = [InputSpec(n, np.dtype(np.int64), ("b", "s")) for n in ("input_ids", "attention_mask", "token_type_ids")]
    cfg = DataSettings(text=TextSettings(tokenizer=str(SAMPLES / "tiny_lm-tokenizer.json"), max_length=8))
    ds = Dataset(tmp_path / "t.txt", specs, config=cfg)
    batch = next(ds.batches(4))
    chars = json.loads((SAMPLES / "tiny_lm-vocab.json").read_text())
    assert ds.num_samples == 2  # the blank line is skipped
    assert batch["input_ids"][0].tolist() == [chars.index(c) for c in "abc"] + [0] * 5
    assert batch["attention_mask"].tolist() == [[1] * 3 + [0] * 5, [1] * 8]
    assert batch["token_type_ids"].sum() == 0 and batch["input_ids"].shape == (2, 8)
    unpadded = Dataset(tmp_path / "t.txt", specs, config=DataSettings(text=TextSettings(
        tokenizer=str(SAMPLES / "tiny_lm-tokenizer.json"), max_length=8, padding=Padding.NONE)))
    assert unpadded.default_batch_size() == 1
    assert [b["attention_mask"].tolist() for b in unpadded.batches(1)] == [[[1] * 3], [[1] * 8]]
    (tmp_path / "t.jsonl").write_text('{"text": "ab", "label": 1}\n{"text": "cd"}\n')
    with pytest.raises(QuantcliError, match=r"t.jsonl:2: some lines have 'label'"):
        Dataset(tmp_path / "t.jsonl", specs, config=cfg)
    (tmp_path / "t.jsonl").write_text('{"text": "ab", "label": 1}\n{"text": "cd", "label": 0}\n{oops\n')
    with pytest.raises(QuantcliError, match=r"t.jsonl:3: not valid JSON"):
        Dataset(tmp_path / "t.jsonl", specs, config=cfg)
    with pytest.raises(QuantcliError, match=r"needs a tokenizer"):
        Dataset(tmp_path / "t.txt", specs)


def _wav(path: Path, signal: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    ints = np.round(np.clip(signal, -1, 1 - 2.0 ** -(8 * width - 1)) * 2 ** (8 * width - 1)).astype(np.int64)
    ints = np.repeat(ints, channels)
    raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :width].tobytes() if width != 1 else \
        (ints + 128).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def test_wav_folders_are_resampled_windowed_and_calibrated(tmp_path):
    from models import audio_classifier

    t = np.arange(8000) / 8000.0  # one second at 8 kHz
    for cls, freq in (("hum", 50), ("tone", 440)):
        (tmp_path / "wav" / cls).mkdir(parents=True)
        _wav(tmp_path / "wav" / cls / "a.wav", 0.5 * np.sin(2 * np.pi * freq * t), 8000, width=2, channels=2)
        _wav(tmp_path / "wav" / cls / "b.wav", 0.25 * np.sin(2 * np.pi * freq * t[:6000]), 8000, width=3)
    onnx.save(audio_classifier(400), tmp_path / "audio.onnx")
    cfg = DataSettings(audio=AudioSettings(sample_rate=4000, window=400, hop=400))
    ds = Dataset(tmp_path / "wav", input_specs(audio_classifier(400)), config=cfg)
    assert ds.num_samples == 2 * (10 + 8) and ds.labels.tolist() == [0] * 18 + [1] * 18
    first = next(ds.samples())["audio"]  # hum/a.wav: 4000 samples at 4 kHz, 10 windows of [1, 400]
    assert first.shape == (10, 1, 400)
    want = 0.5 * np.sin(2 * np.pi * 50 * np.arange(4000) / 4000.0)
    np.testing.assert_allclose(first.reshape(-1), want, atol=2e-4)  # band-limited resampling of a whole period
    cal = pipeline.calibrate(tmp_path / "audio.onnx", tmp_path / "c.json",
                             pipeline.CalibrateSettings(data=str(tmp_path / "wav"), samples=12), data=cfg)
    assert cal.samples == 12 and cal.classes == {"hum": 6, "tone": 6} and cal.sample_by == "class"
    (tmp_path / "wav" / "tone" / "c.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(QuantcliError, match=r"c.wav: not a PCM WAV file"):
        Dataset(tmp_path / "wav", input_specs(audio_classifier(400)), config=cfg)


def test_samples_of_their_own_size_go_one_per_run(tmp_path):
    """No resize: images keep their sizes, so a model with dynamic H/W gets them one at a time (the default
    batch); forcing a larger batch is a one-line error."""
    from models import small_cnn

    (tmp_path / "imgs").mkdir()
    for i, (w, h) in enumerate(((16, 16), (20, 12), (24, 16))):
        _image(tmp_path / "imgs" / f"{i}.png", w, h)
    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    model = onnx.load(tmp_path / "cnn.onnx")
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "hw"
    onnx.save(model, tmp_path / "dyn.onnx")
    ds = Dataset(tmp_path / "imgs", input_specs(model))
    assert ds.default_batch_size() == 1
    assert [b["x"].shape for b in ds.batches(1)] == [(1, 3, 16, 16), (1, 3, 12, 20), (1, 3, 16, 24)]
    with pytest.raises(QuantcliError, match=r"samples of different shapes .* use --batch-size 1"):
        list(ds.batches(2))
    cal = pipeline.calibrate(tmp_path / "dyn.onnx", tmp_path / "c.json",
                             pipeline.CalibrateSettings(data=str(tmp_path / "imgs")))
    assert cal.samples == 3
    raw = data_settings({"image": {"dtype": "uint8"}}, "r.toml: [data]")
    with pytest.raises(QuantcliError, match=r"is uint8: it takes raw pixels; set \[data.image\] scale = 1.0"):
        Dataset(tmp_path / "imgs", input_specs(model), config=raw)


def test_presets_merge_under_the_recipe_and_the_flag_chooses_them(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\npreset = "imagenet"\n[data.image]\ncrop = [200, 200]\n')
    r = load_recipe(recipe)
    assert r.data.preset == "imagenet" and r.data.image.crop == [200, 200] and r.data.image.size == [256]
    fragment = tmp_path / "mine.toml"
    fragment.write_text('[data.image]\ncolor = "bgr"\nresize = "exact"\nsize = [64]\n')
    from quantcli.recipe import recipe_data

    mine = recipe_data(r, str(fragment))  # --data-preset FILE replaces the recipe's preset; its own keys stay
    assert mine.image.color.value == "bgr" and mine.image.size == [64] and mine.image.crop == [200, 200]
    assert mine.image.mean == [0.0]  # nothing of the imagenet preset is left
    fragment.write_text('[convert]\nprecision = "fp16"\n')
    with pytest.raises(QuantcliError, match="a data preset holds one \\[data\\] table"):
        recipe_data(r, str(fragment))
    recipe.write_text('[data.image]\nresize = "squash"\n')
    with pytest.raises(QuantcliError, match=r"r.toml: \[data.image\] resize: 'squash' is not one of"):
        load_recipe(recipe)


def test_run_checks_every_image_before_it_writes_anything(digits, tmp_path):
    import shutil

    shutil.copytree(digits / "eval", tmp_path / "eval")
    (tmp_path / "eval" / "digit9" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = _cli_error(["run", str(DIGITS_RECIPE), "--model", str(DIGITS), "-o", str(tmp_path / "q.onnx"), "--data",
                       str(digits / "calib"), "--eval-data", str(tmp_path / "eval"), "-q"])
    assert "zz_broken.png: cannot decode the image" in line
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "q.onnx.calib.json").exists()
