"""Weights and model files: one way to open them, one way to load them, one TorchScript format.

Any weights source opens with :func:`read_weights` into a :class:`Weights`:

* a run folder (``RUN_DIR/checkpoint/model.safetensors``) or a checkpoint folder
  (``model.safetensors``);
* a ``.safetensors`` file — ours (``specc.*`` metadata: what it holds and for which spec) or
  anyone's;
* a ``torch.save``'d state dict ``.pt``/``.pth`` (read with ``weights_only=True``; a dict under
  ``state_dict`` or ``model`` is unwrapped);
* a TorchScript ``model.pt`` (from ``specc build`` or ``specc train``), only when the user names
  the file: TorchScript is a program and runs its own code, so a folder never falls back to it.

:func:`load_weights` copies them into a model after checking every name and shape, and lists what
does not fit (missing, unexpected, of the wrong shape) in one format. :func:`write_torchscript` is
the only writer of ``model.pt``: the model scripted in eval mode, with the resolved spec and its
hashes inside (``specc/spec.json``), so the file alone says how to normalize its input. A build's
``model.pt`` also says where its weights came from (``specc/weights.json``,
:func:`weights_source`), so a rebuild can tell trained weights from initialised ones.

A build folder (``model.py``, ``manifest.json``, ``model.pt``) is read only when its files agree
on the spec they were built from (:func:`check_build_folder`).

The spec information recorded with weights (checkpoint ``spec.json``, inside ``model.pt``) is
``{"name", "spec_sha256", "architecture_sha256", "resolved"}``, the key names of
``manifest.json``. Files written before this naming (``sha256``, ``arch_sha256``) still read: see
:func:`spec_info_of`.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specc import filekinds
from specc.api import architecture_sha256
from specc.errors import SpeccError, SpecError, WeightsError
from specc.fsutil import atomic_write_bytes, file_sha256
from specc.load import RawSpec, SourceMap, canonical_sha256, upgrade
from specc.validate import validate

if TYPE_CHECKING:
    import torch
    from torch import nn

    from specc.api import Document

#: File names of a run folder and of a checkpoint folder.
LINK = "checkpoint"  # RUN_DIR/checkpoint: the pointer to the last good checkpoint
WEIGHTS = "model.safetensors"
SPEC = "spec.json"
TORCHSCRIPT = "model.pt"
#: The other files of a build folder (``specc build``).
SOURCE, MANIFEST = "model.py", "manifest.json"
#: The spec information stored inside model.pt (a torch.jit extra file).
EXTRA_SPEC = "specc/spec.json"
#: Where the weights inside a built model.pt came from (a torch.jit extra file).
EXTRA_WEIGHTS = "specc/weights.json"

#: What ``specc.contents`` in a ``.safetensors`` file's metadata says.
FULL, BACKBONE = "full", "backbone"

#: Names shown per list in an error.
LIMIT = 20

#: Key names of older files → today's.
_OLD_KEYS = {"sha256": "spec_sha256", "arch_sha256": "architecture_sha256"}


@dataclass(frozen=True)
class Weights:
    """Tensors read from a weights source, and what the source says about them."""

    #: State-dict name → tensor (on the CPU).
    state: dict[str, torch.Tensor]
    #: The file they were read from.
    file: Path
    #: ``"full"`` (every tensor of a model) or ``"backbone"``; None when the file does not say.
    contents: str | None = None
    #: The spec they were saved with (see :func:`spec_info`), or None; some sources record only
    #: ``name`` and ``architecture_sha256``.
    spec_info: dict[str, Any] | None = None


# -- spec information -----------------------------------------------------------------------------


def spec_info(doc: Document) -> dict[str, Any]:
    """What is recorded with a model's weights: the spec's name, hashes and resolved values."""
    return {"name": doc.spec.name, "spec_sha256": doc.sha256,
            "architecture_sha256": doc.architecture_sha256, "resolved": doc.resolved}


def spec_info_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with today's key names, so files written by older versions read like new ones.

    Its own keys: ``sha256`` → ``spec_sha256``, ``arch_sha256`` → ``architecture_sha256``. The
    resolved spec's renamed keys (:data:`specc.load.RENAMED`, e.g. ``input.crop`` →
    ``input.size``) are renamed too, and then both hashes are those of the renamed spec: the
    network did not change, so an older checkpoint resumes under a spec that uses the new names.
    """
    out = {k: v for k, v in info.items() if k not in _OLD_KEYS}
    for old, new in _OLD_KEYS.items():
        if old in info and new not in out:
            out[new] = info[old]
    resolved = out.get("resolved")
    if isinstance(resolved, dict):
        resolved = copy.deepcopy(resolved)
        try:
            renamed = upgrade(resolved)
        except SpecError:
            renamed = []
        if renamed:
            # A hash that matched the old names is replaced by the renamed spec's; one that did
            # not match stays as it was, so a damaged file still fails its check.
            old = out["resolved"]
            if out.get("spec_sha256") == canonical_sha256(old):
                out["spec_sha256"] = canonical_sha256(resolved)
            if out.get("architecture_sha256") == architecture_sha256(old):
                out["architecture_sha256"] = architecture_sha256(resolved)
            out["resolved"] = resolved
    return out


