"""Recipes: one reviewable TOML file holding what calibrate, convert and compare need.

Schema (every key optional; flags given on the command line override the recipe)::

    description = "..."
    [run]         model, output, calibration          (quantcli run)
    [calibrate]   data, samples, sample_by (auto|first|random|class), seed, batch_size, method, percentile, bins
    [convert]     precision, mode, weights, activations, exclude, method, percentile, reduce_range, act_matmul, cle,
                  smoothquant, bias_correction, max_drop, eval_data, block_size, symmetric_weights, algorithm (int4), and
                  [[convert.nodes]] tables of
                  match, precision (int8|fp16|fp32), weights, method, percentile
    [compare]     data, labels, max_drop, threads, runs, warmup
    [accept]      max_drop, min_int8_coverage, max_latency_ratio, max_size_mb   (quantcli run)
    [data]        preset (a packaged preset name or a TOML fragment with a [data] table), and the sub-tables
                  [data.image], [data.text], [data.audio] (:mod:`quantcli.data.config`); keys here override the
                  preset's, ``--data-preset`` chooses the preset from the command line

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

from .data.config import AudioSettings, DataSettings, ImageSettings, SampleBy, TextSettings
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


class SmoothQuant(str, enum.Enum):
    AUTO = "auto"    # smooth the layer inputs where the search measures a lower quantized output error
    ON = "on"        # smooth every layer input SmoothQuant can rescale (alpha still searched per layer)
    OFF = "off"


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
    sample_by: SampleBy = SampleBy.AUTO
    seed: int = 0
    batch_size: int | None = None
    method: Method = Method.MINMAX
    percentile: float = 99.99
    bins: int = 2048


class NodePrecision(str, enum.Enum):
    INT8 = "int8"
    INT4 = "int4"   # --precision int4 only: 4-bit even where the default is 8 (the lm_head)
    FP16 = "fp16"
    FP32 = "fp32"


@dataclasses.dataclass
class NodeRule:
    """Per-node mixed precision: nodes matching ``match`` (name, op type, glob or re:REGEX) get these settings.

    ``precision`` fp32 keeps them float, fp16 runs them in half precision (casts around them), int8 (default)
    quantizes them with their own ``weights`` granularity and activation range ``method`` / ``percentile``.
    With ``--precision int4``: int8 makes the weight 8-bit, int4 4-bit (where the default is 8: the lm_head).
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
    smoothquant: SmoothQuant = SmoothQuant.AUTO  # SmoothQuant (calibrate measures on the smoothed model: keep equal)
    bias_correction: BiasCorrection = BiasCorrection.EMPIRICAL  # analytic when no calibration data is at hand
    max_drop: float | None = None       # mixed precision: keep the fewest sensitive nodes float within this budget
    eval_data: str | None = None        # data to measure that drop on (default: the calibration data)
    metric: str | None = None           # FILE.py:FUNCTION scoring that drop (default: accuracy or agreement)
    nodes: list[NodeRule] = dataclasses.field(default_factory=list)  # [[convert.nodes]] per-node overrides
    block_size: int = 32                # int4: weights per scale along K (16, 32, 64, 128 or 256)
    symmetric_weights: bool = False     # int4: zero point fixed at 8 (default: a zero point per block)
    algorithm: WeightAlgorithm = WeightAlgorithm.RTN  # int4: rtn, or gptq / awq (with --data)
    clip_search: bool = True            # int4: search each block's range (rounding error, weighted by data if any)
    act_order: bool = True              # int4 gptq: rows with the largest input energy first (static block params)


@dataclasses.dataclass
class CompareSettings:
    data: str | None = None
    labels: str | None = None
    max_drop: float | None = None
    metric: str | None = None           # FILE.py:FUNCTION: the task metric the drop is measured with
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
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    source: str | None = None
    data_table: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # [data] as written

    def to_dict(self) -> dict:
        return to_plain(self)


def to_plain(v):
    """Settings dataclasses -> plain JSON-able values (enums by value), recursively."""
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v):
        return {f.name: to_plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.name != "data_table"}
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
    "max_length": Limit(1, 1 << 20),    # [data.text]
    "sample_rate": Limit(1, 1 << 22),   # [data.audio]
    "window": Limit(1, 1 << 28),
    "scale": Limit(0, lo_open=True),    # [data.image]
}


