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

What specc deletes: only what it wrote itself, recognised by its exact names — old checkpoint
folders ``checkpoint-`` + 7 digits (:data:`CHECKPOINT_NAME`), interrupted saves
``.checkpoint-<7 digits>.<8 random characters>.partial`` (:data:`PARTIAL_NAME`) and the temporary
link ``.checkpoint.<pid>.link`` (:data:`LINK_TEMP_NAME`) — and of those folders only ones that
hold nothing but a checkpoint's own files (an interrupted save's folder also the temporary file
the weights were being written to, :data:`WRITER_TEMP_NAME`). A user's ``checkpoint-best/`` or
``.checkpoint-notes/`` is never touched.

What a run folder is: a folder is a specc run folder when it holds ``spec.json`` with the
record :func:`specc.artifacts.spec_info` writes (a spec ``name``, ``architecture_sha256`` and
the ``resolved`` spec) — the first file a run writes — or a ``checkpoint`` link. A new run may
start in a missing or empty folder or in a specc run folder without a checkpoint (a run stopped
before its first save); any other non-empty folder is refused (:func:`check_run_folder`), so a
mistyped ``--out`` never writes into, or tidies, a folder of the user's.
While a run trains, its folder is held (:func:`held_run_folder`): a second run into it is refused.

Resuming compares the *architecture hash*: the sha256 of the resolved spec without its ``train``
and ``data`` sections (docs/conventions.md §10), so changing the learning rate or the iteration count
resumes, while changing a layer is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from specc import filekinds
from specc.api import NON_ARCHITECTURE_KEYS, architecture_sha256
from specc.artifacts import LINK, SPEC, WEIGHTS, read_weights, spec_info_of
from specc.diff import spec_changes
from specc.errors import SpeccError, TrainingError, WeightsError
from specc.fsutil import file_mode, folder_mode, fsync_dir, output_folder

STATE = "state.pt"
#: The files of a checkpoint folder: all that a folder specc prunes may hold.
CHECKPOINT_FILES = frozenset({WEIGHTS, STATE, SPEC})
#: Names specc gives what it writes into a run folder, and so may delete (nothing else).
CHECKPOINT_NAME = re.compile(r"checkpoint-\d{7}")
PARTIAL_NAME = re.compile(r"\.checkpoint-\d{7}\.[A-Za-z0-9_]{8}\.partial")
#: The temporary file safetensors writes the weights to before renaming it (``.tmp`` and six
#: random characters, in the same folder): what a save killed while writing the weights leaves
#: in its partial folder besides the checkpoint's own files.
WRITER_TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9_]{6}")
LINK_TEMP_NAME = re.compile(r"\.checkpoint\.\d+\.link")


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


