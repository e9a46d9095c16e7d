"""Checkpoints that survive ``kill -9``, resuming only the same architecture, and RNG states.

Layout of a run folder::

    RUN_DIR/checkpoint -> checkpoint-0001000/   symlink to the last complete checkpoint
        model.safetensors   weights and BN buffers (safetensors: no pickle, loads anywhere)
        state.pt            optimizer, iteration, RNG states (torch.save of plain data)
        spec.json           the resolved spec, its sha256 and the architecture's sha256
                            (specc.artifacts.spec_info)
    RUN_DIR/metrics.jsonl   one JSON object per logged step
    RUN_DIR/model.pt        TorchScript model with its spec inside, written when training ends
                            (specc.artifacts.write_torchscript)

Why it is crash-safe: a checkpoint is written into a fresh temporary folder, every file fsynced,
the folder renamed to ``checkpoint-<iteration>``, and only then the ``checkpoint`` symlink is
replaced by ``rename(2)``, which is atomic. Killed at any moment, ``RUN_DIR/checkpoint`` points
either to the previous complete checkpoint or to the new complete one; half-written folders are
never pointed to and are removed by the next save. Single files (metrics, plots, model.pt) are
written to a temporary file in the same folder and moved over the target with ``os.replace``.

Resuming compares the *architecture hash*: the sha256 of the resolved spec without its ``train``
and ``data`` sections (docs/conventions.md §10), so changing the learning rate or the iteration count
resumes, while changing a layer is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from specc.api import NON_ARCHITECTURE_KEYS, architecture_sha256
from specc.artifacts import LINK, SPEC, WEIGHTS, read_weights, spec_info_of
from specc.diff import spec_changes
from specc.errors import TrainingError
from specc.fsutil import fsync_dir

STATE = "state.pt"


# ---------------------------------------------------------------------------------------------
# Spec identity and RNG state


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved specs (train/data excluded)."""
    arch = [{k: v for k, v in d.items() if k not in NON_ARCHITECTURE_KEYS} for d in (old, new)]
    return [f"{c['path']}: {json.dumps(c['a'])} -> {json.dumps(c['b'])}"
            for c in spec_changes(*arch)]


def check_same_architecture(
    spec_info: Mapping[str, Any], resolved: Mapping[str, Any], where: Path
) -> None:
    """Refuse to resume a checkpoint whose architecture hash differs from this spec's.

    ``spec_info`` may use the old key names (``arch_sha256``): older runs resume too.

    Raises:
        TrainingError: naming both hashes and the spec keys that changed.
    """
    info = spec_info_of(spec_info)
    arch = architecture_sha256(dict(resolved))
    if info.get("architecture_sha256") == arch:
        return
    changes = _differences(info.get("resolved", {}), dict(resolved))
    raise TrainingError(
        f"{where}: cannot resume, the checkpoint was trained with a different architecture "
        f"(sha256 {str(info.get('architecture_sha256'))[:12]}, this spec {arch[:12]}); only "
        "train/data settings may change on resume. Differences:\n  "
        + "\n  ".join(changes[:12] or ["(not recorded)"]))


def rng_state() -> dict[str, Any]:
    """This process's random states (python, numpy, torch, CUDA) as plain, loadable data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                        "pos": int(np_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The last complete checkpoint folder of a run (resolved), or None when there is none."""
    link = run_dir / LINK
    if not link.exists():
        return None
    return link.resolve()


def save_checkpoint(
    run_dir: Path,
    *,
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    spec_info: Mapping[str, Any],
) -> Path:
    """Write a checkpoint for ``state["iteration"]`` and point ``RUN_DIR/checkpoint`` at it.

    Returns the new checkpoint folder. Older checkpoint folders and leftovers of interrupted
    saves are removed afterwards.

    Raises:
        TrainingError: ``RUN_DIR/checkpoint`` exists and is not a symlink written by specc.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / LINK
    if link.exists() and not link.is_symlink():
        raise TrainingError(f"{link}: expected a symlink to a checkpoint folder; move it away")
    iteration = int(state["iteration"])
    final = run_dir / f"checkpoint-{iteration:07d}"
    if link.is_symlink() and link.resolve() == final.resolve() and final.is_dir():
        return final  # this iteration is already saved
    # 1. everything into a fresh temporary folder, each file fsynced
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{iteration:07d}.", dir=run_dir))
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {"iteration": str(iteration), "spec_sha256": str(spec_info.get("spec_sha256", ""))}
    save_file(tensors, tmp / WEIGHTS, metadata=meta)
    torch.save(dict(state), tmp / STATE)
    (tmp / SPEC).write_text(json.dumps(spec_info, indent=1, sort_keys=True), encoding="utf-8")
    for name in (WEIGHTS, STATE, SPEC):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    # 2. the complete folder gets its final name
    if final.exists():
        shutil.rmtree(final)  # a leftover of a crashed run, not the one the link points to
    os.rename(tmp, final)
    # 3. the atomic switch: a new symlink renamed over the old one
    new_link = run_dir / f".{LINK}.{os.getpid()}.link"
    new_link.unlink(missing_ok=True)
    os.symlink(final.name, new_link)
    os.replace(new_link, link)
    fsync_dir(run_dir)
    # 4. tidy up: older checkpoints and interrupted saves
    for old in run_dir.glob("checkpoint-*"):
        if old.is_dir() and old.resolve() != final.resolve():
            shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, state, spec_info)`` of the last checkpoint of ``run_dir``; ``spec_info`` with
    today's key names (:func:`specc.artifacts.spec_info_of`).

    Raises:
        TrainingError: there is no checkpoint, or its files are missing or unreadable.
    """
    folder = checkpoint_dir(run_dir)
    if folder is None:
        raise TrainingError(f"{run_dir}: no checkpoint to resume from ({run_dir / LINK} missing)")
    try:
        weights = read_weights(folder / WEIGHTS).state
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
        spec_info = spec_info_of(json.loads((folder / SPEC).read_text(encoding="utf-8")))
    except Exception as err:  # any unreadable file makes the checkpoint unusable
        raise TrainingError(f"{folder}: cannot read checkpoint: {err}") from None
    return weights, state, spec_info
