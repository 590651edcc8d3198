"""What the CPU can do for INT8, and which integer path ONNX Runtime's MLAS kernels take.

On x86-64, uint8 x int8 kernels without VNNI use VPMADDUBSW, which adds pairs of u8*s8 products into
int16 with saturation: 255*127*2 > 32767, so full-range int8 weights can saturate.  The safe choice
there is *reduce range*: 7-bit weights ([-63, 63]), whose pair sums always fit.  With VNNI
(AVX512-VNNI, AVX-VNNI) or AMX the products accumulate in int32 and full-range weights are exact.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path

X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx512_fp16")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "fphp", "asimdhp")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    arch: str
    flags: tuple[str, ...]

    @property
    def has_vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "AMD64", "i686")

    @property
    def int8_path(self) -> str:
        f = self.flags
        if self.is_x86:
            if "amx_int8" in f:
                return "AMX-INT8 (int32 accumulation)"
            if "avx512_vnni" in f:
                return "AVX512-VNNI (int32 accumulation, no saturation)"
            if "avx_vnni" in f:
                return "AVX-VNNI (int32 accumulation, no saturation)"
            if "avx512f" in f:
                return "AVX-512 without VNNI (u8s8 may saturate in int16)"
            if "avx2" in f:
                return "AVX2 without VNNI (u8s8 may saturate in int16)"
            return "SSE (slow integer path)"
        if "i8mm" in f:
            return "ARM i8mm (int32 accumulation)"
        if "asimddp" in f:
            return "ARM dot product (int32 accumulation)"
        return "generic"

    @property
    def u8s8_saturates(self) -> bool:
        return self.is_x86 and not self.has_vnni

    @property
    def int8_compute_fast(self) -> bool:
        """Integer kernels compute faster than FP32 here (x86 VNNI/AMX, ARM dot product / i8mm)."""
        if self.is_x86:
            return self.has_vnni
        return any(f in self.flags for f in ("asimddp", "i8mm"))

    @property
    def int8_speed_note(self) -> str | None:
        """Why integer kernels will not beat FP32 on this CPU, or None where they are expected to.

        Measured with bench/kernels.py on an AVX2 machine without VNNI (AMD EPYC, onnxruntime 1.32): fused
        QLinearConv/QLinearMatMul ran at 1.0-1.1x the FP32 latency for large ops, 1.1-1.3x for small ones and
        1.5-1.8x for depthwise convolutions, but 0.2-0.7x for batch-1 MatMuls with 0.3-2.4M weights (memory
        bound: int8 weights are 4x fewer bytes); the same kernels with AVX512-VNNI ran models about 2x faster.
        """
        if self.is_x86 and not self.has_vnni:
            return ("this CPU has no VNNI/AMX: ONNX Runtime's u8s8 kernels compute at about FP32 speed here, so "
                    "INT8 is faster only where reading weights dominates (batch-1 MatMul/Gemm with large weights); "
                    "convolutions and large batches run at FP32 speed, depthwise convs slower")
        return None

    def summary(self) -> str:
        shown = [f for f in X86_FLAGS + ARM_FLAGS if f in self.flags]
        return f"{self.arch} [{', '.join(shown) or 'no SIMD flags found'}]"


@functools.lru_cache(maxsize=1)
def detect() -> CpuInfo:
    """The CPU's architecture and the instruction-set flags that decide ONNX Runtime's kernels (read once)."""
    arch = platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = set(X86_FLAGS + ARM_FLAGS)
    return CpuInfo(arch, tuple(sorted(flags & wanted)))
