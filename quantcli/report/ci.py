"""Reports for CI systems: JUnit XML (one test case per acceptance criterion) and a Markdown summary
suitable for a pull-request comment."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from ..results import CompareResult, Criterion, RunResult
from .table import acceptance_table, compare_table
from .table import to_markdown as to_markdown_lines


def _parts(result: RunResult | CompareResult) -> tuple[CompareResult, list[Criterion], RunResult | None]:
    if isinstance(result, RunResult):
        return result.compare, result.criteria, result
    crit = []
    if result.max_drop is not None:
        crit.append(Criterion(f"max {result.metric} {'increase' if result.perplexity else 'drop'}", result.max_drop,
                              result.drop, bool(result), result.unit))
    return result, crit, None


def to_junit(result: RunResult | CompareResult) -> str:
    cmp, criteria, run = _parts(result)
    suite = ET.Element("testsuite", name="quantcli", tests=str(max(len(criteria), 1)),
                       failures=str(sum(not c.passed for c in criteria)), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for k, v in _facts(cmp, run):
        ET.SubElement(props, "property", name=k, value=v)
    if not criteria:
        ET.SubElement(suite, "testcase", classname="quantcli", name="quantized model runs and compares")
    for c in criteria:
        case = ET.SubElement(suite, "testcase", classname="quantcli.accept", name=c.name)
        if not c.passed:
            fail = ET.SubElement(case, "failure", message=str(c), type="AcceptanceCriterion")
            fail.text = str(c)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def to_markdown(result: RunResult | CompareResult) -> str:
    cmp, criteria, run = _parts(result)
    verdict = "✅ all criteria hold" if all(c.passed for c in criteria) else "❌ " + ", ".join(
        c.name for c in criteria if not c.passed)
    coverage = run.convert.coverage.mac_share if run is not None and run.convert.coverage is not None else None
    table = compare_table(cmp, coverage)
    table.columns[0] = ""
    lines = [f"### quantcli: {cmp.quantized}", "", verdict if criteria else "", ""]
    lines += to_markdown_lines(table)
    if criteria:
        acc = acceptance_table(criteria)
        acc.columns[-1] = ""
        lines += [""] + to_markdown_lines(acc)
    return "\n".join(lines) + "\n"


def _facts(cmp: CompareResult, run: RunResult | None) -> list[tuple[str, str]]:
    facts = [("fp32_model", cmp.fp32), ("quantized_model", cmp.quantized), ("samples", str(cmp.samples)),
             ("latency_ratio", f"{cmp.latency_ratio:.4f}"), ("size_ratio", f"{cmp.size[1] / max(cmp.size[0], 1):.4f}")]
    if cmp.top1:
        facts.append(("top1_fp32", f"{cmp.top1[0]:.4f}"))
        facts.append(("top1_quantized", f"{cmp.top1[1]:.4f}"))
    if run is not None and run.convert.coverage is not None:
        facts.append(("int8_mac_coverage", f"{run.convert.coverage.mac_share:.4f}"))
    return facts
