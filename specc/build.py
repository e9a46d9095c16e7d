"""``specc build``: compile a spec into its output folder (model.py, manifest.json, model.pt).

``model.pt`` is written by :func:`specc.artifacts.write_torchscript`, with the resolved spec and
its hashes inside, like the ``model.pt`` of a training run, and where its weights came from: a
rebuild without ``--weights`` over a build whose weights came from a file is refused unless it
asks for fresh weights, so a forgotten flag never ships a randomly initialised model.

A build folder is all or nothing: every file is written into a temporary sibling
(``.<name>.tmp-XXXXXXXX``), which then takes the folder's place in one rename (an atomic exchange
where the OS has one, ``renameat2(RENAME_EXCHANGE)`` on Linux). Builds into the same folder take
turns through a lock file beside it (``.<name>.lock``, ``flock``: the OS releases it when a
process dies). A ``kill -9`` at any moment leaves the old build or the new one, never a mixture;
what a killed build leaves behind (its temporary sibling) is removed by the next build.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specc.api import Compilation, manifest_json
from specc.artifacts import (
    MANIFEST,
    SOURCE,
    TORCHSCRIPT,
    archive_weights_source,
    check_build_folder,
    load_weights,
    read_weights,
    weights_source,
    write_torchscript,
)
from specc.errors import SpeccError, SpeccWarning
from specc.fsutil import fsync_dir
from specc.targets import ARTIFACTS, Request, artifacts_json, write_targets

#: The files specc writes into a build folder; nothing else may be in one it replaces.
BUILD_FILES = (SOURCE, MANIFEST, TORCHSCRIPT)
#: What may go with a replaced build besides: Python's bytecode of an imported model.py.
DISPOSABLE = ("__pycache__",)
#: The deployment artifacts a build may hold besides (:mod:`specc.targets`).
DEPLOYED = re.compile(r"artifacts\.json|model\.pt2|model\.onnx"
                      r"|model-aoti-(cuda-)?(fp32|bf16|fp16|int8)\.pt2"
                      r"|model-openvino-(fp32|bf16|int8)\.(xml|bin)")


def build_to(comp: Compilation, out_dir: Path, *, weights: Path | None = None,
             fresh_weights: bool = False, check: bool = False,
             deploy: Deployment | None = None) -> list[str]:
    """Build one compiled spec into ``out_dir/<name>/``, all at once.

    ``weights`` is any source :func:`specc.artifacts.read_weights` opens, holding every tensor.
    Without it the model keeps its initialisation, which replaces weights the folder's build
    took from a file only with ``fresh_weights`` (:func:`_check_weights_kept`).
    Returns the files written, or with ``check=True`` the files that differ from what would be
    written (nothing is written then, and no model is instantiated; model.pt is not compared, it
    is not kept in git, but it must agree with the folder's other files). ``deploy`` adds
    deployment artifacts and their ``artifacts.json`` (:mod:`specc.targets`).

    Raises:
        WeightsError: weights that do not fit.
        SpeccError: the folder's files disagree with each other (``check``), the folder holds
        files specc did not write or weights it would replace with initialised ones, or it
        cannot be written (naming the path and the OS error).
    """
    folder = out_dir / comp.spec.name
    files = {SOURCE: comp.source, MANIFEST: manifest_json(comp.manifest)}
    if check:
        return _differing(folder, files)
    module = comp.module
    loaded = None if weights is None else read_weights(weights)
    if loaded is not None:
        load_weights(module, loaded)  # refuses a backbone-only file
    source = weights_source(weights, loaded)
    staging = out_dir / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    written = list(BUILD_FILES)
    try:
        _check_out_dir(out_dir)
        with _locked(out_dir / f".{folder.name}.lock"):
            _clean_leftovers(folder)
            _check_replaceable(folder)
            _check_weights_kept(folder, comp, source, fresh_weights)
            staging.mkdir()  # the umask's mode, as a plain mkdir would give the build folder
            try:
                for name, text in files.items():
                    _write_text(staging / name, text)
                # the spec inside: predict normalizes
                write_torchscript(module, staging / TORCHSCRIPT, comp.doc, source=source)
                if deploy is not None:
                    written += _write_deployment(comp, module, staging, deploy)
                fsync_dir(staging)
                _note_dropped(folder, staging)
                _swap_in(staging, folder)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        where = err.filename if err.filename and staging.name not in str(err.filename) \
            else folder  # the staging folder's name would mean nothing to the user
        raise SpeccError(f"{where}: cannot write the build ({err.strerror or err}); the "
                         "previous build, if any, is unchanged") from None
    return [str(folder / name) for name in written]


@dataclass(frozen=True)
class Deployment:
    """The deployment artifacts a build adds: the requests, the images each artifact is checked
    on (and where they came from), the int8 calibration images and a progress callback."""

    requests: tuple[Request, ...]
    check_images: tuple[Any, ...]
    check_source: str
    calibration: tuple[Any, ...] = ()
    progress: Callable[[str], None] = lambda _: None
    #: The mIoU of a list of logits, one per check image, where the images have labels.
    score: Callable[[list[Any]], float] | None = None
    #: int8 ranges: ``auto``, ``full`` or ``half`` (:func:`specc.targets.half_int8_range`).
    int8_range: str = "auto"
    #: Every artifact for one input shape (:func:`specc.targets.write_targets`).
    static: bool = False


def _write_deployment(comp: Compilation, module: Any, staging: Path,
                      deploy: Deployment) -> list[str]:
    """Write the requested artifacts into ``staging`` and list them in ``artifacts.json``;
    returns the names written besides :data:`BUILD_FILES`."""
    from specc.artifacts import spec_info

    entries = write_targets(module, comp.spec.input.size, deploy.requests, staging,
                            check_images=deploy.check_images, calibration=deploy.calibration,
                            progress=deploy.progress, score=deploy.score,
                            int8_range=deploy.int8_range, static=deploy.static)
    _write_text(staging / ARTIFACTS, artifacts_json(spec_info(comp.doc), entries,
                                                    deploy.check_source))
    names = [ARTIFACTS]
    for entry in entries:
        names += [n for n in entry["files"] if n not in BUILD_FILES]
    return names


def _differing(folder: Path, files: dict[str, str]) -> list[str]:
    """The files of ``folder`` that differ from ``files`` (after checking the folder agrees with
    itself)."""
    if folder.is_dir():
        check_build_folder(folder)
    differs = []
    for name, text in files.items():
        target = folder / name
        try:
            same = target.is_file() and target.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            differs.append(str(target))
    return differs


def _check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed; a file in its place is an error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SpeccError(f"--out {out_dir}: expected a folder, found a file")
    out_dir.mkdir(parents=True, exist_ok=True)


def _note_dropped(folder: Path, new: Path) -> None:
    """Warn of the files of the build being replaced that the new one does not have: a build
    replaces the whole folder, so artifacts not asked for again are gone (a rebuild with one
    ``--target`` removes the others)."""
    if not folder.is_dir():
        return
    dropped = sorted(p.name for p in folder.iterdir()
                     if p.name not in DISPOSABLE and not (new / p.name).exists())
    if dropped:
        warnings.warn(SpeccWarning(
            f"{folder}: replaced by this build, which has no {', '.join(dropped)}; give their "
            "--target again to keep them"), stacklevel=2)


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace anything that is not a build folder of specc's own files."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise SpeccError(f"{folder}: expected a build folder, found a "
                         f"{'link' if folder.is_symlink() else 'file'}; move it away or build "
                         "into another --out")
    foreign = sorted(p.name for p in folder.iterdir()
                     if p.name not in BUILD_FILES and p.name not in DISPOSABLE
                     and not DEPLOYED.fullmatch(p.name))
    if foreign:
        raise SpeccError(f"{folder}: holds files specc did not write ({', '.join(foreign[:5])}"
                         f"{', …' if len(foreign) > 5 else ''}); a build replaces the whole "
                         "folder, so move them away or build into another --out")


def _check_weights_kept(folder: Path, comp: Compilation, source: dict[str, str | None],
                        fresh: bool) -> None:
    """Refuse to replace the weights of the folder's build, taken from a file, with initialised
    ones (``source`` names no file) unless ``fresh``: a rebuild that forgot ``--weights`` would
    otherwise put a random model, and every artifact made from it, where the trained one was.
    A rebuild with other weights is what the user asked for; it says which file it replaces.
    A ``model.pt`` that records nothing (from a specc before the record) is replaced as before.
    """
    old = archive_weights_source(folder / TORCHSCRIPT)
    if old is None or old["file"] is None:
        return
    if source["file"] is not None:
        if source["sha256"] != old["sha256"]:
            warnings.warn(SpeccWarning(
                f"{folder}: its model.pt held the weights of {old['file']}; this build puts in "
                f"those of {source['file']}"), stacklevel=2)
        return
    if fresh:
        return
    ways = _ways_to_keep(folder, comp, old["file"])
    again = ("they do not fit this spec's network (its tensors changed), so give weights that "
             "do with --weights" if ways is None else
             f"give them again ({' or '.join(f'--weights {path}' for path in ways)})")
    raise SpeccError(
        f"{folder}: its model.pt holds the weights of {old['file']} (sha256 "
        f"{old['sha256']:.12}), and this build has none: it would replace them with freshly "
        f"initialised ones. To keep them, {again}; to start from fresh weights, pass "
        "--fresh-weights")


def _ways_to_keep(folder: Path, comp: Compilation, file: str) -> list[str] | None:
    """The ``--weights`` that give a rebuild of ``folder`` the weights it holds: the file they
    came from where it is still there, and the folder's own ``model.pt`` (its tensors, which keep
    its record). None where they do not fit this spec's network: the state-dict names or shapes
    of the folder's ``manifest.json`` differ (where it cannot say, ``--weights`` will)."""
    try:
        shapes = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["state_dict"]
    except (OSError, ValueError, KeyError, TypeError):
        shapes = None
    if shapes is not None and shapes != comp.manifest["state_dict"]:
        return None
    return [path for path in (file, str(folder / TORCHSCRIPT)) if Path(path).is_file()]


