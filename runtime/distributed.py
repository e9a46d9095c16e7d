"""Running under ``torchrun``: process group, device choice, model wrapping, small collectives.

``torchrun --nproc_per_node=N -m specc train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` reads them and joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU). Without them everything here degrades to one process and
the collectives become no-ops, so the training loop reads the same either way.

Batch norm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm``, so the statistics are
taken over the global batch (batch size matters for BN, DeepLabv3 §4.1). PyTorch implements
SyncBatchNorm for accelerators only; CPU processes (gloo) keep per-process statistics and the
running averages of rank 0 are broadcast by DDP on every forward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.devices import resolve_device
from specc.errors import TrainingError

T = TypeVar("T")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and exports the model."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    """An integer environment variable set by torchrun; TrainingError if it is not a number."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | None = None) -> Context:
    """Read torchrun's environment, pick the device and join the process group when needed.

    ``device`` forces ``"cpu"`` or ``"cuda"``; by default CUDA is used when available. Each
    process takes GPU ``LOCAL_RANK``.

    Raises:
        TrainingError: malformed torchrun variables.
        SpeccError: a device that is not valid, or CUDA requested but not available.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=30),  # rank 0 may evaluate or export while others wait
        )
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(ctx: Context) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """The model as training runs it: SyncBatchNorm + DDP across processes, unchanged for one.

    ``unwrap`` gives back the module whose ``state_dict`` is saved (the same parameter names).
    """
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_buffers(model: nn.Module, ctx: Context) -> None:
    """Give every process rank 0's buffers (BN running statistics) before evaluating.

    DDP broadcasts buffers at the start of each forward pass, but each process then updates its
    own copy; this makes evaluation on every rank use exactly the statistics that get saved.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum ``tensor`` in place over all processes (no-op for one) and return it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: float, ctx: Context) -> float:
    """The mean of a Python float over all processes."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def gather_objects(obj: T, ctx: Context) -> list[T]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    """Wait until every process gets here."""
    if ctx.distributed:
        dist.barrier()
