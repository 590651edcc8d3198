"""The HTML report: one self-contained page (no script, no network) with the verdict, the tables, why nodes stayed
float and histograms with text alternatives, the class histogram of the calibration samples, per-layer output SQNR
along the graph and the sensitivity ranking; rendered by headless Chromium without console errors where it is
installed (CI installs Debian's chromium when it can), including ``quantcli run recipes/digits-cnn-images.toml``
straight from image folders."""

import json
import sys
from pathlib import Path

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from models import cnn_data, small_cnn
from quantcli.cli.app import app


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def reports(tmp_path):
    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    x = cnn_data(64)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "eval.npz", x=x[32:])
    run = CliRunner().invoke
    assert run(app, ["calibrate", str(tmp_path / "cnn.onnx"), "--data", str(tmp_path / "calib.npz"), "-o",
                     str(tmp_path / "c.json"), "--report", str(tmp_path / "cal.html"), "-q"]).exit_code == 0
    r = run(app, ["convert", str(tmp_path / "cnn.onnx"), "--calibration", str(tmp_path / "c.json"), "-o",
                  str(tmp_path / "q.onnx"), "--exclude", "pwconv", "--report", str(tmp_path / "conv.html"), "-q"])
    assert r.exit_code == 0, r.output
    r = run(app, ["compare", "accuracy", str(tmp_path / "cnn.onnx"), str(tmp_path / "q.onnx"), "--data",
                  str(tmp_path / "eval.npz"), "--runs", "4", "--max-drop", "50", "--report", str(tmp_path / "cmp.html"),
                  "-q"])
    assert r.exit_code == 0, r.output
    r = run(app, ["analyze", str(tmp_path / "cnn.onnx"), "--calibration", str(tmp_path / "c.json"), "--eval-data",
                  str(tmp_path / "eval.npz"), "--report", str(tmp_path / "analyze.html"), "--json",
                  str(tmp_path / "analyze.json"), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    """``quantcli run recipes/digits-cnn-images.toml --report``: the digits CNN from PNG folders."""
    pytest.importorskip("PIL")
    tmp_path = tmp_path_factory.mktemp("run")
    sys.path.insert(0, str(ROOT / "sample_models"))
    import digits_images

    digits_images.write(tmp_path / "img")
    r = CliRunner().invoke(app, ["run", str(ROOT / "recipes" / "digits-cnn-images.toml"), "--model",
                                 str(ROOT / "sample_models" / "digits_cnn.onnx"), "-o", str(tmp_path / "q.onnx"),
                                 "--data", str(tmp_path / "img" / "calib"), "--eval-data", str(tmp_path / "img" / "eval"),
                                 "--report", str(tmp_path / "run.html"), "--json", str(tmp_path / "run.json"), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path / "run.html"


def test_run_report_from_image_folders_shows_accuracy_and_the_calibration_classes(run_report):
    body = " ".join(_page(run_report).text)
    assert "PASS: all criteria hold" in body and "top-1 accuracy" in body and "99.44%" in body
    assert "Calibration samples per class" not in body  # the calibration folder is flat: no classes to show
    res = json.loads(run_report.with_suffix(".json").read_text())
    assert res["calibration"]["sample_by"] == "random" and res["calibration"]["classes"] is None


def test_analyze_report_has_sqnr_along_the_graph_and_the_ranking_the_json_has(reports):
    page = _page(reports / "analyze.html")
    res = json.loads((reports / "analyze.json").read_text())
    charts = [a for t, a in zip(page.tags, page.attrs) if t == "svg"]
    along = [a for a in charts if a.get("aria-label", "").startswith("Per-layer output SQNR along the graph")]
    assert len(along) == 1
    in_graph_order = [n["node"] for n in sorted(res["nodes"], key=lambda n: n["graph_index"])]
    label = along[0]["aria-label"]
    assert [label.index(f" {n} ") for n in in_graph_order] == sorted(label.index(f" {n} ") for n in in_graph_order)
    body = " ".join(page.text)
    ranked = [n["node"] for n in res["nodes"]]
    assert "Sensitivity ranking" in body and body.index(ranked[0]) < body.index(ranked[-1], body.index("Sensitivity ranking"))


def _page(path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


def test_reports_are_self_contained_and_say_what_happened(reports):
    for name in ("cal.html", "conv.html", "cmp.html"):
        text = (reports / name).read_text()
        page = _page(reports / name)
        assert "script" not in page.tags and not re.search(r"(src|href)=\"?https?:", text), name
        assert text.startswith("<!doctype html>") and 'role="status"' in text
    conv = _page(reports / "conv.html")
    body = " ".join(conv.text)
    assert "pwconv" in body and "excluded by --exclude" in body  # why a node stayed float
    figures = [a for t, a in zip(conv.tags, conv.attrs) if t == "svg"]
    assert len(figures) >= 5 and all(a.get("role") == "img" and "clipped" in a.get("aria-label", "") for a in figures)
    cmp = " ".join(_page(reports / "cmp.html").text)
    assert "PASS" in cmp and "latency median" in cmp and "top-1 agreement" in cmp


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _shoot(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / f"{page.stem}.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    assert not console, console
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(reports, tmp_path):
    for name in ("conv.html", "analyze.html"):
        _shoot(reports / name, tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (CI installs Debian's chromium)")
def test_run_recipe_report_renders_in_headless_chromium(run_report, tmp_path):
    _shoot(run_report, tmp_path)


def test_max_drop_report_shows_the_search_its_ranking_and_sqnr_along_the_graph(tmp_path):
    samples = ROOT / "sample_models"
    r = CliRunner().invoke(app, ["convert", str(samples / "outlier_cnn.onnx"), "--data",
                                 str(samples / "digits_cnn-calib.npz"), "--eval-data", str(samples / "digits_cnn-eval.npz"),
                                 "--max-drop", "1", "-o", str(tmp_path / "q.onnx"), "--report", str(tmp_path / "md.html"),
                                 "--json", str(tmp_path / "md.json"), "-q"])
    assert r.exit_code == 0, r.output
    search = json.loads((tmp_path / "md.json").read_text())["search"]
    page = _page(tmp_path / "md.html")
    body = " ".join(page.text)
    assert "Mixed precision search" in body and "Bisection over the ranking" in body
    assert [n["node"] for n in search["ranking"]][:len(search["float_nodes"])] == search["float_nodes"]
    label = next(a["aria-label"] for t, a in zip(page.tags, page.attrs)
                 if t == "svg" and a.get("aria-label", "").startswith("Per-layer output SQNR along the graph"))
    along = [n["node"] for n in sorted(search["ranking"], key=lambda n: n["graph_index"])]
    assert along[0] == "stem/conv" and along[-1] == "head/fc"
    assert [label.index(f" {n} ") for n in along] == sorted(label.index(f" {n} ") for n in along)
