"""What machine a benchmark ran on, shared by the benchmark scripts."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fast_precision() -> str:
    """``bf16-mixed`` where the CPU computes bf16 natively (AMX, AVX512-BF16), else ``32-true``
    (emulated bf16 measured 12x slower than fp32 on an AVX2-only AMD EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "32-true"
    return "bf16-mixed" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "32-true"
