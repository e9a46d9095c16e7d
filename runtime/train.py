"""The training loop: DeepLabv3 §4.1's protocol, as plain as nanoGPT's train.py.

One function, :func:`train`, reads top to bottom: set up processes and seeds, open the data,
build the model from the spec, make the optimizer, maybe resume, then loop — learning rate,
batch, forward, loss, step, log, evaluate, save — and finally export TorchScript.

Choices and their reasons (the numbers themselves live in ``spec.train``, see spec_train.py):

* SGD with momentum and the "poly" schedule ``lr · (1 − it/iters)^power`` (DeepLabv3 §4.1).
* Weight decay on convolution and linear weights only, not on batch-norm scales/shifts or
  biases: the TF DeepLab code puts its L2 regularizer on conv weights only (slim's arg_scope).
* Batch-norm momentum ``1 − bn_decay`` (TF's decay 0.9997 is PyTorch's momentum 0.0003).
  ``freeze_bn`` keeps BN layers in eval mode and their affine parameters fixed: the paper's second
  stage (fine-tuning at output stride 8 with a small batch).
* The model returns logits at input resolution, so the loss is cross-entropy against the
  full-resolution labels (downsampling the labels instead cost ~1.2 %, DeepLabv3 §4.1), averaged
  over non-ignored pixels, plus ``aux_weight`` times the auxiliary head's loss when there is one.
* Hard-image bootstrapping (DeepLabv3 §4.3): images with ``hard_classes`` appear ``hard_repeat``
  times per epoch.
* ``train.loss`` may mine hard pixels, weight classes and smooth labels (``runtime.losses``);
  ``train.accumulate`` sums the gradients of several batches before one update.
* ``--init`` may come from a model with another class count: the classifier layers start fresh
  (``runtime.finetune``), which also makes the parameter groups of ``train.lr_mult`` and holds
  the backbone still for ``train.freeze_backbone_iters``.
* A non-finite loss (or non-finite weights at save time) stops the run with a TrainingError;
  the step is not applied and the last good checkpoint stays. A training split without a
  labelled pixel (every batch's loss would be 0) is refused before the first step.
* Seeds: the same seed on every process for the initial weights. The data order and every
  augmentation draw are a function of (seed, epoch, rank, position) (``runtime.data.TrainOrder``),
  and the global random state (dropout) is saved with each checkpoint, so a run resumed from
  iteration k reads the same batches and draws the same numbers as the uninterrupted run: on the
  CPU, with the same process count and batch size, its weights match it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from runtime import checkpoint as ckpt
from runtime import distributed, finetune, losses
from runtime.data import (
    Prefetcher,
    bootstrap_indices,
    has_labelled_pixel,
    open_split,
    train_stream,
    train_transform,
)
from runtime.data.loader import mix_seed
from runtime.devices import precision_dtype
from runtime.evaluate import DEFAULT_EVAL_BATCH, alignment, evaluate, val_batches
from runtime.report import SILENT, LineReporter, Reporter
from runtime.tensorboard import Board
from specc import artifacts
from specc.api import Compilation, compile_spec
from specc.compile import instantiate
from specc.errors import DataError, SpeccError, TrainingError, WeightsError
from specc.fsutil import atomic_write_text
from specc.hardware import usable_cores
from specc.spec_train import LossSpec
from specc.train_passes import exact_batchnorm

METRICS = "metrics.jsonl"
#: The run's record of how it was set up: effective batch, parameter groups, loss, --init.
RUN_RECORD = "run.json"
#: C++ compilers inductor can build its CPU kernels with (``train.compile``).
CXX = ("c++", "g++", "clang++")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    iteration: int
    loss: float | None  # mean loss of the last logged window
    scores: dict[str, Any] | None  # the final evaluation (rank 0), as in ``specc eval --json``
    model_path: Path | None  # RUN_DIR/model.pt (rank 0)


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """The "poly" learning rate of DeepLabv3 §4.1 for the step taken at ``iteration`` (0-based)."""
    return base_lr * (1.0 - iteration / max_iter) ** power


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of the model (plain or synchronized)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, except batch norm stays in eval mode when it is frozen."""
    model.train()
    if freeze_bn:
        for bn in batchnorms(model):
            bn.eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: conv/linear weights with weight decay; BN parameters and biases without
    (``runtime.finetune.lr_groups`` with no learning-rate multipliers)."""
    return finetune.lr_groups(model, weight_decay, {}).groups


def make_optimizer(groups: finetune.LrGroups, tr: Any) -> torch.optim.SGD:
    """SGD with momentum over ``groups`` (their weight decay; the lr is set every step). The
    fused implementation: one kernel over all parameters instead of a few per parameter, the
    same update to float rounding (a last-bit difference on some elements) in less time (the
    demo's 197 tensors: 2.3–2.8× faster, ``benchmarks/optimizer_step.py``)."""
    return torch.optim.SGD(groups.groups, lr=tr.lr, momentum=tr.momentum, fused=True)


def segmentation_loss(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, ignore_index: int, aux_weight: float,
    *, loss_spec: Any = None, iteration: int = 0, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the full-resolution logits, averaged over labelled pixels, plus aux.

    ``loss_spec`` (``train.loss``; default plain cross-entropy) chooses hard-pixel mining and label
    smoothing, with the class weights as a tensor (``runtime.losses``); ``iteration`` places the
    hard-pixel warm-up.
    """

    def cross_entropy(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != labels.shape[-2:]:
            raise TrainingError(
                f"the model's logits are {tuple(logits.shape[-2:])} but the labels are "
                f"{tuple(labels.shape[-2:])}; the model must upsample to the input size")
        # a batch that is all void gives loss 0, not 0/0
        return losses.mean_loss(logits, labels, ignore_index, loss_spec or LossSpec(),
                                iteration=iteration, weight=class_weights)

    loss = cross_entropy(outputs["out"])
    if "aux" in outputs:  # kept even at weight 0, so DDP sees a gradient for every parameter
        loss = loss + aux_weight * cross_entropy(outputs["aux"])
    return loss


def _trim_metrics(path: Path, last_iter: int) -> None:
    """Keep the records up to ``last_iter`` (the checkpoint): a resumed run rewrites the rest."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iter"] <= last_iter:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def train(
    doc: Any,
    run_dir: Path,
    *,
    resume: bool = False,
    init: Path | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Train the model of a loaded spec (``specc.api.load_spec``) into ``run_dir``.

    ``resume`` continues from ``RUN_DIR/checkpoint`` (same architecture required; with no
    checkpoint yet it starts from iteration 0). ``init`` starts from the weights of another run or
    file (e.g. stage 1 of the paper, before fine-tuning at output stride 8 with frozen BN).
    Under ``torchrun`` every process calls this; rank 0 logs and writes files. Messages and
    progress go to ``reporter`` (default: plain lines on standard error). ``tensorboard`` also
    logs to ``RUN_DIR/tensorboard`` (:mod:`runtime.tensorboard`).

    Raises:
        TrainingError: a non-finite loss, a checkpoint of another architecture, a batch that does
            not split over the processes, ...
        DataError / WeightsError: unreadable data or weights that do not fit.
    """
    ctx = distributed.setup(device)
    run_dir = Path(run_dir)
    existed = run_dir.exists()
    try:
        with _held(run_dir, resume, ctx):
            try:
                try:
                    return _train(doc, run_dir, resume, init, ctx, reporter or LineReporter(),
                                  tensorboard)
                except OSError as err:  # a full disk, a read-only or vanished folder: not a bug
                    raise TrainingError(os_error_message(err, run_dir)) from None
            except BaseException:
                if ctx.is_main and not existed:
                    _discard_unused(run_dir)
                raise
    finally:
        distributed.cleanup(ctx)


@contextlib.contextmanager
def _held(run_dir: Path, resume: bool, ctx: distributed.Context) -> Iterator[None]:
    """Rank 0 holds the run folder while the run writes into it
    (:func:`runtime.checkpoint.held_run_folder`); a folder another run holds is refused before
    anything in it changes. The folder is checked (:func:`runtime.checkpoint.check_run_folder`)
    once held, so a run that has just begun writing there is refused as a run in progress, not
    by the half-written files it holds; and before, where the folder is not one yet (a file in
    its place, a parent that cannot be written), so that is said in plain words."""
    if not ctx.is_main:
        yield
        return
    if not run_dir.is_dir():
        ckpt.check_run_folder(run_dir, resume)
    with ckpt.held_run_folder(run_dir):
        ckpt.check_run_folder(run_dir, resume)
        yield


def os_error_message(err: OSError, run_dir: Path) -> str:
    """One line for an operating-system error met while training into ``run_dir``: the path,
    what went wrong and, for the common cases, what to do."""
    hints = {errno.ENOSPC: "free some space, or pass --out on another disk",
             errno.EACCES: "pass --out with a folder you can write to",
             errno.EROFS: "pass --out with a folder on a writable disk",
             errno.ENOENT: "was the run folder moved or deleted while training?"}
    hint = hints.get(err.errno or 0)
    path = err.filename or run_dir
    return (f"{path}: {err.strerror or err} (training into {run_dir})"
            + (f"; {hint}" if hint else ""))


def _discard_unused(run_dir: Path) -> None:
    """Remove a run folder this run created when it holds nothing of use yet (no checkpoint and
    no logged step: only the files the run wrote first), so a failed start leaves nothing."""
    first_files = {"spec.json", METRICS, RUN_RECORD}
    with contextlib.suppress(OSError):
        entries = list(run_dir.iterdir())
        if ({e.name for e in entries} <= first_files
                and all(e.is_file() and (e.name != METRICS or e.stat().st_size == 0)
                        for e in entries)):
            for entry in entries:
                entry.unlink()
            run_dir.rmdir()


def _train(doc: Any, run_dir: Path, resume: bool, init: Path | None,
           ctx: distributed.Context, reporter: Reporter, tensorboard: bool = False) -> TrainResult:
    spec, tr = doc.spec, doc.spec.train
    report = reporter if ctx.is_main else SILENT  # rank 0 speaks for the job
    saved = _check_run(run_dir, resume, tr.batch_size, ctx, report)
    per_rank = tr.batch_size // ctx.world_size  # the global batch is split across processes
    _check_norm_batch(spec, per_rank, ctx)
    amp_dtype, channels_last = step_settings(doc, ctx.device)
    if tr.compile:
        _check_compile(doc, ctx.device)
    torch.backends.cudnn.benchmark = True  # fixed crop: let cuDNN pick its fastest kernels

    # -- model: the same seed everywhere gives every process the same initial weights
    comp = compile_spec(doc)
    seed_everything(tr.seed)
    model, started_from = _make_model(comp, ctx, _init_to_load(init, saved, report), report)
    model = prepare_for_steps(model, channels_last, ctx.device)

    # -- optimizer: SGD + momentum; the poly schedule sets the lr every step (times lr_mult)
    groups = finetune.lr_groups(model, tr.weight_decay, tr.lr_mult)
    optimizer = make_optimizer(groups, tr)
    class_weights = losses.class_weight_tensor(tr.loss, spec.num_classes, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    # -- resume: weights, optimizer, iteration and RNG from the last good checkpoint
    start, rng_restored = 0, False
    if saved is not None:
        start, rng_restored = _resume(doc, run_dir, saved, model, optimizer, scaler, ctx, report)
    if not rng_restored:  # per process: different augmentation on every rank
        seed_everything(mix_seed(tr.seed, start, ctx.rank))

    # -- data: random scale / crop / flip (DeepLabv3 §4.1), hard images repeated (§4.3)
    loader = _train_loader(spec, ctx, per_rank, start)
    val_set, val_loader = val_batches(spec, ctx)

    # -- wrap for several processes (SyncBatchNorm on CUDA, DDP), logging on rank 0
    ddp = distributed.wrap(model, ctx)
    raw = distributed.unwrap(ddp)
    stepper = torch.compile(ddp) if tr.compile else ddp  # the same module, compiled on first use
    log = _open_logs(run_dir, start, artifacts.spec_info(doc), ctx)
    _write_run_record(run_dir, ctx, tr, per_rank, groups, started_from, start)
    board = Board(run_dir, val_set.class_names, spec.input.mean, spec.input.std, start) if (
        tensorboard and ctx.is_main) else None
    if board is not None:
        board.graph(raw, spec.data.crop or spec.input.size)
    if ctx.distributed and ctx.device.type != "cuda":
        report.message("note: SyncBatchNorm needs GPUs; CPU processes keep per-process BN "
                       "statistics")
    last_loss: float | None = None
    scores: dict[str, Any] | None = None
    window: list[float] = []
    t_start = t_window = time.perf_counter()
    set_train_mode(ddp, tr.freeze_bn)

    batches = batch_stream(loader, ctx.device)
    try:
        with report.progress("train", tr.iters, start, loss=math.nan,
                             lr=poly_lr(tr.lr, start, tr.iters, tr.poly_power),
                             speed=0.0) as progress:
            for it in range(start, tr.iters):
                # one SGD step at the poly learning rate
                lr = poly_lr(tr.lr, it, tr.iters, tr.poly_power)
                micro = [next(batches) for _ in range(tr.accumulate)]
                loss_value = _step(stepper, optimizer, scaler, micro, lr, tr, ctx, amp_dtype,
                                   channels_last, Tuning(groups, class_weights), run_dir, it)
                done = it + 1
                window.append(loss_value)

                # evaluate (every eval_every iterations and at the end)
                record: dict[str, Any] = {}
                if done == tr.iters or (tr.eval_every and done % tr.eval_every == 0):
                    distributed.sync_buffers(raw, ctx)
                    result = evaluate(raw, val_loader, spec.num_classes, device=ctx.device, ctx=ctx,
                                      ignore_index=tr.ignore_index, amp_dtype=amp_dtype,
                                      total=len(val_set), reporter=report,
                                      align=alignment(doc.resolved),
                                      batch_size=DEFAULT_EVAL_BATCH)
                    set_train_mode(ddp, tr.freeze_bn)
                    scores = result.as_dict(val_set.class_names)
                    if board is not None:
                        board.overlays(raw, val_set, done)
                    record = {key: scores[key]  # null, not NaN, where no pixel is labelled
                              for key in ("miou", "pixel_accuracy", "per_class_iou")}

                # log: metrics.jsonl, TensorBoard, progress
                if done % tr.log_every == 0 or done == tr.iters or record:
                    now = time.perf_counter()
                    last_loss = sum(window) / len(window)
                    speed = len(window) / max(now - t_window, 1e-9)
                    _write_record({"iter": done, "loss": last_loss, "lr": lr, "it_s": speed,
                                   "elapsed_s": now - t_start, **record}, log, board)
                    progress.update(done, loss=last_loss, lr=lr, speed=speed)
                    window, t_window = [], now
                progress.update(done)

                # checkpoint: every save_every iterations and at the end
                if done % tr.save_every == 0 or done == tr.iters:
                    _save(doc, run_dir, raw, optimizer, scaler, done, lr, ctx)
    finally:
        if isinstance(batches, Prefetcher):
            batches.close()
        if log is not None:
            log.close()
        if board is not None:
            board.close()

    model_path = _export(comp, raw, run_dir) if ctx.is_main else None
    distributed.barrier(ctx)
    return TrainResult(run_dir=run_dir, iteration=tr.iters, loss=last_loss, scores=scores,
                       model_path=model_path)


# ---------------------------------------------------------------------------------------------
# The steps of a run


def _check_run(run_dir: Path, resume: bool, batch_size: int, ctx: distributed.Context,
               report: Reporter) -> Path | None:
    """The checkpoint to resume from, if any. A new run never overwrites a checkpoint.

    Raises:
        TrainingError: a checkpoint without --resume, a folder that is not a specc run
            folder, or a batch that does not split.
    """
    ckpt.check_run_folder(run_dir, resume)
    saved = ckpt.checkpoint_dir(run_dir)
    if saved is None and (run_dir / artifacts.LINK).is_symlink():
        ckpt.load_checkpoint(run_dir)  # a dangling link: says so rather than start afresh
    if saved is not None and not resume:
        raise TrainingError(f"{run_dir} already holds a checkpoint ({saved.name}); pass --resume "
                            "to continue it, or --out to train into another folder")
    if resume and saved is None:
        report.message(f"resume: no checkpoint in {run_dir} yet, starting from iteration 0")
    if batch_size % ctx.world_size:
        raise TrainingError(f"train.batch_size={batch_size} does not split over "
                            f"{ctx.world_size} processes; use a multiple of {ctx.world_size}")
    return saved


def _check_norm_batch(spec: Any, per_rank: int, ctx: distributed.Context) -> None:
    """Refuse, before anything is written, a batch of one image per process when the
    image-pooling branch has a training BatchNorm: it sees one value per channel there, which
    batch norm cannot normalize ("Expected more than 1 value per channel").

    Raises:
        TrainingError: naming ``aspp.image_pooling.norm`` and the ways out.
    """
    aspp = spec.aspp
    if (per_rank > 1 or spec.train.freeze_bn or aspp is None
            or not aspp.image_pooling.enabled or aspp.image_pooling.norm != "batch"):
        return
    processes = f" over {ctx.world_size} processes" if ctx.distributed else ""
    raise TrainingError(
        f"train.batch_size={spec.train.batch_size}{processes} gives 1 image per process, but "
        "the image-pooling branch's BatchNorm (aspp.image_pooling.norm: batch) needs at least "
        "2 to train. Set aspp.image_pooling.norm to group or none (--set "
        "aspp.image_pooling.norm=group), use a batch of at least "
        f"{2 * ctx.world_size}, or keep batch norm frozen (train.freeze_bn=true)")


def _init_to_load(init: Path | None, saved: Path | None, report: Reporter) -> Path | None:
    """``--init`` when the run starts afresh; None when it resumes from a checkpoint, whose
    weights would replace those of ``--init`` (``--resume --init W`` is one command line for a
    job that may be restarted: W the first time, the run's own checkpoint after), saying so
    rather than reporting weights loaded that the run does not use."""
    if init is not None and saved is not None:
        report.message(f"--init {init} is not used: the run resumes from its own weights in "
                       f"{saved}")
        return None
    return init


def _make_model(comp: Compilation, ctx: distributed.Context, init: Path | None,
                report: Reporter) -> tuple[nn.Module, finetune.InitReport | None]:
    """The compiled model on the device with TF's BN decay (frozen BN if asked), started from
    ``init`` when given (see ``runtime.finetune``: a backbone-only file leaves the heads fresh,
    weights for another class count leave the classifier layers fresh); returns what ``init``
    loaded."""
    tr = comp.spec.train
    model = comp.module.to(ctx.device)
    for bn in batchnorms(model):
        bn.momentum = 1.0 - tr.bn_decay  # PyTorch's momentum is TF's 1 - decay
        if tr.freeze_bn:
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(False)
    if init is None:
        return model, None
    started = finetune.fit_weights(model, comp, _init_weights(init))
    for line in started.lines(comp.spec.num_classes):
        report.message(line)
    return model, started


def _init_weights(init: Path) -> artifacts.Weights:
    """The weights ``--init`` names; a path that holds none is reported as --init's (the
    message lists what it takes and says what the file is)."""
    try:
        return artifacts.read_weights(init)
    except WeightsError as err:
        raise WeightsError(f"--init {err}") from None


def _resume(doc: Any, run_dir: Path, saved: Path, model: nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            ctx: distributed.Context, report: Reporter) -> tuple[int, bool]:
    """Load the last good checkpoint into the run; returns the iteration and whether the RNG
    state was restored (only when the process count is the same).

    Raises:
        TrainingError: a checkpoint of another architecture, or optimizer state that does not fit.
    """
    weights, state, info = ckpt.load_checkpoint(run_dir)
    ckpt.check_same_architecture(info, doc.resolved, saved)
    artifacts.load_weights(model, weights, source=str(saved / artifacts.WEIGHTS))
    where = saved / ckpt.STATE
    ckpt.check_resumable(state, where)
    try:
        _load_optimizer_state(optimizer, state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise TrainingError(f"{where}: optimizer state does not match this run "
                            f"(was train.freeze_bn or train.lr_mult changed?): {str(err)[:200]}") from None
    start = state["iteration"]
    restored = len(state["rng"]) == ctx.world_size
    if restored:
        try:
            ckpt.set_rng_state(state["rng"][ctx.rank])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise TrainingError(f"{where}: the random state of process {ctx.rank} is not "
                                f"one specc wrote: {str(err)[:200]}") from None
    iters = doc.spec.train.iters
    if start > iters:
        raise TrainingError(f"{where}: this run is at iteration {start}, past train.iters = "
                            f"{iters}; resume with --iters {start} or more, or train into "
                            "another --out")
    report.message(f"resuming {run_dir} at iteration {start} of {iters}"
                   + (" (already finished: exporting only)" if start >= iters else ""))
    if not restored and start < iters:
        report.message(
            f"note: the run was trained by {len(state['rng'])} process(es) and goes on in "
            f"{ctx.world_size}: its data order and random draws from here differ from an "
            f"uninterrupted run's (resume in {len(state['rng'])} for the same result)")
    return start, restored


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state (its momentum buffers) but keep this run's settings:
    ``load_state_dict`` also restores each group's momentum and weight decay, so a resumed run
    would silently go on with the old ``train.momentum`` / ``train.weight_decay`` while its
    spec.json records the new ones (the learning rate is set at every step anyway)."""
    settings = [{k: v for k, v in group.items() if k != "params"}
                for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, mine in zip(optimizer.param_groups, settings, strict=True):
        group.update(mine)


def _train_loader(spec: Any, ctx: distributed.Context, per_rank: int,
                  start: int) -> DataLoader[Any]:
    """The endless stream of shuffled, augmented batches of the training split for this process,
    from iteration ``start`` on (the same batches an uninterrupted run reads there; an iteration
    reads ``train.accumulate`` batches).

    Raises:
        TrainingError: fewer images than one batch per process.
        DataError: no pixel of the split is labelled (:func:`_check_labelled`).
    """
    tr, data = spec.train, spec.data
    train_set = open_split(spec, data.train_split)
    indices = (bootstrap_indices(train_set, tr.hard_classes, tr.hard_repeat, tr.workers)
               if tr.hard_classes else None)
    _check_labelled(train_set, data.train_split, tr)
    transform = train_transform(
        data.crop or spec.input.size, min_scale=data.scale_min, max_scale=data.scale_max,
        scale_step=data.scale_step, flip=data.flip, mean=spec.input.mean, std=spec.input.std,
        ignore_index=tr.ignore_index,
        color_jitter=data.color_jitter.model_dump() if data.color_jitter else None,
        blur=data.blur.model_dump() if data.blur else None)
    loader, order = train_stream(train_set, transform, per_rank, seed=tr.seed,
                                 num_workers=tr.workers, rank=ctx.rank,
                                 world_size=ctx.world_size, start_batch=start * tr.accumulate,
                                 indices=indices)
    if order.batches_per_epoch == 0:
        per = (f" ({per_rank} per process × {ctx.world_size} processes)"
               if ctx.world_size > 1 else "")
        raise TrainingError(f"{train_set.name} ({data.train_split}) has {len(train_set)} images, "
                            f"fewer than one batch of {per_rank * ctx.world_size}{per}")
    return loader


def _check_labelled(train_set: Any, split: str, tr: Any) -> None:
    """Refuse a training split without a single labelled pixel before the first step: every
    batch would give loss 0 (it is averaged over labelled pixels) and the run would train
    nothing (:func:`~runtime.data.has_labelled_pixel`: one label read on a labelled split).

    Raises:
        DataError: every mask pixel of the split is ignored, naming the split and the values.
    """
    if has_labelled_pixel(train_set, tr.ignore_index, tr.workers):
        return
    raise DataError(
        f"{train_set.name} ({split}): no pixel of its {len(train_set)} images is labelled "
        f"(every mask pixel is {tr.ignore_index}, which the loss ignores); there "
        f"is nothing to train on. Masks hold class ids 0..{train_set.num_classes - 1}; check "
        "the mask files and data.train_split")


def batch_stream(loader: DataLoader[Any], device: torch.device,
                 read_ahead: bool | None = None) -> Iterator[Any]:
    """The loader's batches, read one or two ahead in a background thread
    (:class:`~runtime.data.Prefetcher`) where that can only help: the loader reads in this
    process (``train.workers: 0``), its augmentation leaves the global random state alone, and
    the step leaves a core free — it runs on a GPU, or torch's threads are fewer than this
    process's cores. Where the step keeps every core busy, the thread would take its time from
    the step (measured on 2 cores: no faster than reading in the loop), so the loop reads.
    ``read_ahead`` overrides the last condition.
    """
    transform = getattr(loader.dataset, "transform", None)
    if read_ahead is None:
        read_ahead = device.type != "cpu" or torch.get_num_threads() < usable_cores()
    if read_ahead and loader.num_workers == 0 and getattr(transform, "thread_safe", False):
        return Prefetcher(loader)
    return iter(loader)


def _open_logs(run_dir: Path, start: int, spec_info: dict[str, Any],
               ctx: distributed.Context) -> Any:
    """metrics.jsonl (cut back to ``start`` on resume), on rank 0 only."""
    if not ctx.is_main:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / METRICS
    if start:
        _trim_metrics(metrics_path, start)
    log = open(metrics_path, "a" if start else "w", encoding="utf-8")  # noqa: SIM115
    atomic_write_text(run_dir / "spec.json", json.dumps(spec_info, indent=1))
    return log


@dataclass(frozen=True)
class Tuning:
    """What a step needs beyond the protocol's defaults: the parameter groups' learning-rate
    multipliers and the backbone's parameters (``runtime.finetune``), and the class weights."""

    groups: finetune.LrGroups
    class_weights: torch.Tensor | None = None


def step_settings(doc: Any, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """How the steps run on ``device``: the autocast dtype of ``train.precision`` (None: fp32)
    and whether images and weights are channels-last (``train.channels_last``; unset: on the
    CPU, where it makes the demo's step about 1.15× faster, and not on CUDA).

    Raises:
        SpecError: at ``train.precision``, a precision this device does not compute in natively
            (bf16 on a CPU without bf16 instructions, fp16 on the CPU): refused before anything
            is written, rather than run many times slower.
    """
    tr = doc.spec.train
    try:
        amp_dtype = precision_dtype(tr.precision, device)
    except SpeccError as err:
        raise doc.raw.sources.error(
            ("train", "precision"), f"expected a precision this machine computes in natively, "
            f"found {tr.precision!r}: {err}") from None
    channels_last = tr.channels_last if tr.channels_last is not None else device.type == "cpu"
    return amp_dtype, channels_last


def prepare_for_steps(model: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    """``model`` as the steps train it: with ``channels_last``, its weights in that memory format
    and, on the CPU, its batch norms computing their batch statistics as exactly as in the
    contiguous layout (:func:`specc.train_passes.exact_batchnorm`). Before the optimizer is
    made."""
    if not channels_last:
        return model
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        exact_batchnorm(model)
    return model


def _check_compile(doc: Any, device: torch.device) -> None:
    """Refuse ``train.compile`` up front where torch.compile cannot work: no compiler support in
    this torch build, or (on the CPU, where inductor writes C++) no C++ compiler.

    Raises:
        SpecError: at ``train.compile``, saying what is missing.
    """
    missing = None
    if not torch._dynamo.is_dynamo_supported():
        missing = f"torch {torch.__version__} cannot compile on this Python"
    elif device.type == "cpu" and not any(shutil.which(c) for c in CXX):
        missing = f"no C++ compiler ({', '.join(CXX)}) is on the PATH"
    if missing:
        raise doc.raw.sources.error(("train", "compile"), f"expected a setup torch.compile "
                                    f"runs on, found {missing}; set train.compile=false")


def train_autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device`` (CPU or CUDA); a no-op for fp32 (``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _step(ddp: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          micro: list[tuple[torch.Tensor, torch.Tensor]], lr: float, tr: Any,
          ctx: distributed.Context, amp_dtype: torch.dtype | None, channels_last: bool,
          tuning: Tuning, run_dir: Path, it: int) -> float:
    """One update from ``train.accumulate`` micro-batches: forward, loss at full label resolution
    and backward for each (gradients summed, each loss divided by their number), then the update
    at ``lr`` times each group's multiplier; the backbone is left as it is during
    ``train.freeze_backbone_iters``. Returns the loss averaged over micro-batches and processes.

    Raises:
        TrainingError: a non-finite loss (before it reaches the weights; all processes agree).
    """
    for group, mult in zip(optimizer.param_groups, tuning.groups.multipliers, strict=True):
        group["lr"] = lr * mult
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for index, (images, labels) in enumerate(micro):
        last = index == len(micro) - 1
        # DDP averages gradients over processes once, after the last micro-batch
        with contextlib.nullcontext() if last else _no_sync(ddp):
            loss = _micro_loss(ddp, images, labels, tr, ctx, amp_dtype, channels_last, it,
                               tuning) / len(micro)
            loss_value = distributed.all_reduce_mean(float(loss.detach()), ctx)
            _check_finite(loss_value * len(micro), tr, run_dir, it)
            scaler.scale(loss).backward()
        total += loss_value
    if it < tr.freeze_backbone_iters:
        for p in tuning.groups.backbone:
            p.grad = None  # SGD skips it: no step, no momentum, no weight decay
    scaler.step(optimizer)
    scaler.update()
    return total


def _no_sync(ddp: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` (gradients stay local); nothing to do for a plain module."""
    no_sync = getattr(ddp, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def _micro_loss(ddp: nn.Module, images: torch.Tensor, labels: torch.Tensor, tr: Any,
                ctx: distributed.Context, amp_dtype: torch.dtype | None, channels_last: bool,
                it: int, tuning: Tuning) -> torch.Tensor:
    """Forward one micro-batch and its loss (``train.loss``, aux included)."""
    images = images.to(ctx.device, non_blocking=True)
    labels = labels.to(ctx.device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with train_autocast(ctx.device, amp_dtype):
        outputs = ddp(images)
    return segmentation_loss(outputs, labels, tr.ignore_index, tr.aux_weight, loss_spec=tr.loss,
                             iteration=it, class_weights=tuning.class_weights)


def _check_finite(loss_value: float, tr: Any, run_dir: Path, it: int) -> None:
    """Stop the run on a non-finite loss, saying what is kept.

    Raises:
        TrainingError: the loss is NaN or infinite.
    """
    if math.isfinite(loss_value):
        return
    last = ckpt.checkpoint_dir(run_dir)
    kept = (f"The last good checkpoint is kept: {last}." if last else
            "No checkpoint was saved yet (the first comes after train.save_every="
            f"{tr.save_every} iterations), so there is nothing to resume from.")
    raise TrainingError(f"loss is {loss_value} at iteration {it + 1}; training stopped. "
                        f"{kept} Lower train.lr or check the data.")


def _write_run_record(run_dir: Path, ctx: distributed.Context, tr: Any, per_rank: int,
                      groups: finetune.LrGroups, started_from: finetune.InitReport | None,
                      start: int) -> None:
    """``run.json`` (rank 0): the effective batch, the parameter groups with their learning-rate
    multipliers, the loss and what ``--init`` loaded. A resumed run keeps the first record of
    ``--init``."""
    if not ctx.is_main:
        return
    path = run_dir / RUN_RECORD
    init_record = started_from.as_dict() if started_from else None
    if start and path.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            init_record = json.loads(path.read_text(encoding="utf-8")).get("init", init_record)
    record = {"batch_size": tr.batch_size, "per_process_batch": per_rank,
              "processes": ctx.world_size, "accumulate": tr.accumulate,
              "effective_batch": tr.batch_size * tr.accumulate,
              "freeze_backbone_iters": tr.freeze_backbone_iters,
              "param_groups": groups.record, "loss": tr.loss.model_dump(), "init": init_record}
    atomic_write_text(path, json.dumps(record, indent=1))


def _write_record(record: dict[str, Any], log: Any, board: Any) -> None:
    """One line of metrics.jsonl, and the scalars to TensorBoard."""
    if log is not None:
        log.write(json.dumps(record) + "\n")
        log.flush()
    if board is not None:
        board.record(record)


def _save(doc: Any, run_dir: Path, raw: nn.Module, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, done: int, lr: float, ctx: distributed.Context) -> None:
    """A checkpoint after iteration ``done`` (rank 0 writes; every rank's RNG state goes in).

    Raises:
        TrainingError: non-finite weights (the last good checkpoint is kept).
    """
    if not all(torch.isfinite(p).all() for p in raw.parameters()):
        last = ckpt.checkpoint_dir(run_dir)
        kept = (f"the last good checkpoint is kept: {last}" if last else
                "no checkpoint was saved yet")
        raise TrainingError(f"non-finite weights after iteration {done}; training stopped, "
                            f"{kept}. Lower train.lr or check the data.")
    rngs = distributed.gather_objects(ckpt.rng_state(), ctx)
    if ctx.is_main:
        state = {"iteration": done, "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "rng": rngs, "lr": lr, "world_size": ctx.world_size}
        ckpt.save_checkpoint(run_dir, weights=raw.state_dict(), state=state,
                             spec_info=artifacts.spec_info(doc))


def _export(comp: Compilation, raw: nn.Module, run_dir: Path) -> Path:
    """TorchScript of the trained weights in a fresh (non-DDP, non-SyncBN) model."""
    final = instantiate(comp.source)
    artifacts.load_weights(final, raw.state_dict(), source="trained model")
    return artifacts.write_torchscript(final, run_dir / artifacts.TORCHSCRIPT, comp.doc)
