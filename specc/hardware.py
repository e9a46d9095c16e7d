"""What the CPU can do: its model name and the instruction-set features that decide which kernels
and precisions run fast.

bf16 is only worth using where the CPU computes in it natively (AVX-512 bf16 or AMX on x86, the
``bf16`` feature on Arm); elsewhere PyTorch emulates it and a bf16 step runs many times slower
than fp32. int8 gains need VNNI (AVX-512 or AVX) or AMX. The training runtime asks
:func:`cpu_info` before it accepts ``train.precision: bf16``; benchmarks print
:meth:`CpuInfo.summary` so that every figure says what it was measured on.

Read from ``/proc/cpuinfo`` (Linux); elsewhere the model comes from :mod:`platform` and no
feature is claimed, so nothing is chosen that might not be there.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: The features reported, in this order: those that pick kernels and precisions.
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
            "amx_tile", "amx_bf16", "amx_int8", "asimddp", "i8mm", "bf16")
#: Native bf16 arithmetic: AVX-512 bf16, AMX bf16 (x86) or the Arm ``bf16`` feature.
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: int8 dot products: VNNI (AVX-512 or AVX), AMX int8, Arm's dot-product and matrix extensions.
INT8_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which of :data:`FEATURES` it has."""

    model: str
    features: frozenset[str]

    @property
    def has_avx2(self) -> bool:
        return "avx2" in self.features

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.features

    @property
    def has_bf16(self) -> bool:
        """Native bf16 arithmetic (bf16 autocast is fast, not emulated)."""
        return bool(self.features & BF16_FEATURES)

    @property
    def has_vnni(self) -> bool:
        """int8 dot-product instructions (VNNI or the Arm equivalents)."""
        return bool(self.features & INT8_FEATURES)

    @property
    def has_amx(self) -> bool:
        """Intel's matrix tiles (AMX), the fastest bf16 and int8 path on x86."""
        return "amx_tile" in self.features

    def as_dict(self) -> dict[str, object]:
        """What a benchmark or an artifact list records of the machine."""
        return {"model": self.model, "cores": usable_cores(),
                "features": [f for f in FEATURES if f in self.features],
                "bf16": self.has_bf16, "vnni": self.has_vnni, "amx": self.has_amx}

    def summary(self) -> str:
        """One line: the model and the features found, in :data:`FEATURES` order."""
        found = [f for f in FEATURES if f in self.features]
        return f"{self.model}; features: {' '.join(found) or 'none of ' + ', '.join(FEATURES)}"


def parse_cpuinfo(text: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (x86 ``flags`` or Arm
    ``Features``; the first processor's entry names the model). On x86 the model name is
    followed by the family and model numbers, which tell CPU generations apart where a virtual
    machine names only the brand ("AMD EPYC (family 23, model 49)" is a Zen 2)."""
    model, flags, numbers = "", set(), {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("cpu family", "model") and key not in numbers:
            numbers[key] = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in numbers and "model" in numbers:
        model = f"{model} (family {numbers['cpu family']}, model {numbers['model']})"
    return CpuInfo(model=model, features=frozenset(flags & set(FEATURES)))


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once per process."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1
