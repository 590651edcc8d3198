"""Settings resolved once: what the recipe/flags and this CPU decide together, in one frozen object.

:func:`resolve` is the one place that turns ``--reduce-range auto``, ``--act-matmul auto``, the weight
granularity against the model's opset and the data-path fallbacks into plain decisions.  Everything further
in (planning, building, searching, validating) reads :class:`Resolved` and re-derives nothing.

Data paths: the calibration data is ``--data`` (or the recipe's ``[calibrate] data``), else the path the
calibration artifact recorded; evaluation data (``--max-drop``, ``--weights auto``, ``analyze``) is
``--eval-data``, else that calibration data.
"""

from __future__ import annotations

import dataclasses

from .cpu import CpuInfo
from .cpu import detect as detect_cpu
from .data.config import DataSettings
from .recipe import ActMatmul, Activations, CalibrateSettings, ConvertSettings, Mode, Precision, ReduceRange, Weights


@dataclasses.dataclass(frozen=True)
class Resolved:
    convert: ConvertSettings
    calibrate: CalibrateSettings | None
    cpu: CpuInfo
    reduce_range: bool          # 7-bit weights (x86 u8s8 kernels without VNNI saturate full-range int8)
    act_matmul: bool            # quantize MatMuls of two activations (attention)
    per_channel: bool = True    # per-channel weights (needs opset 13; set by :meth:`for_opset`)
    calibration_data: str | None = None
    notes: tuple[str, ...] = ()  # what resolving decided that the report should say
    data: DataSettings = dataclasses.field(default_factory=DataSettings)  # how raw data files become inputs

    @property
    def act_matmul_min_dim(self) -> int:
        """MatMuls of two activations are quantized only where their head dimension is at least this (0: all):
        ACT_MATMUL_MIN_DIM under --act-matmul auto (see below)."""
        return ACT_MATMUL_MIN_DIM if self.convert.act_matmul == ActMatmul.AUTO else 0

    @property
    def symmetric(self) -> bool:
        return self.convert.activations == Activations.SYMMETRIC

    @property
    def eval_data(self) -> str | None:
        return self.convert.eval_data or self.calibration_data

    @property
    def scheme(self) -> str:
        """half (fp16/bf16), int4 (weight-only), dynamic or static (INT8)."""
        if self.convert.precision in (Precision.FP16, Precision.BF16):
            return "half"
        if self.convert.precision == Precision.INT4:
            return "int4"
        return "dynamic" if self.convert.mode == Mode.DYNAMIC else "static"

    def for_opset(self, opset: int) -> Resolved:
        """Per-channel weights only where the prepared model's opset allows them (>= 13)."""
        per_channel = self.convert.weights != Weights.PER_TENSOR
        if per_channel and opset < 13:
            return dataclasses.replace(self, per_channel=False, notes=self.notes + (
                "per-channel weights need opset 13: using per-tensor weights",))
        return dataclasses.replace(self, per_channel=per_channel)

    def with_artifact_data(self, recorded: str | None, recorded_data: DataSettings | None = None) -> Resolved:
        """The calibration data: the given one, else what the calibration artifact recorded (and, for a decoded
        source, how it was decoded)."""
        if self.calibration_data or recorded is None:
            return self
        return dataclasses.replace(self, calibration_data=recorded, data=recorded_data or self.data)

    def with_convert(self, convert: ConvertSettings) -> Resolved:
        """The same decisions with other convert settings (per-node rules of a candidate build)."""
        return dataclasses.replace(self, convert=convert)


def quantize_act_matmul(settings: ConvertSettings, cpu: CpuInfo) -> bool:
    """--act-matmul: auto quantizes MatMuls of two activations only where integer kernels compute faster than
    FP32 (VNNI/AMX, ARM dot product): elsewhere quantizing both inputs at run time is pure overhead (on the
    AVX2 transformer sample, attention in float ran faster and was more accurate)."""
    if settings.act_matmul == ActMatmul.AUTO:
        return cpu.int8_compute_fast
    return settings.act_matmul == ActMatmul.INT8


# --act-matmul auto on a CPU with fast int8 (AVX512-VNNI here): a MatMul of two activations is quantized only where
# its head dimension (the smaller static one of its inner and output dims) is at least 64.  Measured on an AMD EPYC
# with AVX512-VNNI, onnxruntime 1.32, 1 thread, QDQ int8 vs float per MatMul: head dim 32 (Q.K^T and P.V, seq
# 48-512) x1.13-1.60 slower in int8; head dim 64-128 x0.67-1.03 (one outlier x1.21).  On MiniLM-L6 (12 heads of
# 32) attention in float made the whole model x0.95-0.99 the time of int8 attention (seq 48, 128, 256) and raised
# nearest-neighbour agreement from 95.1% to 95.6% (384 sentences).
ACT_MATMUL_MIN_DIM = 64


def resolve(convert: ConvertSettings, calibrate: CalibrateSettings | None = None,
            cpu: CpuInfo | None = None, data: DataSettings | None = None) -> Resolved:
    cpu = cpu or detect_cpu()
    reduce_range = convert.reduce_range == ReduceRange.ON or (
        convert.reduce_range == ReduceRange.AUTO and cpu.u8s8_saturates)
    notes: list[str] = []
    if convert.precision == Precision.INT8:
        if convert.reduce_range == ReduceRange.AUTO:
            notes.append(f"CPU INT8 path: {cpu.int8_path}; weights "
                         f"{'7-bit (reduce range)' if reduce_range else 'full 8-bit'}")
        if cpu.int8_speed_note:
            notes.append(f"speed: {cpu.int8_speed_note}")
    data_settings = data
    data = calibrate.data if calibrate is not None and calibrate.data else None
    return Resolved(convert, calibrate, cpu, reduce_range, quantize_act_matmul(convert, cpu),
                    calibration_data=data, notes=tuple(notes), data=data_settings or DataSettings())
