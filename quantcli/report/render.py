"""Result objects -> rich tables (for people) and JSON (for scripts)."""

from __future__ import annotations

import dataclasses
import json
import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..results import (AnalyzeResult, CalibrationResult, CompareResult, ConvertResult, CoverageSummary,
                       InspectResult, RunResult)
from .table import acceptance_table, compare_table, fmt_db, size_text, to_rich


def render_calibration(r: CalibrationResult, console: Console) -> None:
    table = Table(title=f"Calibration: {r.samples} samples, method {r.method}", title_justify="left")
    table.add_column("tensor", overflow="fold")
    table.add_column("lo", justify="right")
    table.add_column("hi", justify="right")
    items = sorted(r.ranges.items())
    for name, (lo, hi) in items[:12]:
        table.add_row(name, f"{lo:.4g}", f"{hi:.4g}")
    if len(items) > 12:
        table.add_row(f"... {len(items) - 12} more in the artifact", "", "")
    console.print(table)
    _print_classes(r, console)
    console.print(f"wrote {r.output} ({r.tensors} tensors, {r.seconds:.1f}s)")


def _print_classes(r: CalibrationResult, console: Console) -> None:
    if r.classes:
        console.print(f"samples per class ({r.sample_by}): " + ", ".join(f"{k} {v}" for k, v in r.classes.items()),
                      highlight=False, markup=False)


def render_convert(r: ConvertResult, console: Console) -> None:
    table = Table(title=f"Convert: {r.precision} {r.mode if r.precision == 'int8' else ''}".rstrip(),
                  title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    if r.precision == "int8":
        by_op: dict[str, int] = {}
        for op in r.quantized_nodes.values():
            by_op[op] = by_op.get(op, 0) + 1
        table.add_row("quantized nodes", f"{len(r.quantized_nodes)} (" +
                      ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())) + ")")
        if r.quantized_tensors:
            table.add_row("quantized activations", str(r.quantized_tensors))
        if r.absorbed:
            table.add_row("activations absorbed", f"{len(r.absorbed)} Relu/Clip folded into the output ranges")
    else:
        table.add_row("converted nodes", next(iter(r.quantized_nodes.values()), "0"))
    table.add_row("kept float", str(len(r.float_nodes)))
    table.add_row("size", f"{size_text(r.size_before)} -> {size_text(r.size_after)} (x{r.size_after / max(r.size_before, 1):.2f})")
    if r.coverage is not None:
        _coverage_rows(table, r.coverage)
    for chk in r.checks:
        table.add_row(f"check '{chk.name}'", f"cosine {chk.cosine:.5f}, SQNR {fmt_db(chk.sqnr_db)} dB vs FP32 "
                                              "(one sample)")
    table.add_row("CPU", escape(r.cpu))
    console.print(table)
    if r.float_nodes:
        by_reason: dict[str, list[str]] = {}
        for name, why in sorted(r.float_nodes.items()):
            by_reason.setdefault(str(why), []).append(name)
        ft = Table(title="Kept float", title_justify="left")
        ft.add_column("why", overflow="fold")
        ft.add_column("nodes", overflow="fold")
        for why, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            ft.add_row(escape(why), f"{len(names)}: {escape(shown)}")
        console.print(ft)
    if r.search and r.search.float_nodes:
        st = Table(title=f"Mixed precision search (--max-drop {r.search.max_drop:g}, {r.search.metric})",
                   title_justify="left", show_header=False)
        st.add_column("what")
        st.add_column("value", overflow="fold")
        st.add_row("all-INT8 drop", f"{r.search.all_int8_drop:.2f} pts")
        st.add_row("kept in float", escape(", ".join(r.search.float_nodes)))
        st.add_row("drop now", f"{r.search.drop:.2f} pts")
        st.add_row("search", f"{r.search.rank_evaluations} ranking evaluations on a subset, "
                             f"{r.search.evaluations} on all samples, {r.search.seconds:.1f}s")
        st.add_row("recipe fragment", escape(r.search.recipe_fragment.strip()))
        console.print(st)
    if r.transforms:
        tt = Table(title="Transforms (per layer)", title_justify="left", show_header=False)
        tt.add_column("what", overflow="fold")
        for line in r.transforms[:30]:
            tt.add_row(escape(line))
        if len(r.transforms) > 30:
            tt.add_row(f"... {len(r.transforms) - 30} more (see --json)")
        console.print(tt)
    for note in r.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(f"wrote {r.output}")