def _write_text(path: Path, text: str) -> None:
    """Write and fsync one file of a build (the folder is renamed into place afterwards)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# -- swapping the folder in ---------------------------------------------------------------------


def _leftover_pattern(name: str) -> re.Pattern[str]:
    """Exactly the temporary siblings specc makes for ``name`` (8 random hex digits)."""
    return re.compile(rf"\.{re.escape(name)}\.(tmp-[0-9a-f]{{8}}|old)")


def _clean_leftovers(folder: Path) -> None:
    """Remove what a killed build of ``folder`` left (called with the lock held, so no build is
    running): its temporary sibling; an old build moved aside goes back if the folder is gone."""
    old = folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():
        os.rename(old, folder)
    pattern = _leftover_pattern(folder.name)
    for entry in folder.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)


def _swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder``: a rename, or an atomic exchange with the
    old build (then removed). Without an exchange, the old build is renamed aside first
    (``.<name>.old``) and restored by the next build if a kill falls between the renames."""
    if not folder.exists():
        os.rename(new, folder)
    elif _exchange(new, folder):
        shutil.rmtree(new)  # it holds the old build now
    else:
        old = folder.with_name(f".{folder.name}.old")
        os.rename(folder, old)
        os.rename(new, folder)
        shutil.rmtree(old)
    fsync_dir(folder.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where the
    OS or file system has no such call."""
    rename_exchange, at_fdcwd = 2, -100
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (waiting for another build to finish).

    ``flock`` is released by the OS when its holder dies, so a killed build never blocks the
    next. The file is removed on release; a waiter that locked a file already removed retries
    on the new one.
    """
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino,
                                                                          held.st_dev):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