def _read_spec_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return spec_info_of(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError, AttributeError):
        return None


# -- reading --------------------------------------------------------------------------------------


#: What :func:`read_weights` opens, as its messages list it.
SOURCES = ("a run or checkpoint folder, .safetensors, a state dict saved with torch.save as "
           ".pt/.pth, or a TorchScript model.pt")


def find_weights(path: str | Path) -> Path:
    """The weights file ``path`` designates: a run folder, a checkpoint folder or a file.

    A folder is never read through its ``model.pt``: TorchScript runs its own code, so it is
    loaded only when the user names the file.

    Raises:
        WeightsError: nothing usable at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / LINK / WEIGHTS, path / WEIGHTS):
            if candidate.is_file():
                return candidate
        hint = ""
        if (path / TORCHSCRIPT).is_file():
            hint = (f"; it holds {TORCHSCRIPT}, a TorchScript program that runs its own code: "
                    f"name the file ({path / TORCHSCRIPT}) if you trust it")
        raise WeightsError(
            f"{path}: no weights found (expected {LINK}/{WEIGHTS} or {WEIGHTS}){hint}")
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file or folder")
    return path


def read_weights(path: str | Path) -> Weights:
    """Open any weights source (see the module's docstring) the same way.

    Raises:
        WeightsError: the path is missing, or holds no readable state dict.
    """
    file = find_weights(path)
    if file.suffix == ".safetensors":
        weights = _read_safetensors(file)
        return dataclasses.replace(weights, state=unwrapped(weights.state))
    if _is_torchscript(file):
        module, info = read_torchscript(file)
        state = {k: v.detach() for k, v in module.state_dict().items()}
        return Weights(state, file, FULL if info else None, info)
    return Weights(unwrapped(_read_torch_save(file)), file)


#: Prefixes a wrapper puts before every name of the model it holds: DistributedDataParallel and
#: DataParallel (``module.``), torch.compile (``_orig_mod.``), a Lightning module (``model.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def unwrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the prefixes that every one of its names carries from a wrapper
    (:data:`WRAPPER_PREFIXES`, nested ones too: ``module._orig_mod.``); unchanged otherwise."""
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_safetensors(file: Path) -> Weights:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        cut = filekinds.safetensors_cut_short(file)
        if cut:
            raise WeightsError(f"{file}: {cut}; {filekinds.REPLACE}") from None
        raise WeightsError(f"{file}: not a readable safetensors file ({exc})") from None
    info = _read_spec_json(file.parent / SPEC) if file.name == WEIGHTS else None
    if info is None and "specc.architecture_sha256" in meta:  # written by import-weights
        info = {"name": meta.get("specc.spec"),
                "architecture_sha256": meta["specc.architecture_sha256"]}
    contents = meta.get("specc.contents") or (FULL if info and "resolved" in info else None)
    return Weights(state, file, contents, info)


def _read_torch_save(file: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise WeightsError(_unloadable(file, exc)) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{file}: expected a state dict (names → tensors), found "
                           f"{_not_a_state_dict(obj)}{_checkpoint_state_hint(file)}")
    return obj


def _not_a_state_dict(obj: object) -> str:
    """What a loaded object that is no state dict holds: its type, or for a dict (a training
    script's checkpoint, say) the entries that are not tensors, so the user sees where the
    weights are."""
    import torch

    if not isinstance(obj, dict):
        return type(obj).__name__
    others = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
              if not isinstance(v, torch.Tensor)]
    return ("a dict with entries that are not tensors: " + ", ".join(others[:6])
            + (", …" if len(others) > 6 else ""))


