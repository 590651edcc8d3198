"""Result objects returned by the pipeline (rendered by :mod:`quantcli.report`, never printed here)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class CalibrationResult:
    output: str
    model_sha256: str
    samples: int
    tensors: int
    method: str
    seconds: float
    ranges: dict[str, tuple[float, float]]
    pass_seconds: float = 0.0   # the data pass alone (inference with taps + statistics)
    manifest: dict = dataclasses.field(default_factory=dict)
    classes: dict[str, int] | None = None  # samples used per class (class folders or labels), in class order
    sample_by: str = "first"               # how --samples picked them: first, random or class

    def __str__(self) -> str:
        return (f"calibrated {self.tensors} tensors on {self.samples} samples ({self.method}) "
                f"in {self.seconds:.1f}s -> {self.output}")


@dataclasses.dataclass
class OutputCheck:
    name: str
    cosine: float
    sqnr_db: float
    max_abs: float


@dataclasses.dataclass
class CoverageSummary:
    integer_kernels: dict[str, int]
    float_heavy_nodes: list[str]
    dq_left: int
    mac_share: float
    macs_total: int


@dataclasses.dataclass
class ConvertResult:
    output: str
    precision: str
    mode: str
    settings: dict
    quantized_nodes: dict[str, str]          # node -> op type
    float_nodes: dict                        # node -> quantize.reasons.Why (reason + detail)
    absorbed: list[str]
    quantized_tensors: int
    size_before: int
    size_after: int
    checks: list[OutputCheck]
    coverage: CoverageSummary | None
    notes: list[str]
    cpu: str
    seconds: float
    transforms: list[str] = dataclasses.field(default_factory=list)  # per layer: CLE scales, bias shifts, skips
    manifest: dict = dataclasses.field(default_factory=dict)
    search: object | None = None  # convert --max-drop: quantize.search.SearchResult (nodes kept float, drop, steps)
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. --exclude patterns that match no node

    def __str__(self) -> str:
        return (f"{self.precision} ({self.mode}) model written to {self.output}: {len(self.quantized_nodes)} nodes "
                f"quantized, {len(self.float_nodes)} kept float, size {self.size_before / 1e6:.2f} MB -> "
                f"{self.size_after / 1e6:.2f} MB")


@dataclasses.dataclass
class OutputFidelity:
    name: str
    agreement: float | None   # share of samples with the same argmax, or for one probability per sample the same
                              # decision at 0.5 (None where neither makes sense)
    cosine: float
    sqnr_db: float
    max_abs: float


@dataclasses.dataclass
class CompareResult:
    fp32: str
    quantized: str
    samples: int
    top1: tuple[float, float] | None       # (fp32, quantized) accuracy in %
    top5: tuple[float, float] | None
    outputs: list[OutputFidelity]
    latency_ms: tuple[float, float]        # medians at batch 1
    latency_p90_ms: tuple[float, float]
    threads: int
    size: tuple[int, int]
    max_drop: float | None
    manifest: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why INT8 is slower on this CPU
    # quantized / FP32 latency: the median of per-round ratios of block medians (runtime.bench.Latency.ratio_to),
    # steadier on a shared machine than the ratio of the two medians above
    latency_ratio: float = math.nan
    perplexity: tuple[float, float] | None = None  # (fp32, quantized) next-token perplexity (language models)
    token_agreement: float | None = None           # share of positions whose next-token argmax agrees
    task: tuple[str, float, float] | None = None   # --metric FILE.py:FUNCTION: (it, FP32's value, quantized's)

    @property
    def metric(self) -> str:
        if self.task:
            return self.task[0]
        return "perplexity" if self.perplexity else "top-1 accuracy" if self.top1 else "top-1 agreement"

    @property
    def unit(self) -> str:
        return "%" if self.perplexity else " pts"

    @property
    def drop_text(self) -> str:
        what = "increase" if self.perplexity else "drop"
        return f"{self.metric} {what} {self.drop:.2f}{self.unit}"

    @property
    def drop(self) -> float:
        """Perplexity increase in % (language models), else accuracy drop in points (labels), else
        100 - agreement of the first output, in points; with --metric, the task metric's drop."""
        if self.task:
            return self.task[1] - self.task[2]
        if self.perplexity:
            return 100.0 * (self.perplexity[1] / self.perplexity[0] - 1.0)
        if self.top1:
            return self.top1[0] - self.top1[1]
        first = self.outputs[0]
        if first.agreement is not None:
            return 100.0 * (1.0 - first.agreement)
        return 0.0 if first.cosine >= 0.999 else 100.0 * (1.0 - max(first.cosine, 0.0))

    def __bool__(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop + 1e-9

    def __str__(self) -> str:
        verdict = "" if self.max_drop is None else (" PASS" if self else " FAIL")
        return (f"{self.drop_text} (max {self.max_drop}), latency x{self.latency_ratio:.2f}, "
                f"size x{self.size[1] / max(self.size[0], 1):.2f}{verdict}")


@dataclasses.dataclass
class Criterion:
    """One acceptance criterion and whether it held."""

    name: str
    limit: float
    value: float
    passed: bool
    unit: str = ""

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.value:.4g}{self.unit} (limit {self.limit:g}{self.unit})"


@dataclasses.dataclass
class RunResult:
    """calibrate -> convert -> compare in one step, with the recipe's acceptance criteria."""

    recipe: dict
    calibration: CalibrationResult | None
    convert: ConvertResult
    compare: CompareResult
    criteria: list[Criterion]
    manifest: dict = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(c.passed for c in self.criteria)

    def __str__(self) -> str:
        failed = [c.name for c in self.criteria if not c.passed]
        return "all criteria hold" if not failed else f"failed: {', '.join(failed)}"


@dataclasses.dataclass
class InspectResult:
    """What runs in integer kernels once ONNX Runtime has optimized a (quantized) model."""

    model: str
    input_shapes: dict[str, list[int]]
    coverage: CoverageSummary
    cpu: str
    int8_path: str
    min_coverage: float | None = None
    manifest: dict = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.min_coverage is None or 100.0 * self.coverage.mac_share >= self.min_coverage - 1e-9

    def __str__(self) -> str:
        return f"{100 * self.coverage.mac_share:.1f}% of MACs in integer kernels"


@dataclasses.dataclass
class AnalyzeResult:
    """Per-node quantization sensitivity, worst first."""

    model: str
    metric: str
    fp32_metric: float
    all_int8_drop: float
    all_int8_sqnr_db: float
    nodes: list[dict]          # NodeSensitivity as dicts: node, op, mac_share, alone_drop, alone_sqnr_db, full_sqnr_db,
                               # graph_index (place in graph order)
    evaluations: int
    seconds: float
    manifest: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        worst = self.nodes[0]["node"] if self.nodes else "-"
        return f"all-INT8 {self.metric} drop {self.all_int8_drop:.2f} pts; most sensitive node: {worst}"
