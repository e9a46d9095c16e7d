"""What the machine's CPU can do, read once from ``/proc/cpuinfo`` (Linux) or ``platform``.

The fastest precision of a deployed model depends on the CPU: bf16 is fast only where the CPU
computes in bf16 natively (AVX-512 bf16 or AMX), and is ~10× slower than fp32 where it has to be
emulated; int8 is fastest with VNNI or AMX. Every benchmark prints :func:`cpu_info` so that its
figures say what they were measured on.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: The instruction-set features that decide the fastest precision, as ``/proc/cpuinfo`` names them.
FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
            "amx_int8", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, logical core count and which of :data:`FEATURES` it has."""

    model: str
    cores: int
    features: tuple[str, ...]

    @property
    def has_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX-512 bf16 or AMX)."""
        return "avx512_bf16" in self.features or "amx_bf16" in self.features

    @property
    def has_vnni(self) -> bool:
        """int8 dot products in hardware (VNNI, in AVX-512 or AVX form, or AMX)."""
        return any(f in self.features for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    def describe(self) -> str:
        """One line: model, cores and features, e.g. ``AMD EPYC, 2 cores, avx2 fma``."""
        return f"{self.model}, {self.cores} cores, {' '.join(self.features) or 'no AVX2'}"

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "cores": self.cores, "features": list(self.features),
                "bf16": self.has_bf16, "vnni": self.has_vnni}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """The first processor's model name and flags in a ``/proc/cpuinfo`` text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


@functools.cache
def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU (cached: it does not change while the process runs)."""
    try:
        model, flags = parse_cpuinfo(Path(cpuinfo).read_text(errors="replace"))
    except OSError:
        model, flags = "", set()
    return CpuInfo(model=model or platform.processor() or platform.machine(),
                   cores=os.cpu_count() or 1,
                   features=tuple(f for f in FEATURES if f in flags))
