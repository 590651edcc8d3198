"""Result objects -> one self-contained HTML page (``--report out.html``): inline CSS and SVG, no script, no
network.  The verdict and summary first, then the same tables the terminal shows (:mod:`.table`), why nodes
stayed float, what the transforms did per layer, per-tensor histograms with the chosen range and the clipped
share (when a calibration artifact is at hand), the class histogram of the calibration samples, per-layer output
SQNR along the graph and the sensitivity ranking (analyze, convert --max-drop: from the same result fields the
JSON has), and the settings and manifest.  Every chart has a text
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


def bars_svg(label: str, names: list[str], values: list[float], unit: str, color: str = "#0969da") -> str:
    """A bar chart (one bar per name, in the given order) with a text alternative: each bar has a title, its value
    above it and, where there is room, its name below; a bar at or below 0 is drawn as a thin red line."""
    w, h, top_pad = 640.0, 110.0, 12.0
    finite = [v for v in values if math.isfinite(v)]
    top = max(max(finite, default=0.0), 1e-9)
    bw = w / max(len(values), 1)
    chars = int(bw / 6)
    parts = []
    for i, (n, v) in enumerate(zip(names, values)):
        vh = h if not math.isfinite(v) else h * max(v, 0.0) / top
        fill = color if vh > 0 else "#cf222e"
        y = top_pad + h - max(vh, 1.5)
        parts.append(f'<rect x="{i * bw:.2f}" y="{y:.2f}" width="{max(bw - 1, .5):.2f}" height="{max(vh, 1.5):.2f}" '
                     f'fill="{fill}"><title>{esc(n)}: {esc(_num(v))}{esc(unit)}</title></rect>')
        if bw >= 22:
            parts.append(f'<text x="{(i + .5) * bw:.2f}" y="{y - 2:.2f}" font-size="9" text-anchor="middle">'
                         f"{esc(_num(v))}</text>")
        if chars >= 4 or i in (0, len(values) - 1):
            text = n if chars >= len(n) or chars < 4 else n[:chars - 1] + "…"
            anchor = "middle" if chars >= 4 else ("start" if i == 0 else "end")
            x = (i + .5) * bw if chars >= 4 else (0 if i == 0 else w)
            parts.append(f'<text x="{x:.2f}" y="{top_pad + h + 12:.0f}" font-size="9" text-anchor="{anchor}">'
                         f"{esc(text)}</text>")
    return (f'<figure><svg role="img" aria-label="{esc(label)}" viewBox="0 0 {w:.0f} {top_pad + h + 16:.0f}" '
            f'width="100%"><title>{esc(label)}</title>{"".join(parts)}</svg>'
            f"<figcaption>{esc(label)}</figcaption></figure>")


def _num(v: float) -> str:
    return fmt_db(v) if not math.isfinite(v) else f"{v:.3g}"


def _classes(classes: dict | None, sample_by: str) -> str:
    """The class histogram of the calibration samples used (bars and a table)."""
    if not classes:
        return ""
    names, counts = list(classes), list(classes.values())
    label = (f"Calibration samples per class ({sample_by}): " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    return (f"<h2>Calibration samples per class</h2><p>{sum(counts)} samples, picked: {esc(sample_by)}.</p>"
            + bars_svg(label, names, [float(c) for c in counts], " samples", "#8250df"))


def _sensitivity(rows: list[dict], what: str, sqnr_key: str) -> str:
    """Per-layer output SQNR along the graph (bars in graph order) and the ranking table (worst first)."""
    if not rows:
        return ""
    along = sorted(rows, key=lambda n: n.get("graph_index", 0))
    values = [n[sqnr_key] if n.get(sqnr_key) is not None else n["alone_sqnr_db"] for n in along]
    label = (f"Per-layer output SQNR along the graph ({what}), in dB, first to last layer: "
             + ", ".join(f"{n['node']} {fmt_db(v)}" for n, v in zip(along, values)))
    full = any(n.get("full_sqnr_db") is not None for n in rows)
    cols = ["#", "node", "op", "MACs %", "alone: drop pts", "alone: SQNR dB"] + (["in INT8 model: SQNR dB"] if full else [])
    t = Table("Sensitivity ranking, most sensitive first", cols, right=tuple(i for i in range(len(cols)) if i != 1 and i != 2))
    for i, n in enumerate(rows, 1):
        cells = [str(i), n["node"], n["op"], f"{100 * n['mac_share']:.1f}", f"{n['alone_drop']:.2f}",
                 fmt_db(n["alone_sqnr_db"])]
        t.add(*cells, *([fmt_db(n["full_sqnr_db"]) if n.get("full_sqnr_db") is not None else "-"] if full else []))
    return ("<h2>Per-layer output SQNR along the graph</h2>" + bars_svg(label, [n["node"] for n in along], values, " dB")
            + "<h2>Sensitivity ranking</h2>" + table_html(t))


def _search(s) -> str:
    """convert --max-drop: the outcome, the bisection steps, the SQNR chart and the ranking it walked."""
    if s is None:
        return ""
    parts = [f"<h2>Mixed precision search (--max-drop {s.max_drop:g}, {esc(s.metric)})</h2>",
             _cards([("all-INT8 drop", f"{s.all_int8_drop:.2f} pts"), ("drop now", f"{s.drop:.2f} pts"),
                     ("kept in float", str(len(s.float_nodes))), ("budget met", "yes" if s.met else "no")])]
    if s.steps:
        heads = {"float_nodes": "top-ranked nodes kept float", "drop": "drop pts", "sqnr_db": "output SQNR dB",
                 "bias_shifts": "bias correction"}
        t = Table("Bisection over the ranking", [heads.get(k, k) for k in s.steps[0]], right=(0, 1, 2))
        for step in s.steps:
            t.add(*(_num(v) if isinstance(v, float) else v for v in step.values()))
        parts.append(table_html(t))
    parts.append(_sensitivity(s.ranking, "each node quantized alone, ranking samples", "alone_sqnr_db"))
    return "".join(parts)


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
    parts.append(_search(r.search))
    parts.append(_notes(r.notes))
    parts.append(_histograms((r.manifest.get("settings") or {}).get("calibration")))
    return "".join(parts)


def _compare(r: CompareResult) -> str:
    return table_html(compare_table(r)) + _notes(r.notes)


def _body(r) -> tuple[str, str, str | None]:
    """(title, body, verdict class) for a result."""
    if isinstance(r, RunResult):
        cal = r.calibration
        body = (table_html(acceptance_table(r.criteria)) if r.criteria else "") + _convert(r.convert) + \
            "<h2>Accuracy, latency, size</h2>" + _compare(r.compare) + (_classes(cal.classes, cal.sample_by) if cal else "")
        return f"quantcli run: {r.convert.output}", body, "pass" if r else "fail"
    if isinstance(r, CompareResult):
        return f"quantcli compare: {r.quantized}", _compare(r), None if r.max_drop is None else ("pass" if r else "fail")
    if isinstance(r, ConvertResult):
        return f"quantcli convert: {r.output}", _convert(r), "info"
    if isinstance(r, CalibrationResult):
        t = Table("Ranges", ["tensor", "lo", "hi"], right=(1, 2))
        for n, (lo, hi) in sorted(r.ranges.items()):
            t.add(n, f"{lo:.4g}", f"{hi:.4g}")
        return (f"quantcli calibrate: {r.output}", table_html(t) + _classes(r.classes, r.sample_by) + _histograms(r.output),
                "info")
    if isinstance(r, AnalyzeResult):
        cards = _cards([(f"FP32 {r.metric}", f"{r.fp32_metric:.2f}%"), ("all-INT8 drop", f"{r.all_int8_drop:.2f} pts"),
                        ("all-INT8 output SQNR", f"{fmt_db(r.all_int8_sqnr_db)} dB"), ("nodes", str(len(r.nodes)))])
        return (f"quantcli analyze: {r.model}", cards + _sensitivity(r.nodes, "each node inside the all-INT8 model",
                                                                     "full_sqnr_db"), "info")
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
