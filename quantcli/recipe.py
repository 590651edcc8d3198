"""Recipes: one reviewable TOML file holding what calibrate, convert and compare need.

Schema (every key optional; flags given on the command line override the recipe)::

    description = "..."
    [run]         model, output, calibration          (quantcli run)
    [calibrate]   data, samples, batch_size, method, percentile, bins
    [convert]     precision, mode, weights, activations, exclude, method, percentile, reduce_range, act_matmul, cle,
                  bias_correction, max_drop, eval_data, block_size, symmetric_weights, algorithm (int4), and
                  [[convert.nodes]] tables of
                  match, precision (int8|fp16|fp32), weights, method, percentile
    [compare]     data, labels, max_drop, threads, runs, warmup
    [accept]      max_drop, min_int8_coverage, max_latency_ratio, max_size_mb   (quantcli run)

Unknown keys and bad values are errors naming the file, the section and the key.  Numbers must be finite and
within :data:`LIMITS` (one table for recipe keys and command-line flags alike, applied by field name).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import typing
from pathlib import Path

from .errors import QuantcliError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Method(str, enum.Enum):
    MINMAX = "minmax"
    MOVING_AVERAGE = "moving-average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Weights(str, enum.Enum):
    AUTO = "auto"                # per-channel; MatMul/Gemm per-tensor where measured to cost nothing (faster in ORT)
    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"


class Activations(str, enum.Enum):
    ASYMMETRIC = "asymmetric"
    SYMMETRIC = "symmetric"


class Precision(str, enum.Enum):
    INT8 = "int8"
    INT4 = "int4"   # weight-only: MatMul/Gemm weights in 4-bit blocks (MatMulNBits), activations float
    FP16 = "fp16"
    BF16 = "bf16"


class Mode(str, enum.Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class BiasCorrection(str, enum.Enum):
    OFF = "off"
    EMPIRICAL = "empirical"
    ANALYTIC = "analytic"


class ActMatmul(str, enum.Enum):
    AUTO = "auto"
    INT8 = "int8"
    FLOAT = "float"


class WeightAlgorithm(str, enum.Enum):
    RTN = "rtn"      # round to nearest, data-free
    GPTQ = "gptq"    # error feedback through each layer's input Hessian (needs calibration data)
    AWQ = "awq"      # activation-aware row scales searched on calibration data (needs calibration data)


class ReduceRange(str, enum.Enum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclasses.dataclass
class CalibrateSettings:
    data: str | None = None
    samples: int | None = None
    batch_size: int | None = None
    method: Method = Method.MINMAX
    percentile: float = 99.99
    bins: int = 2048


class NodePrecision(str, enum.Enum):
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


@dataclasses.dataclass
class NodeRule:
    """Per-node mixed precision: nodes matching ``match`` (name, op type, glob or re:REGEX) get these settings.

    ``precision`` fp32 keeps them float, fp16 runs them in half precision (casts around them), int8 (default)
    quantizes them with their own ``weights`` granularity and activation range ``method`` / ``percentile``.
    """

    match: str = ""
    precision: NodePrecision = NodePrecision.INT8
    weights: Weights | None = None
    method: Method | None = None
    percentile: float | None = None


@dataclasses.dataclass
class ConvertSettings:
    precision: Precision = Precision.INT8
    mode: Mode = Mode.STATIC
    weights: Weights = Weights.AUTO
    activations: Activations = Activations.ASYMMETRIC
    exclude: list[str] = dataclasses.field(default_factory=list)
    method: Method | None = None       # re-derive ranges from the artifact's statistics with another method
    percentile: float | None = None
    reduce_range: ReduceRange = ReduceRange.AUTO
    act_matmul: ActMatmul = ActMatmul.AUTO  # MatMuls of two activations (attention): auto = float where int8 is not faster
    cle: bool = True                    # cross-layer equalization (also applied by calibrate: keep them equal)
    bias_correction: BiasCorrection = BiasCorrection.EMPIRICAL  # analytic when no calibration data is at hand
    max_drop: float | None = None       # mixed precision: keep the fewest sensitive nodes float within this budget
    eval_data: str | None = None        # data to measure that drop on (default: the calibration data)
    nodes: list[NodeRule] = dataclasses.field(default_factory=list)  # [[convert.nodes]] per-node overrides
    block_size: int = 32                # int4: weights per scale along K (16, 32, 64, 128 or 256)
    symmetric_weights: bool = False     # int4: zero point fixed at 8 (default: a zero point per block)
    algorithm: WeightAlgorithm = WeightAlgorithm.RTN  # int4: rtn, or gptq / awq (with --data)


@dataclasses.dataclass
class CompareSettings:
    data: str | None = None
    labels: str | None = None
    max_drop: float | None = None
    threads: int = 1
    runs: int = 200
    warmup: int = 20


@dataclasses.dataclass
class RunSettings:
    """What ``quantcli run`` works on (paths relative to the current directory)."""

    model: str | None = None
    output: str | None = None
    calibration: str | None = None   # where the calibration artifact goes (default: OUTPUT.calib.json)


@dataclasses.dataclass
class AcceptSettings:
    """Acceptance criteria of ``quantcli run``: every one that is set must hold, else exit 1."""

    max_drop: float | None = None            # accuracy (labels) or agreement drop, in points
    min_int8_coverage: float | None = None   # % of multiply-accumulates in integer kernels
    max_latency_ratio: float | None = None   # quantized / FP32 median latency at batch 1
    max_size_mb: float | None = None         # size of the written model


@dataclasses.dataclass
class Recipe:
    description: str = ""
    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    calibrate: CalibrateSettings = dataclasses.field(default_factory=CalibrateSettings)
    convert: ConvertSettings = dataclasses.field(default_factory=ConvertSettings)
    compare: CompareSettings = dataclasses.field(default_factory=CompareSettings)
    accept: AcceptSettings = dataclasses.field(default_factory=AcceptSettings)
    source: str | None = None

    def to_dict(self) -> dict:
        return to_plain(self)


def to_plain(v):
    """Settings dataclasses -> plain JSON-able values (enums by value), recursively."""
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v):
        return {f.name: to_plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, list):
        return [to_plain(x) for x in v]
    return v


@dataclasses.dataclass(frozen=True)
class Limit:
    """An allowed range: ``lo <= v <= hi`` (``lo < v`` when ``lo_open``); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{']' if self.hi is not None else ')'}"

    def holds(self, v: float) -> bool:
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or v <= self.hi))


