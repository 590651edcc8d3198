"""The HTML report: one self-contained page (no script, no network) with the verdict, the tables, why nodes stayed
float and histograms with text alternatives; rendered by headless Chromium without console errors where it is
installed (CI installs Debian's chromium when it can)."""

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
    return tmp_path


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


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(reports, tmp_path):
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--window-size=1000,1400", f"--screenshot={shot}", (reports / "conv.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    assert not console, console
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
