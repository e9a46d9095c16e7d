"""Running under ``torchrun``: process group, device choice, model wrapping, small collectives.

``torchrun --nproc_per_node=N -m specc train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` reads them and joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU). Without them everything here degrades to one process and
the collectives become no-ops, so the training loop reads the same either way.

Errors: every process of a job meets bad input on its own. :func:`stop_message` has the
processes compare what they stop on, so the user reads an error every process meets once, from
rank 0, and one that only some meet from each of those, after its rank.

Batch norm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm``, so the statistics are
taken over the global batch (batch size matters for BN, DeepLabv3 §4.1). PyTorch implements
SyncBatchNorm for accelerators only; CPU processes (gloo) keep per-process statistics and the
running averages of rank 0 are broadcast by DDP on every forward pass.
"""

from __future__ import annotations

import os
import time
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
#: How long a process that stops on an error waits for the other processes of the job to report
#: theirs, in seconds. Processes that stop on the same input do so within moments of each other:
#: they started together and run the same code on it.
STOP_WAIT_S = 10.0


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


def stop_message(message: str) -> str | None:
    """What this process prints of the ``message`` it stops on (one for the user, not a bug).

    One process prints it as it is. Under torchrun the processes first compare what they stop on
    (:func:`_messages_of_all`): a message that every process stops on is printed once, by rank 0
    (None on the others); any other is printed by each process that stops on it, after ``rank
    N:``, so an error that only some processes meet (a file only one of them reads) is neither
    hidden nor taken for the whole job's.
    """
    try:
        rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    except TrainingError:  # setup() refuses these variables: one message per process
        return message
    if world_size <= 1:
        return message
    if _messages_of_all(message, rank, world_size) == [message] * world_size:
        return message if rank == 0 else None
    return f"rank {rank}: {message}"


def _messages_of_all(message: str, rank: int, world_size: int) -> list[str | None] | None:
    """The message each process stops on, in rank order, once this one's is posted: None for a
    process that posted none within :data:`STOP_WAIT_S` (it goes on, or stopped otherwise).
    None when the processes have nowhere to meet (:func:`_agent_store`)."""
    store = _agent_store()
    if store is None:
        return None
    keys = [str(r) for r in range(world_size)]
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        store.set(keys[rank], message)
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.05)  # polled: a timed-out wait() logs a warning of its own
        return [store.get(key).decode() if store.check([key]) else None for key in keys]
    except (RuntimeError, KeyboardInterrupt):  # the agent is gone, or Ctrl-C: wait no longer
        return None


def _agent_store() -> dist.Store | None:
    """The key-value store torchrun's agent keeps for the job, under keys of this run and restart
    only; None where there is none (not torchrun, or ``TORCHELASTIC_USE_AGENT_STORE`` off).
    Unlike the process group, it serves before a process joins the group and after one left it.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=STOP_WAIT_S), wait_for_workers=False)
    except (KeyError, ValueError, RuntimeError):
        return None
    run = f"{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(f"specc/stop/{run}", store)


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