def _checkpoint_state_hint(file: Path) -> str:
    """For the training state of a specc checkpoint (``state.pt`` beside its weights): that
    its folder is what to pass."""
    if file.name == "state.pt" and (file.parent / WEIGHTS).is_file():
        return (f"; this is the training state of a checkpoint: pass its folder {file.parent} "
                f"(or {file.parent / WEIGHTS})")
    return ""


def _unloadable(file: Path, load_error: Exception, expected: str = f"weights ({SOURCES})") -> str:
    """What to tell about a file torch refused to load: what it is (:mod:`specc.filekinds`)
    and what was expected, not torch's own message, which is long and speaks of its
    unpickler (an ONNX model given as weights reads "Weights only load failed ...")."""
    kind = filekinds.describe(file, load_error)
    if kind.damaged:
        return f"{file}: {kind.what}; {kind.hint}"
    return (f"{file}: expected {expected}, found {kind.what}"
            + (f"; {kind.hint}" if kind.hint else ""))


def _is_torchscript(file: Path) -> bool:
    """A TorchScript archive (its zip has ``code/`` and ``constants.pkl``), not a torch.save."""
    try:
        with zipfile.ZipFile(file) as archive:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# -- loading --------------------------------------------------------------------------------------


def with_batch_counts(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """``state`` with the batch-norm ``num_batches_tracked`` counters it lacks taken from
    ``own`` (the model's), for each batch norm whose running statistics it does give. Some
    exporters and older PyTorch files leave the counters out; they only matter when batch norm
    averages cumulatively, and PyTorch itself loads such files."""
    out = dict(state)
    for key, value in own.items():
        prefix = key.removesuffix("num_batches_tracked")
        if prefix != key and key not in out and f"{prefix}running_mean" in out:
            out[key] = value.clone()
    return out


def mismatches(expected: Mapping[str, list[int]], given: Mapping[str, list[int]]
               ) -> dict[str, list]:
    """What keeps ``given`` (name → shape) from loading where ``expected`` is wanted."""
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted(k for k in given if k not in expected)
    reshaped = sorted(
        (k, list(given[k]), list(expected[k]))
        for k in expected if k in given and list(given[k]) != list(expected[k]))
    return {"missing": missing, "unexpected": unexpected, "reshaped": reshaped}


def shown(items: list[str], limit: int = LIMIT) -> str:
    """Up to ``limit`` names; a longer list first says how many fall in each top-level module
    (``backbone.<stage>`` for the backbone)."""
    if len(items) <= limit:
        return ", ".join(items)
    parts: dict[str, int] = {}
    for item in items:
        names = item.split(".")
        part = ".".join(names[:2] if names[0] == "backbone" else names[:1])
        parts[part] = parts.get(part, 0) + 1
    where = ", ".join(f"{p} {n}" for p, n in parts.items())
    return f"[{where}] " + ", ".join(items[:limit]) + f", … ({len(items) - limit} more)"


def describe_mismatches(m: Mapping[str, list]) -> str:
    """The missing, unexpected and reshaped tensors of :func:`mismatches`, one line each."""
    lines = []
    for label in ("missing", "unexpected"):
        if m[label]:
            lines.append(f"  {len(m[label])} {label}: " + shown(m[label]))
    if m["reshaped"]:
        lines.append(f"  {len(m['reshaped'])} of the wrong shape: " + shown(
            [f"{k} {tuple(a)}, expected {tuple(b)}" for k, a, b in m["reshaped"]]))
    return "\n".join(lines)


def aux_note(m: Mapping[str, list]) -> str | None:
    """What to do when the auxiliary head is all that differs (:func:`mismatches`' ``m``): weights
    of a model made without one, or with one the spec lacks; ``aux`` is not part of the
    inference graph, so setting it as the weights were trained loses nothing."""
    if m["reshaped"] or bool(m["missing"]) == bool(m["unexpected"]):
        return None
    names = m["missing"] or m["unexpected"]
    if not all(name.startswith("aux.") for name in names):
        return None
    if m["missing"]:
        return ("the weights have no auxiliary head (a model trained or saved without one); "
                "--set aux=null builds the spec without it")
    return ("the weights hold an auxiliary head the spec has none of; set the spec's aux as "
            "the weights were trained (its aux section) to use them")


def load_weights(module: nn.Module, weights: Weights | Mapping[str, torch.Tensor], *,
                 partial: bool = False, source: str | None = None) -> list[str]:
    """Copy ``weights`` into ``module`` after checking every name and shape.

    Without ``partial`` every tensor of ``module`` must be given, exactly. With ``partial`` (a
    backbone-only file) the given tensors must all fit, and the rest keep their initialisation.
    ``source`` names the weights in errors (default: the file they came from).

    Returns:
        The sorted names of ``module``'s tensors left as they were (none without ``partial``).

    Raises:
        WeightsError: naming every missing (unless ``partial``), unexpected and reshaped tensor.
    """
    if isinstance(weights, Weights):
        state, source = weights.state, source or str(weights.file)
        if not partial and weights.contents == BACKBONE:
            raise WeightsError(
                f"{source}: holds backbone weights only (import-weights --backbone-only); a "
                "whole model is needed here. Start a training run from it instead "
                "(specc train SPEC --init FILE).")
    else:
        state, source = dict(weights), source or "the weights"
    own = module.state_dict()
    state = with_batch_counts(state, own)
    expected = {k: list(v.shape) for k, v in own.items()}
    m = mismatches(expected, {k: list(v.shape) for k, v in state.items()})
    if partial:
        if m["unexpected"] or m["reshaped"] or not state:
            report = describe_mismatches({**m, "missing": []}) or "  the file holds no tensors"
            raise WeightsError(f"{source}: the partial weights do not fit this model:\n{report}")
    elif m["missing"] or m["unexpected"] or m["reshaped"]:
        note = aux_note(m)
        raise WeightsError(f"{source}: the weights do not fit this model:\n"
                           + describe_mismatches(m) + (f"\n  note: {note}" if note else ""))
    module.load_state_dict(state, strict=not partial)
    return m["missing"]


# -- TorchScript ----------------------------------------------------------------------------------


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of a generated model (``torch.jit.script``; works on CPU and CUDA)."""
    import torch

    from specc.compile import keep_source

    keep_source(module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def _scripted(module: nn.Module, doc: Document) -> torch.jit.ScriptModule:
    """:func:`script_module`, refusing clearly a model TorchScript cannot compile: specc's own
    blocks always script, a timm encoder (``backbone.timm``) may use Python TorchScript lacks.

    Raises:
        SpecError: TorchScript rejects the model's timm encoder (the build writes nothing).
    """
    try:
        return script_module(module)
    except (RuntimeError, NotImplementedError) as err:
        encoder = doc.spec.backbone.timm
        if encoder is None:
            raise
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()),
                      type(err).__name__)
        raise doc.raw.sources.error(
            "backbone.timm", f"timm's {encoder} cannot be compiled to TorchScript, so model.pt "
            f"cannot be written ({reason}); choose a timm model that scripts, or use the "
            "generated model.py directly") from None


def write_torchscript(module: nn.Module, path: str | Path, doc: Document, *,
                      source: Mapping[str, str | None] | None = None) -> Path:
    """Write ``module`` as a TorchScript ``model.pt``, atomically, scripted in eval mode (its own
    mode is restored), with the spec information of ``doc`` inside, and ``source`` (where its
    weights came from, :func:`weights_source`) where given. Returns ``path``.

    The archive is made in memory and written by Python: torch's own file writer aborts the
    whole process when a write fails (a full disk), where Python raises an ``OSError``.

    Raises:
        OSError: the file cannot be written (the target is left as it was).
    """
    import torch

    was_training = module.training
    module.eval()
    try:
        scripted = _scripted(module, doc)
    finally:
        module.train(was_training)
    extra = {EXTRA_SPEC: json.dumps(spec_info(doc), sort_keys=True)}
    if source is not None:
        extra[EXTRA_WEIGHTS] = json.dumps(source, sort_keys=True)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue())


def read_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any] | None]:
    """A TorchScript model (on the CPU) and the spec information inside it (None when the file
    was not written by specc). A ``model.pt`` in a build folder must agree with the folder's
    other files (:func:`check_build_folder`).

    Raises:
        WeightsError: the file is missing or not TorchScript, or the spec inside is malformed.
        SpeccError: a build folder whose files come from different specs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.name == TORCHSCRIPT and (path.parent / MANIFEST).is_file():
        check_build_folder(path.parent)
    embedded = archive_spec_info(path)  # before any of the archive's code runs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError, ValueError, ... for a bad archive
        raise WeightsError(f"{path}: not a TorchScript model ({err})") from None
    return module, embedded


# -- the spec inside model.pt, build folders -------------------------------------------------------


def archive_spec_info(path: str | Path) -> dict[str, Any] | None:
    """The spec information inside a ``model.pt`` (``specc/spec.json``), read from the zip
    without loading the program; None when the archive has none (not written by specc).

    Raises:
        WeightsError: the file is not a TorchScript archive, or the spec inside is malformed.
    """
    path = Path(path)
    try:
        text = _archive_extra(path, EXTRA_SPEC)
    except (zipfile.BadZipFile, OSError, RuntimeError) as err:
        raise WeightsError(_unloadable(path, err, "a TorchScript model")) from None
    return None if text is None else parse_spec_info(text, f"{path} ({EXTRA_SPEC})")


def _archive_extra(path: Path, name: str) -> bytes | None:
    """The extra file ``name`` of a TorchScript archive (``torch.jit.save``'s ``_extra_files``),
    read from the zip without loading the program; None when the archive has none.

    Raises:
        zipfile.BadZipFile, OSError, RuntimeError: the file is not a readable zip.
    """
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.partition("/")[2] == f"extra/{name}"]
        return archive.read(names[0]) if names else None