_STATIC_ONLY = ("method", "percentile", "activations", "act_matmul", "bias_correction", "max_drop", "eval_data",
                "metric", "nodes", "smoothquant")
_INT8_ONLY = ("weights", "reduce_range", "cle")
_INT4_ONLY = ("block_size", "symmetric_weights", "algorithm", "clip_search", "act_order")


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
        elif key == "data":
            if not isinstance(value, dict):
                raise QuantcliError(f"{p}: 'data' must be a table ([data])")
            recipe.data_table = value
            recipe.data = data_settings(value, f"{p}: [data]")
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise QuantcliError(f"{p}: '{key}' must be a table ([{key}])")
            setattr(recipe, key, _build(_SECTIONS[key], value, f"{p}: [{key}]"))
        else:
            raise QuantcliError(f"{p}: unknown key '{key}' (expected: description, {', '.join(_SECTIONS)}, data)")
    return recipe


PRESETS = Path(__file__).resolve().parent / "data" / "presets"
_DATA_TABLES = {"image": ImageSettings, "text": TextSettings, "audio": AudioSettings}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def _preset_table(preset: str, where: str) -> dict:
    """A preset's [data] table: a packaged preset by name, or a TOML fragment file with a [data] table."""
    path = PRESETS / f"{preset}.toml" if "/" not in preset and not preset.endswith(".toml") else Path(preset)
    if not path.is_file():
        raise QuantcliError(f"{where}: no data preset '{preset}' (packaged: {', '.join(preset_names())}; or a "
                            "path to a .toml fragment with a [data] table)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QuantcliError(f"{path}: not a valid TOML preset: {str(exc).splitlines()[0]}") from None
    table = doc.get("data")
    if not isinstance(table, dict) or set(doc) - {"data", "description"} or "preset" in table:
        raise QuantcliError(f"{path}: a data preset holds one [data] table (with [data.image], [data.text] or "
                            "[data.audio]) and no preset of its own")
    return table


def data_settings(table: dict, where: str, preset: str | None = None) -> DataSettings:
    """[data] -> DataSettings: the preset's sub-tables first (``preset`` overrides the table's own choice), then
    this table's keys over them."""
    unknown = sorted(set(table) - {"preset", *_DATA_TABLES})
    if unknown:
        raise QuantcliError(f"{where} unknown key '{unknown[0]}' (expected one of: preset, {', '.join(_DATA_TABLES)})")
    name = preset if preset is not None else coerce(table.get("preset", ""), str, f"{where} preset")
    base = _preset_table(name, f"{where} preset") if name else {}
    out = DataSettings(preset=name)
    for key, cls in _DATA_TABLES.items():
        merged = {}
        for src, what in ((base, f"preset {name}"), (table, where)):
            sub = src.get(key, {})
            if not isinstance(sub, dict):
                raise QuantcliError(f"{what}: '{key}' must be a table ([data.{key}])")
            merged.update(sub)
        sub_where = where.replace("[data]", f"[data.{key}]") if "[data]" in where else f"{where} [data.{key}]"
        setattr(out, key, _build(cls, merged, sub_where))
    return out


def recipe_data(recipe: Recipe, preset: str | None = None) -> DataSettings:
    """The recipe's data settings, with ``--data-preset`` (when given) as the preset."""
    if preset is None:
        return recipe.data
    return data_settings(recipe.data_table, f"{recipe.source}: [data]" if recipe.source else "--data-preset",
                         preset)


def data_from_plain(plain: dict | None) -> DataSettings:
    """Resolved data settings as recorded (e.g. in a calibration artifact) -> DataSettings (no preset lookup)."""
    if not plain:
        return DataSettings()
    table = {k: v for k, v in plain.items() if k in _DATA_TABLES}
    return dataclasses.replace(data_settings(table, "calibration artifact: [data]"), preset=plain.get("preset", ""))


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
    if typing.get_origin(hint) is list and typing.get_args(hint)[0] in (int, float):
        if not isinstance(value, list):
            raise QuantcliError(f"{where}: expected a list of numbers, got {value!r}")
        return [coerce(v, typing.get_args(hint)[0], where) for v in value]
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
