"""One table model, two renderings: the compare table drawn for the terminal and as Markdown holds the same cells."""

from rich.console import Console

from quantcli.report.table import compare_table, to_markdown, to_rich
from quantcli.results import CompareResult, OutputFidelity


def _result():
    return CompareResult("a.onnx", "b.onnx", 100, (99.0, 98.5), None,
                         [OutputFidelity("logits|x", 0.99, 0.9995, 31.2, 0.25)], (1.0, 0.5), (1.2, 0.6), 1,
                         (400_000, 110_000), 1.0, latency_ratio=0.5)


def test_compare_table_renders_the_same_cells_to_rich_and_markdown():
    t = compare_table(_result(), coverage=0.97)
    md = "\n".join(to_markdown(t))
    console = Console(width=200, record=True, color_system=None)
    console.print(to_rich(t))
    text = console.export_text()
    for row in t.rows:
        for cell in row:
            assert cell in text, cell
            assert cell.replace("|", "\\|") in md, cell
    assert [r[0] for r in t.rows] == ["top-1 accuracy", "logits|x: top-1 agreement", "logits|x: cosine / SQNR",
                                      "logits|x: max abs error", "latency median", "latency p90", "model size",
                                      "INT8 MAC coverage"]
    assert md.splitlines()[1] == "|---|---:|---:|---:|"
    assert t.rows[0][1:] == ["99.00%", "98.50%", "-0.50 pts"] and t.rows[-1][2] == "97.0%"