def weights_source(given: str | Path | None, weights: Weights | None) -> dict[str, str | None]:
    """What a build records of where its weights came from: ``{"file", "sha256"}``, the path
    the user gave and the sha256 of the file read, both None for freshly initialised weights.

    Weights read from a ``model.pt`` that records its own source keep that source: they are its
    tensors, so a build rebuilt from its own ``model.pt`` still names the file it was trained in.
    """
    if weights is None:
        return {"file": None, "sha256": None}
    return archive_weights_source(weights.file) or {"file": str(given),
                                                    "sha256": file_sha256(weights.file)}


def archive_weights_source(path: str | Path) -> dict[str, str | None] | None:
    """Where the weights of a ``model.pt`` came from (:func:`weights_source`), read from the zip
    without loading the program. None when that is not known: a ``model.pt`` of a training run
    or of a specc from before the record, a record that is not one, a file that is not a zip.
    """
    try:
        text = _archive_extra(Path(path), EXTRA_WEIGHTS)
        record = None if text is None else json.loads(text)
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):
        return None
    if not isinstance(record, dict) or set(record) != {"file", "sha256"}:
        return None
    values = tuple(record.values())
    if values != (None, None) and not all(isinstance(value, str) for value in values):
        return None
    return record


#: What each spec-information key must hold.
_INFO_TYPES = {"name": str, "spec_sha256": str, "architecture_sha256": str, "resolved": dict}


