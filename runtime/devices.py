"""The ``--device`` of train, eval and predict: checked before anything runs.

A device that is not valid or not available is an error, never a quiet fall-back to the CPU:
a user who asked for the GPU and got the CPU would wait hours for a run they meant to take
minutes, or compare timings that are not what they think.
"""

from __future__ import annotations

import torch

from specc.errors import SpeccError

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