# The range of every numeric option, by field name (the same in every section and for the flags): checked when
# a recipe is loaded and when a flag is merged, so an out-of-range value never reaches the work.
LIMITS: dict[str, Limit] = {
    "percentile": Limit(0, 100, lo_open=True),
    "bins": Limit(2, 1 << 16),          # per tensor: 65536 bins are 512 kB of counts; more resolves nothing useful;
                                        # one bin cannot grow exactly (calibration.observers._grow)
    "samples": Limit(1),
    "batch_size": Limit(1, 1 << 16),
    "threads": Limit(0, 1024),          # 0: ONNX Runtime picks
    "runs": Limit(1, 1_000_000),
    "warmup": Limit(0, 1_000_000),
    "max_drop": Limit(0, 100),
    "min_int8_coverage": Limit(0, 100),
    "max_latency_ratio": Limit(0, lo_open=True),
    "max_size_mb": Limit(0, lo_open=True),
    "top": Limit(1),                    # analyze --top
    "block_size": Limit(16, 256),       # int4; also a power of two (MatMulNBits): checked by the int4 scheme
}


_STATIC_ONLY = ("method", "percentile", "activations", "act_matmul", "bias_correction", "max_drop", "eval_data",
                "nodes")
_INT8_ONLY = ("weights", "reduce_range", "cle")
_INT4_ONLY = ("block_size", "symmetric_weights", "algorithm")


def unused_options(settings: "ConvertSettings", calibration=None) -> list[str]:
    """Options set (to other than their default) that the chosen precision and mode never read.

    The rule: an option that only static INT8 reads (calibration artifact, range method, activation scheme,
    bias correction, --max-drop search, node rules) is a usage error with dynamic INT8, FP16 and BF16; one that
    only INT8 reads (weights, reduce_range, cle) is a usage error with FP16/BF16; one that only INT4 reads
    (block_size, symmetric_weights, algorithm) is a usage error with every other precision.  INT4 reads node
    rules (fp32/fp16 rules keep nodes float), nothing else of static INT8."""
    default = ConvertSettings()
    int4 = settings.precision == Precision.INT4
    others = [] if int4 else [n for n in _INT4_ONLY if getattr(settings, n) != getattr(default, n)]
    static = settings.precision == Precision.INT8 and settings.mode == Mode.STATIC
    if static:
        return others
    names = [n for n in _STATIC_ONLY if not (int4 and n == "nodes")] + (
        list(_INT8_ONLY) if settings.precision != Precision.INT8 else [])
    names += others
    unused = [n for n in names if getattr(settings, n) != getattr(default, n)]
    if settings.precision != Precision.INT8 and settings.mode != default.mode:
        unused.insert(0, "mode")
    if calibration is not None:
        unused.insert(0, "calibration")
    return unused


