"""The ``--device`` of train, eval and predict: checked before anything runs.

A device that is not valid or not available is an error, never a quiet fall-back to the CPU:
a user who asked for the GPU and got the CPU would wait hours for a run they meant to take
minutes, or compare timings that are not what they think.
"""

from __future__ import annotations

import torch

from specc.errors import SpeccError
from specc.hardware import cpu_info

#: What ``--device`` accepts (a GPU other than the first is picked with CUDA_VISIBLE_DEVICES,
#: or by torchrun's LOCAL_RANK).
DEVICES = ("cpu", "cuda")


def resolve_device(name: str | None) -> torch.device:
    """The device ``name`` names: ``cpu``, ``cuda``, or (None) CUDA when available, else the CPU.

    Raises:
        SpeccError: ``name`` is not one of :data:`DEVICES`, or is ``cuda`` on a machine where
            torch sees no GPU.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise SpeccError(f"--device: expected {' or '.join(DEVICES)}, found {name!r}"
                         + (" (pick a GPU with CUDA_VISIBLE_DEVICES)" if name.startswith("cuda:")
                            else ""))
    if name == "cuda" and not torch.cuda.is_available():
        raise SpeccError(f"--device cuda: CUDA is not available (torch {torch.__version__} sees "
                         "no GPU); use --device cpu")
    return torch.device(name)


#: ``train.precision`` → the autocast dtype (None: plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, when the hardware computes in it.

    bf16 on the CPU needs native bf16 arithmetic (AVX-512 bf16, AMX, Arm bf16): elsewhere
    PyTorch emulates it and a step runs many times slower than in fp32, which is refused rather
    than run. fp16 autocast is a CUDA feature.

    Raises:
        SpeccError: the reason ``precision`` cannot run here, and what to use instead.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if device.type == "cuda":
        # a GPU before Ampere emulates bf16, many times slower: refused as on the CPU
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        if dtype is torch.bfloat16 and not native:
            raise SpeccError(f"{torch.cuda.get_device_name(device)} has no bf16 arithmetic; "
                             "use fp16 or fp32")
        return dtype
    if dtype is torch.float16:
        raise SpeccError("fp16 needs a CUDA GPU and this run is on the CPU; use fp32, or bf16 "
                         "on a CPU with native bf16")
    cpu = cpu_info()
    if not cpu.has_bf16:
        raise SpeccError(f"this CPU ({cpu.summary()}) has no native bf16 arithmetic (AVX-512 "
                         "bf16 or AMX), so bf16 would run many times slower than fp32; use fp32")
    return dtype