def parse_spec_info(text: bytes | str, where: str) -> dict[str, Any]:
    """Spec information (see :func:`spec_info`) from JSON text, checked: the four keys with their
    types, a resolved spec that is valid for this specc and matches its own ``spec_sha256``.

    Raises:
        WeightsError: naming ``where``, what was expected and what was found.
    """
    try:
        info = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise WeightsError(f"{where}: expected the spec as JSON, found text that is not JSON "
                           f"({err})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{where}: expected a JSON object, found {type(info).__name__}")
    info = spec_info_of(info)
    for key, kind in _INFO_TYPES.items():
        if not isinstance(info.get(key), kind):
            found = "nothing" if key not in info else type(info[key]).__name__
            raise WeightsError(f"{where}: {key}: expected a {kind.__name__}, found {found}")
    _validate_resolved(info["resolved"], where)
    if canonical_sha256(info["resolved"]) != info["spec_sha256"]:
        raise WeightsError(f"{where}: the spec does not match its own spec_sha256 (the file was "
                           "altered or damaged)")
    if architecture_sha256(info["resolved"]) != info["architecture_sha256"]:
        raise WeightsError(f"{where}: the spec does not match its own architecture_sha256 (the "
                           "file was altered or damaged)")
    return info


def _validate_resolved(resolved: dict[str, Any], where: str) -> None:
    """Check a stored resolved spec against the spec language; errors name ``where``."""
    raw = RawSpec(data=resolved, sources=SourceMap(where), path=Path(where), sha256="",
                  files=())
    try:
        validate(raw)
    except SpeccError as err:
        raise WeightsError(f"{where}: the spec is not valid for this specc:\n{err}") from None