def _coverage_rows(table: Table, c: CoverageSummary) -> None:
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(c.integer_kernels.items())) or "none"
    table.add_row("INT8 MAC coverage", f"{100 * c.mac_share:.1f}% of {c.macs_total:,} MACs in integer kernels")
    table.add_row("integer kernels", kernels)
    if c.float_heavy_nodes:
        names = ", ".join(c.float_heavy_nodes[:6]) + (" ..." if len(c.float_heavy_nodes) > 6 else "")
        table.add_row("heavy ops in float", escape(f"{len(c.float_heavy_nodes)}: {names}"))
    if c.dq_left:
        table.add_row("DequantizeLinear left", f"{c.dq_left} (float ops reading quantized tensors)")


def render_inspect(r: InspectResult, console: Console) -> None:
    table = Table(title=f"Inspect: {r.model}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    _coverage_rows(table, r.coverage)
    shapes = ", ".join(f"{k} {v}" for k, v in r.input_shapes.items())
    table.add_row("MACs counted for", escape(shapes))
    table.add_row("CPU", escape(r.cpu))
    table.add_row("INT8 path", r.int8_path)
    console.print(table)
    if r.min_coverage is not None:
        console.print(f"{'PASS' if r else 'FAIL'}: INT8 MAC coverage {100 * r.coverage.mac_share:.1f}% "
                      f"(min {r.min_coverage:g}%)", highlight=False)


def render_analyze(r: AnalyzeResult, console: Console, top: int = 20) -> None:
    def db(v):
        return "" if v is None else fmt_db(v)
    table = Table(title=f"Sensitivity of {r.model} ({r.metric}; FP32 {r.fp32_metric:.2f}%; all-INT8 drop "
                        f"{r.all_int8_drop:.2f} pts, SQNR {fmt_db(r.all_int8_sqnr_db)} dB)", title_justify="left")
    for col in ("#", "node", "op", "MACs %", "alone: drop pts", "alone: SQNR dB", "in all-INT8: SQNR dB"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right", overflow="fold")
    for i, n in enumerate(r.nodes[:top], 1):
        table.add_row(str(i), escape(n["node"]), n["op"], f"{100 * n['mac_share']:.1f}", f"{n['alone_drop']:.2f}",
                      db(n["alone_sqnr_db"]), db(n["full_sqnr_db"]))
    console.print(table)
    console.print(f"{r.evaluations} evaluations in {r.seconds:.1f}s; keep the worst in float with --exclude NAME, "
                  "or let convert --max-drop PCT choose", highlight=False)


def render_compare(r: CompareResult, console: Console) -> None:
    console.print(to_rich(compare_table(r)))
    for note in r.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if r.max_drop is not None:
        verdict = "PASS" if r else "FAIL"
        console.print(f"{verdict}: {r.drop_text} (max {r.max_drop:g}{r.unit})", highlight=False)


def render_run(r: RunResult, console: Console) -> None:
    if r.calibration is not None:
        console.print(str(r.calibration), highlight=False)
        _print_classes(r.calibration, console)
    render_convert(r.convert, console)
    render_compare(r.compare, console)
    if r.criteria:
        console.print(to_rich(acceptance_table(r.criteria)))
    console.print(("PASS: " if r else "FAIL: ") + str(r), highlight=False)


def to_jsonable(obj):
    """Dataclasses -> dicts; inf/nan -> strings (JSON has neither)."""
    if dataclasses.is_dataclass(obj):
        d = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, CompareResult):
            d.update(drop=obj.drop, passed=bool(obj), metric=obj.metric)
        if isinstance(obj, RunResult):
            d.update(passed=bool(obj))
        return d
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def to_json(obj) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