def check_limit(name: str, value, where: str):
    """Raise QuantcliError naming ``where`` if ``value`` is outside the range of option ``name``."""
    limit = LIMITS.get(name)
    if limit is not None and value is not None and not limit.holds(value):
        raise QuantcliError(f"{where}: {value:g} is out of range; expected a value in {limit}")
    return value


_SECTIONS = {"run": RunSettings, "calibrate": CalibrateSettings, "convert": ConvertSettings,
             "compare": CompareSettings, "accept": AcceptSettings}


def load_recipe(path: str | Path | None) -> Recipe:
    if path is None:
        return Recipe()
    p = Path(path)
    if not p.exists():
        raise QuantcliError(f"{p}: no such recipe file")
    if p.is_dir():
        raise QuantcliError(f"{p}: is a folder, expected a TOML recipe file")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QuantcliError(f"{p}: not a valid TOML recipe: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise QuantcliError(f"{p}: cannot read the recipe: {exc.strerror or exc}") from None
    recipe = Recipe(source=str(p))
    for key, value in doc.items():
        if key == "description":
            if not isinstance(value, str):
                raise QuantcliError(f"{p}: 'description' must be a string")
            recipe.description = value
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise QuantcliError(f"{p}: '{key}' must be a table ([{key}])")
            setattr(recipe, key, _build(_SECTIONS[key], value, f"{p}: [{key}]"))
        else:
            raise QuantcliError(f"{p}: unknown key '{key}' (expected: description, {', '.join(_SECTIONS)})")
    return recipe


def _build(cls, table: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = cls()
    for key, value in table.items():
        if key not in names:
            raise QuantcliError(f"{where} unknown key '{key}' (expected one of: {', '.join(names)})")
        setattr(obj, key, check_limit(key, coerce(value, hints[key], f"{where} {key}"), f"{where} {key}"))
    return obj


def coerce(value, hint, where: str):
    """Check/convert ``value`` against a dataclass field type; raise QuantcliError naming ``where``."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(m.value for m in hint)
            raise QuantcliError(f"{where}: '{value}' is not one of {allowed}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise QuantcliError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise QuantcliError(f"{where}: expected a non-negative integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise QuantcliError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise QuantcliError(f"{where}: expected a string, got {value!r}")
        return value
    if typing.get_origin(hint) is list and typing.get_args(hint) == (NodeRule,):
        if not isinstance(value, list):
            raise QuantcliError(f"{where}: expected an array of tables ([[convert.nodes]]), got {value!r}")
        rules = []
        for i, item in enumerate(value):
            rule = item if isinstance(item, NodeRule) else None
            if rule is None:
                if not isinstance(item, dict):
                    raise QuantcliError(f"{where}[{i}]: expected a table with 'match', got {item!r}")
                rule = _build(NodeRule, item, f"{where}[{i}]")
            if not rule.match:
                raise QuantcliError(f"{where}[{i}]: 'match' is required (node name, op type, glob or re:REGEX)")
            if rule.weights == Weights.AUTO:
                raise QuantcliError(f"{where}[{i}]: weights = 'auto' is a model-wide choice; a node rule takes "
                                    "'per-channel' or 'per-tensor'")
            rules.append(rule)
        return rules
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise QuantcliError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    raise TypeError(f"unsupported recipe field type {hint}")  # a bug in the schema, not user input


def parse_node_rule(text: str) -> NodeRule:
    """``PATTERN:key=value[,key=value]`` (the --node flag) -> NodeRule, e.g. ``head/*:precision=fp16``."""
    pattern, sep, rest = text.rpartition(":") if ":" in text and "=" in text.rsplit(":", 1)[-1] else (text, "", "")
    if not sep:
        raise QuantcliError(f"--node {text!r}: expected PATTERN:key=value[,key=value] "
                            "(keys: precision, weights, method, percentile)")
    table = {"match": pattern}
    for item in rest.split(","):
        key, eq, val = item.partition("=")
        if not eq:
            raise QuantcliError(f"--node {text!r}: '{item}' is not key=value")
        table[key.strip()] = float(val) if key.strip() == "percentile" and _is_number(val) else val.strip()
    return _build(NodeRule, table, f"--node {text!r}:")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def merge(section, **flags):
    """Return a copy of a settings dataclass with every non-None flag applied (flags override recipes)."""
    hints = typing.get_type_hints(type(section))
    updates = {}
    for k, v in flags.items():
        if v is None or (isinstance(v, (list, tuple)) and not v):
            continue
        flag = f"--{k.replace('_', '-')}"
        updates[k] = check_limit(k, coerce(list(v) if isinstance(v, tuple) else v, hints[k], flag), flag)
    return dataclasses.replace(section, **updates)