#: The spec hash in the header of a generated model.py.
_SOURCE_SHA = re.compile(r"sha256[\s#:]*([0-9a-f]{64})")


def build_folder_hashes(folder: str | Path) -> dict[str, str]:
    """The spec hash each file of a build folder says it was built from (files present only):
    ``model.py``'s header, ``manifest.json``'s and ``model.pt``'s ``spec_sha256``.

    Raises:
        SpeccError: a file that cannot be read or holds no hash.
    """
    folder = Path(folder)
    hashes: dict[str, str] = {}
    try:
        if (folder / SOURCE).is_file():
            with open(folder / SOURCE, encoding="utf-8", errors="replace") as f:
                match = _SOURCE_SHA.search(f.read(2000))
            if match is None:
                raise SpeccError(f"{folder / SOURCE}: not generated by specc (no spec sha256 in "
                                 "its header)")
            hashes[SOURCE] = match.group(1)
        if (folder / MANIFEST).is_file():
            man = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            sha = man.get("spec_sha256") if isinstance(man, dict) else None
            if not isinstance(sha, str):
                raise SpeccError(f"{folder / MANIFEST}: not a specc manifest (no spec_sha256)")
            hashes[MANIFEST] = sha
    except (OSError, ValueError) as err:
        raise SpeccError(f"{folder}: cannot read the build ({err})") from None
    if (folder / TORCHSCRIPT).is_file():
        info = archive_spec_info(folder / TORCHSCRIPT)
        if info is None:
            raise SpeccError(f"{folder / TORCHSCRIPT}: not written by specc (no {EXTRA_SPEC} "
                             "inside)")
        hashes[TORCHSCRIPT] = info["spec_sha256"]
    return hashes


def check_build_folder(folder: str | Path) -> dict[str, str]:
    """Check that the files of a build folder were built from one spec; returns their hashes.

    Raises:
        SpeccError: the files disagree (an interrupted build, or two builds at once, from
        before builds were all-or-nothing), naming each file and its hash.
    """
    hashes = build_folder_hashes(folder)
    if len(set(hashes.values())) > 1:
        listed = ", ".join(f"{name} {sha[:12]}" for name, sha in hashes.items())
        raise SpeccError(f"{folder}: the build's files come from different specs (spec_sha256: "
                         f"{listed}); rebuild it with specc build")
    return hashes
