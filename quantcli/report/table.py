"""One table model, rendered several ways: a :class:`Table` is built once from a result (``*_table``
functions) and drawn as a rich table for the terminal (:func:`to_rich`) or as Markdown for a pull-request
comment (:func:`to_markdown`); an HTML renderer is one more function here.  JSON comes from the result objects
themselves (:func:`quantcli.report.render.to_json`), not from tables.
"""

from __future__ import annotations

import dataclasses
import math

from rich.markup import escape
from rich.table import Table as RichTable

from ..results import CompareResult, Criterion


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    right: tuple[int, ...] = ()       # indexes of right-aligned (numeric) columns
    header: bool = True

    def add(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])


def fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) and v > 0 else f"{v:.1f}"


def to_rich(t: Table) -> RichTable:
    rt = RichTable(title=t.title, title_justify="left", show_header=t.header)
    for i, col in enumerate(t.columns):
        rt.add_column(col, justify="right" if i in t.right else "left", overflow="fold")
    for row in t.rows:
        rt.add_row(*(escape(c) for c in row))
    return rt


def to_markdown(t: Table, *, code_first: bool = False) -> list[str]:
    """Markdown lines; ``code_first`` sets names in the first column as code."""
    def cell(c: str) -> str:
        return c.replace("|", "\\|")

    head = t.columns if t.header else [""] * len(t.columns)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if i in t.right else "---" for i in range(len(t.columns))) + "|"]
    for row in t.rows:
        first = f"`{row[0]}`" if code_first and row[0] else cell(row[0])
        lines.append("| " + " | ".join([first] + [cell(c) for c in row[1:]]) + " |")
    return lines


def size_text(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def compare_table(r: CompareResult, coverage: float | None = None) -> Table:
    """FP32 vs quantized: accuracy, per-output fidelity, latency, size (and INT8 coverage when known)."""
    t = Table(f"Compare on {r.samples} samples (latency: batch 1, {r.threads} thread(s))",
              ["metric", "FP32", "quantized", "change"], right=(1, 2, 3))
    if r.task:
        t.add(r.task[0], f"{r.task[1]:.2f}", f"{r.task[2]:.2f}", f"{r.task[2] - r.task[1]:+.2f} pts")
    if r.top1:
        t.add("top-1 accuracy", f"{r.top1[0]:.2f}%", f"{r.top1[1]:.2f}%", f"{r.top1[1] - r.top1[0]:+.2f} pts")
    if r.perplexity:
        t.add("next-token perplexity", f"{r.perplexity[0]:.3f}", f"{r.perplexity[1]:.3f}", f"{r.drop:+.2f}%")
    if r.token_agreement is not None:
        t.add("next-token agreement", "", f"{100 * r.token_agreement:.2f}%", "")
    if r.top5:
        t.add("top-5 accuracy", f"{r.top5[0]:.2f}%", f"{r.top5[1]:.2f}%", f"{r.top5[1] - r.top5[0]:+.2f} pts")
    for o in r.outputs:
        if o.agreement is not None:
            t.add(f"{o.name}: top-1 agreement", "", f"{100 * o.agreement:.2f}%", "")
        t.add(f"{o.name}: cosine / SQNR", "", f"{o.cosine:.5f} / {fmt_db(o.sqnr_db)} dB", "")
        t.add(f"{o.name}: max abs error", "", f"{o.max_abs:.4g}", "")
    t.add("latency median", f"{r.latency_ms[0]:.3f} ms", f"{r.latency_ms[1]:.3f} ms", f"x{r.latency_ratio:.2f}")
    t.add("latency p90", f"{r.latency_p90_ms[0]:.3f} ms", f"{r.latency_p90_ms[1]:.3f} ms", "")
    t.add("model size", size_text(r.size[0]), size_text(r.size[1]), f"x{r.size[1] / max(r.size[0], 1):.2f}")
    if coverage is not None:
        t.add("INT8 MAC coverage", "", f"{100 * coverage:.1f}%", "")
    return t


def acceptance_table(criteria: list[Criterion]) -> Table:
    t = Table("Acceptance", ["criterion", "value", "limit", "result"], right=(1, 2, 3))
    for c in criteria:
        t.add(c.name, f"{c.value:.4g}{c.unit}", f"{c.limit:g}{c.unit}", "pass" if c.passed else "FAIL")
    return t
