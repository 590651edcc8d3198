"""Result objects -> one self-contained HTML page (``--report out.html``): inline CSS and SVG, no script, no
network.  The verdict and summary first, then the same tables the terminal shows (:mod:`.table`), why nodes
stayed float, what the transforms did per layer, per-tensor histograms with the chosen range and the clipped
share (when a calibration artifact is at hand), and the settings and manifest.  Every chart has a text
alternative (``role="img"`` with a title and ``aria-label``).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from ..results import AnalyzeResult, CalibrationResult, CompareResult, ConvertResult, InspectResult, RunResult
from .table import Table, acceptance_table, compare_table, fmt_db, size_text

HIST_BARS = 64
MAX_HISTOGRAMS = 48

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f24;
padding:0 1rem}h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:2rem 0 .6rem;border-bottom:1px solid #d0d7de}
.verdict{font-weight:700;padding:.4rem .8rem;border-radius:6px;display:inline-block}.pass{background:#dafbe1;color:#116329}
.fail{background:#ffebe9;color:#a40e26}.info{background:#ddf4ff;color:#0a3069}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}.card{border:1px solid #d0d7de;border-radius:8px;padding:.6rem .9rem;min-width:9rem}
.card dt{font-size:.8rem;color:#57606a}.card dd{margin:0;font-size:1.2rem;font-weight:600}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.9rem}th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left}
th{background:#f6f8fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:.8rem}
figure{margin:0;border:1px solid #d0d7de;border-radius:8px;padding:.5rem}figcaption{font-size:.8rem;word-break:break-all}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}ul.notes li{margin:.2rem 0}
"""


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def table_html(t: Table, caption: str | None = None) -> str:
    head = "".join(f'<th scope="col"{" class=num" if i in t.right else ""}>{esc(c)}</th>'
                   for i, c in enumerate(t.columns)) if t.header else ""
    rows = "".join("<tr>" + "".join(f'<td{" class=num" if i in t.right else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in t.rows)
    cap = f"<caption>{esc(caption or t.title)}</caption>" if (caption or t.title) else ""
    return f"<table>{cap}{'<thead><tr>' + head + '</tr></thead>' if head else ''}<tbody>{rows}</tbody></table>"


def histogram_svg(name: str, obs, lo: float, hi: float) -> str:
    """Bars of the observed histogram (square-root height), the chosen range shaded, the clipped share said."""
    counts = np.asarray(obs.hist, np.float64)
    if counts.sum() <= 0 or not obs.width:
        return ""
    edges = obs.hist_lo + obs.width * np.arange(len(counts) + 1)
    lo_i = max(0, int(np.searchsorted(edges, obs.min, side="right")) - 1)
    hi_i = min(len(counts), int(np.searchsorted(edges, obs.max, side="left")) + 1)
    counts, edges = counts[lo_i:hi_i], edges[lo_i:hi_i + 1]
    groups = np.array_split(np.arange(len(counts)), min(HIST_BARS, len(counts)))
    bars = np.array([counts[g].sum() for g in groups])
    x0, x1 = float(edges[0]), float(edges[-1])
    span = (x1 - x0) or 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    clipped = float(counts[(centers < lo) | (centers > hi)].sum() / max(counts.sum(), 1))
    w, h = 260.0, 90.0
    bw = w / len(bars)
    top = math.sqrt(bars.max()) or 1.0
    rects = "".join(f'<rect x="{i * bw:.2f}" y="{h - h * math.sqrt(b) / top:.2f}" width="{max(bw - .5, .5):.2f}" '
                    f'height="{h * math.sqrt(b) / top:.2f}" fill="#0969da"/>' for i, b in enumerate(bars))
    rx0 = w * (max(lo, x0) - x0) / span
    rx1 = w * (min(hi, x1) - x0) / span
    label = (f"{name}: values {obs.min:.4g} to {obs.max:.4g}; quantization range {lo:.4g} to {hi:.4g}; "
             f"{100 * clipped:.2f}% of sampled values clipped")
    return (f'<figure><svg role="img" aria-label="{esc(label)}" viewBox="0 0 {w:.0f} {h + 14:.0f}" width="100%">'
            f"<title>{esc(label)}</title>"
            f'<rect x="{rx0:.2f}" y="0" width="{max(rx1 - rx0, 1):.2f}" height="{h:.0f}" fill="#fff8c5"/>{rects}'
            f'<line x1="{rx0:.2f}" x2="{rx0:.2f}" y1="0" y2="{h:.0f}" stroke="#bf8700" stroke-width="1.5"/>'
            f'<line x1="{rx1:.2f}" x2="{rx1:.2f}" y1="0" y2="{h:.0f}" stroke="#bf8700" stroke-width="1.5"/>'
            f'<text x="0" y="{h + 12:.0f}" font-size="10">{esc(f"{x0:.3g}")}</text>'
            f'<text x="{w:.0f}" y="{h + 12:.0f}" font-size="10" text-anchor="end">{esc(f"{x1:.3g}")}</text></svg>'
            f"<figcaption>{esc(name)}: range [{lo:.4g}, {hi:.4g}], clipped {100 * clipped:.2f}%</figcaption></figure>")


def _histograms(artifact_path) -> str:
    if not artifact_path or not Path(str(artifact_path)).is_file():
        return ""
    from ..calibration.artifact import load_artifact

    try:
        art = load_artifact(artifact_path)
    except Exception:  # the report never fails over an optional picture
        return ""
    ranges = art.ranges()
    names = sorted(art.observers)[:MAX_HISTOGRAMS]
    figs = "".join(histogram_svg(n, art.observers[n], *ranges[n]) for n in names)
    more = len(art.observers) - len(names)
    return (f"<h2>Activation histograms and chosen ranges</h2><p>{len(art.observers)} tensors, method "
            f"{esc(art.settings.get('method'))} over {art.samples} samples; the shaded band is the range the "
            f"quantized model uses{f' ({more} more in the artifact)' if more > 0 else ''}.</p>"
            f'<div class="hists">{figs}</div>')


def _cards(items: list[tuple[str, str]]) -> str:
    return '<dl class="cards">' + "".join(f'<div class="card"><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>'
                                          for k, v in items) + "</dl>"


def _notes(notes) -> str:
    return "<h2>Notes</h2><ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""


def _convert(r: ConvertResult) -> str:
    cov = f"{100 * r.coverage.mac_share:.1f}%" if r.coverage else "n/a"
    parts = [_cards([("precision", f"{r.precision} {r.mode}"), ("quantized nodes", str(len(r.quantized_nodes))),
                     ("kept float", str(len(r.float_nodes))), ("INT8 MAC coverage", cov),
                     ("size", f"{size_text(r.size_before)} → {size_text(r.size_after)}")])]
    if r.float_nodes:
        t = Table("Nodes kept float, and why", ["node", "reason", "detail"])
        for n, why in sorted(r.float_nodes.items()):
            t.add(n, why.reason.value, str(why))
        parts.append("<h2>Kept float</h2>" + table_html(t))
    if r.transforms:
        parts.append("<h2>Transforms per layer</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in r.transforms) + "</ul>")
    checks = Table("Post-write check against FP32 (one sample)", ["output", "cosine", "SQNR dB"], right=(1, 2))
    for c in r.checks:
        checks.add(c.name, f"{c.cosine:.5f}", fmt_db(c.sqnr_db))
    parts.append(table_html(checks))
    parts.append(_notes(r.notes))
    parts.append(_histograms((r.manifest.get("settings") or {}).get("calibration")))
    return "".join(parts)


def _compare(r: CompareResult) -> str:
    return table_html(compare_table(r)) + _notes(r.notes)


def _body(r) -> tuple[str, str, str | None]:
    """(title, body, verdict class) for a result."""
    if isinstance(r, RunResult):
        body = (table_html(acceptance_table(r.criteria)) if r.criteria else "") + _convert(r.convert) + \
            "<h2>Accuracy, latency, size</h2>" + _compare(r.compare)
        return f"quantcli run: {r.convert.output}", body, "pass" if r else "fail"
    if isinstance(r, CompareResult):
        return f"quantcli compare: {r.quantized}", _compare(r), None if r.max_drop is None else ("pass" if r else "fail")
    if isinstance(r, ConvertResult):
        return f"quantcli convert: {r.output}", _convert(r), "info"
    if isinstance(r, CalibrationResult):
        t = Table("Ranges", ["tensor", "lo", "hi"], right=(1, 2))
        for n, (lo, hi) in sorted(r.ranges.items()):
            t.add(n, f"{lo:.4g}", f"{hi:.4g}")
        return f"quantcli calibrate: {r.output}", table_html(t) + _histograms(r.output), "info"
    if isinstance(r, AnalyzeResult):
        t = Table("Most sensitive first", ["#", "node", "op", "MACs %", "alone: drop pts", "alone: SQNR dB"],
                  right=(0, 3, 4, 5))
        for i, n in enumerate(r.nodes, 1):
            t.add(str(i), n["node"], n["op"], f"{100 * n['mac_share']:.1f}", f"{n['alone_drop']:.2f}",
                  fmt_db(n["alone_sqnr_db"]))
        return f"quantcli analyze: {r.model}", table_html(t), "info"
    if isinstance(r, InspectResult):
        return f"quantcli inspect: {r.model}", _cards([("INT8 MAC coverage", str(r))]), None if r.min_coverage is None \
            else ("pass" if r else "fail")
    raise TypeError(f"no HTML report for {type(r).__name__}")


def to_html(result) -> str:
    from .render import to_jsonable

    title, body, verdict = _body(result)
    line = f"{'PASS' if verdict == 'pass' else 'FAIL' if verdict == 'fail' else 'DONE'}: {result}"
    manifest = json.dumps(to_jsonable(getattr(result, "manifest", {})), indent=1, sort_keys=True)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
            f'<p class="verdict {verdict or "info"}" role="status">{esc(line)}</p></header><main>{body}'
            f"<h2>Settings and manifest</h2><details><summary>what made this, from what, with which settings"
            f"</summary><pre>{esc(manifest)}</pre></details></main></body></html>\n")