def is_run_folder(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a specc run folder: a ``checkpoint`` link, or a ``spec.json`` that
    is the record specc writes when a run starts (see the module's docstring)."""
    if (run_dir / LINK).is_symlink():
        return True
    try:
        record = json.loads((run_dir / SPEC).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    info = spec_info_of(record) if isinstance(record, dict) else {}
    return isinstance(info.get("resolved"), dict) and "architecture_sha256" in info


def _is_checkpoint_folder(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint (``RUN_DIR/checkpoint`` or ``checkpoint-<iteration>``):
    it holds weights and a training state. Its ``spec.json`` makes it look like a run folder."""
    return (folder / WEIGHTS).is_file() and (folder / STATE).is_file()


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse to train into a folder that holds something and is not a specc run folder.

    Raises:
        TrainingError: ``run_dir`` is not a folder this user can write into or create
            (:func:`specc.fsutil.output_folder`), a checkpoint folder of a run, or a non-empty
            folder specc did not make.
    """
    try:
        output_folder(run_dir)
    except SpeccError as err:
        raise TrainingError(str(err)) from None
    if _is_checkpoint_folder(run_dir):
        run = run_dir.resolve().parent
        raise TrainingError(
            f"{run_dir} is a checkpoint of the run in {run}, not a run folder: training into it "
            f"would start afresh and write over its files. Pass --out {run} (with --resume to "
            "continue that run)")
    if not run_dir.is_dir() or is_run_folder(run_dir):
        return
    try:
        contents = sorted(p.name for p in run_dir.iterdir())
    except OSError as err:
        raise TrainingError(f"{run_dir}: cannot read the run folder: {err.strerror}") from None
    if contents:
        shown = ", ".join(contents[:5]) + (", …" if len(contents) > 5 else "")
        what = "nothing to resume" if resume else "specc trains only into a new or empty folder"
        raise TrainingError(
            f"{run_dir} is not empty ({shown}) and is not a specc run folder (no {SPEC} written "
            f"by specc): {what}. Pass --out with a new or empty folder, or --resume with a "
            "folder of an earlier run")


@contextlib.contextmanager
def held_run_folder(run_dir: Path) -> Iterator[None]:
    """Make ``run_dir`` if needed and hold it for this run: two runs started into one folder (a
    command given twice) would otherwise both train, each pruning the other's checkpoints and
    writing over its metrics and model.pt, and both end as if all were well. The lock is an
    ``flock`` on the folder itself (no file is added to it); the OS releases it when the process
    ends, however it ends. The folders made for it that are still empty when the run ends (a
    run refused before its first write) are removed: a failed start leaves nothing behind.

    Raises:
        TrainingError: another process holds the folder.
    """
    import fcntl

    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"{run_dir}: another specc train is training into this run folder; wait for it "
                "to end (then --resume continues from its checkpoint), or pass --out with "
                "another folder") from None
        yield
    finally:
        os.close(fd)
        for folder in made:  # the deepest first; one that holds anything stays, and its parents
            try:
                folder.rmdir()
            except FileNotFoundError:  # removed already (an unused run folder, by the run)
                continue
            except OSError:
                break


def _own_checkpoint_folder(folder: Path, partial: bool = False) -> bool:
    """A folder that holds only a checkpoint's own files (so specc may delete it); a
    ``partial`` one (an interrupted save) may also hold the weights writer's temporary file."""
    try:
        return folder.is_dir() and not folder.is_symlink() and all(
            (p.name in CHECKPOINT_FILES or (partial and WRITER_TEMP_NAME.fullmatch(p.name)))
            and p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def _prune(run_dir: Path, keep: Path) -> None:
    """Delete older checkpoints and leftovers of interrupted saves: specc's exact names only,
    and of folders only those that hold nothing but a checkpoint's files."""
    for entry in run_dir.iterdir():
        name = entry.name
        if LINK_TEMP_NAME.fullmatch(name) and entry.is_symlink():
            entry.unlink(missing_ok=True)
        elif ((CHECKPOINT_NAME.fullmatch(name) and name != keep.name
               and _own_checkpoint_folder(entry))
              or (PARTIAL_NAME.fullmatch(name) and _own_checkpoint_folder(entry, partial=True))):
            shutil.rmtree(entry, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    *,
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    spec_info: Mapping[str, Any],
) -> Path:
    """Write a checkpoint for ``state["iteration"]`` and point ``RUN_DIR/checkpoint`` at it.

    Returns the new checkpoint folder. Older checkpoint folders and leftovers of interrupted
    saves are removed afterwards (only specc's own names; see the module's docstring).

    Raises:
        TrainingError: ``RUN_DIR/checkpoint`` exists and is not a symlink written by specc, or
            ``checkpoint-<iteration>`` exists and holds files specc did not write.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / LINK
    if link.exists() and not link.is_symlink():
        raise TrainingError(f"{link}: expected a symlink to a checkpoint folder; move it away")
    iteration = int(state["iteration"])
    final = run_dir / f"checkpoint-{iteration:07d}"
    if link.is_symlink() and link.resolve() == final.resolve() and final.is_dir():
        return final  # this iteration is already saved
    if final.exists() and not _own_checkpoint_folder(final):
        raise TrainingError(f"{final}: holds files specc did not write; move it away")
    # 1. everything into a fresh temporary folder, each file fsynced
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{iteration:07d}.", suffix=".partial",
                                dir=run_dir))
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {"iteration": str(iteration), "spec_sha256": str(spec_info.get("spec_sha256", ""))}
    save_file(tensors, tmp / WEIGHTS, metadata=meta)
    torch.save(dict(state), tmp / STATE)
    (tmp / SPEC).write_text(json.dumps(spec_info, indent=1, sort_keys=True), encoding="utf-8")
    for name in (WEIGHTS, STATE, SPEC):
        os.chmod(tmp / name, file_mode())  # as a plain open would make them
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    os.chmod(tmp, folder_mode())  # mkdtemp's folder is private
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
    _prune(run_dir, final)
    return final


def _read_state(file: Path) -> dict[str, Any]:
    """The training state of ``state.pt``, checked to have the shape :func:`save_checkpoint`
    gives it (a junk, truncated or foreign file is refused, never half used).

    Raises:
        TrainingError: naming the file and what is wrong with it.
    """
    try:
        data = file.read_bytes()
    except OSError as err:
        raise TrainingError(f"{file}: cannot read the training state: {err.strerror}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle or a cut-off archive
        raise TrainingError(_unloadable_state(file, err)) from None
    problem = _state_problem(state, required=("iteration",))
    if problem:
        raise TrainingError(f"{file}: not a training state written by specc: {problem}")
    return state


def _unloadable_state(file: Path, load_error: Exception) -> str:
    """Why ``state.pt`` does not load (:func:`specc.filekinds.describe`) and, when it is cut
    short or damaged, the way on: the weights beside it are a separate file and may be whole."""
    kind = filekinds.describe(file, load_error)
    if not kind.damaged:
        return f"{file}: not a training state written by specc: found {kind.what}"
    return (f"{file}: cannot resume from this training state: it is {kind.what}. Restore the run "
            "folder from a copy, or start a new run from the weights beside it with --init "
            f"{file.parent} --out NEW_FOLDER (the optimizer state and iteration count start "
            "afresh)")


#: What each field of a training state must look like; ``rng`` holds one state per process.
_STATE_FIELDS = {
    "iteration": ("a whole number >= 0",
                  lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "optimizer": ("an optimizer state (state, param_groups)",
                  lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list)),
    "rng": ("one random state per process",
            lambda v: isinstance(v, list) and bool(v) and all(
                isinstance(r, dict) and {"python", "numpy", "torch", "cuda"} <= r.keys()
                for r in v)),
    "scaler": ("a dict or null", lambda v: v is None or isinstance(v, dict)),
}


def _state_problem(state: Any, required: tuple[str, ...]) -> str | None:
    """What is wrong with a loaded training state: a ``required`` field missing or any field of
    the wrong shape; None when it is fine."""
    if not isinstance(state, dict):
        return f"expected a dict, found {type(state).__name__}"
    for key, (expected, ok) in _STATE_FIELDS.items():
        if key not in state:
            if key in required:
                return f"{key!r} is missing"
        elif not ok(state[key]):
            return f"{key!r}: expected {expected}, found {type(state[key]).__name__}"
    return None


def check_resumable(state: Mapping[str, Any], file: Path) -> None:
    """Check that a training state holds everything a resumed run needs.

    Raises:
        TrainingError: naming the file and the missing or malformed field.
    """
    problem = _state_problem(state, required=("iteration", "optimizer", "rng"))
    if problem:
        raise TrainingError(f"{file}: cannot resume from this training state: {problem}")


def _read_spec_record(file: Path) -> dict[str, Any]:
    """The checkpoint's ``spec.json`` record (today's key names).

    Raises:
        TrainingError: the file is missing, not JSON, or not a spec record.
    """
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise TrainingError(f"{file}: cannot read the spec record: {err.strerror}") from None
    except ValueError as err:
        raise TrainingError(f"{file}: not a spec record written by specc (not JSON: "
                            f"{str(err)[:120]})") from None
    if not isinstance(record, dict) or not isinstance(spec_info_of(record).get("resolved"), dict):
        raise TrainingError(f"{file}: not a spec record written by specc (expected an object "
                            "with 'resolved' and 'architecture_sha256')")
    return spec_info_of(record)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, state, spec_info)`` of the last checkpoint of ``run_dir``; ``spec_info`` with
    today's key names (:func:`specc.artifacts.spec_info_of`).

    Raises:
        TrainingError: there is no checkpoint, or one of its files is missing or unreadable
            (the message names the file).
    """
    folder = checkpoint_dir(run_dir)
    if folder is None:
        if (run_dir / LINK).is_symlink():
            raise TrainingError(f"{run_dir / LINK}: points to {os.readlink(run_dir / LINK)}, "
                                "which does not exist; no checkpoint to resume from")
        raise TrainingError(f"{run_dir}: no checkpoint to resume from ({run_dir / LINK} missing)")
    try:
        weights = read_weights(folder / WEIGHTS).state
    except WeightsError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    return weights, _read_state(folder / STATE), _read_spec_record(folder / SPEC)
