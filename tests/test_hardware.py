"""The CPU's model and features are read from /proc/cpuinfo text (x86 and Arm alike)."""

from __future__ import annotations

import dataclasses

import pytest

from specc.hardware import CpuInfo, cpu_info, parse_cpuinfo

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd asimddp bf16 i8mm sve
"""


def test_an_avx2_cpu_has_neither_native_bf16_nor_vnni() -> None:
    info = parse_cpuinfo(AVX2_ONLY)
    # a VM's bare brand name, with the family and model that tell the generation (Zen 2)
    assert info == CpuInfo(model="AMD EPYC (family 23, model 49)",
                           features=frozenset({"avx2", "fma"}))
    assert info.has_avx2 and not (info.has_avx512 or info.has_bf16 or info.has_vnni
                                  or info.has_amx)
    assert info.summary() == "AMD EPYC (family 23, model 49); features: avx2 fma"


def test_avx512_bf16_and_amx_are_found() -> None:
    info = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert info.model.startswith("Intel(R) Xeon")
    assert info.has_avx512 and info.has_bf16 and info.has_vnni and info.has_amx


def test_arm_features_count_too() -> None:
    info = parse_cpuinfo(GRAVITON3)
    assert info.has_bf16 and info.has_vnni and not info.has_avx2
    assert info.model  # no model line: platform's name, never empty


def test_this_machine_is_read_once_into_a_frozen_value() -> None:
    info = cpu_info()
    assert cpu_info() is info
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.model = "other"  # type: ignore[misc]
