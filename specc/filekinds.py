"""What a file that torch refused to load really is, told from its first bytes.

``torch.load``'s own errors describe its unpickler's view of the bytes: a checkpoint cut short
by a full disk reads "PytorchStreamReader failed reading zip archive: failed finding central
directory. This is an internal miniz error. If you are seeing this error, ...", and an ONNX
model given where weights are expected reads "Weights only load failed. In PyTorch 2.6, we
changed the default value of the `weights_only` argument ...". Neither says what the file is or
what to do, and both are too long to show. :func:`describe` names the kind of file instead ("a
PyTorch file that is cut short or damaged", "an ONNX model", "a text file"), so a message can
say what was expected, what was found and how to go on.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: How many bytes of a file :func:`describe` looks at.
HEAD = 64
ZIP_MAGIC = b"PK\x03\x04"
#: ``torch.save``'s format before PyTorch 1.6 and any other pickle: PROTO opcode, protocol 2-5.
PICKLE_MAGICS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
#: How the weights-only unpickler names a class it does not load.
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
CUT_SAFETENSORS = ("a safetensors file that is cut short ({size} bytes, too few for {part}: an "
                   "interrupted copy or a full disk?)")
#: Files told apart by their first bytes: (magic, what the file is).
MAGICS = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)
#: Deployment artifacts (``specc build --target``), told by their suffix where their bytes are
#: not distinctive (ONNX is plain protobuf, OpenVINO's weights are raw numbers).
ARTIFACT_SUFFIXES = {".onnx": "an ONNX model", ".xml": "an OpenVINO IR (XML)",
                     ".bin": "OpenVINO IR weights (.bin)"}
#: What to do with a deployment artifact given where weights are expected.
EXPORTED = "pass the weights it was exported from"
#: What to do with a damaged file.
REPLACE = "copy it again from where it came from, or use another checkpoint"


@dataclass(frozen=True)
class FileKind:
    """What a file is (``what``, a phrase such as "an ONNX model"), whether it is a file of the
    expected format that is ``damaged`` (cut short or corrupt), and what the user can do."""

    what: str
    damaged: bool = False
    hint: str = ""


def describe(path: Path, load_error: BaseException) -> FileKind:
    """The kind of the file at ``path``, which ``torch.load`` refused with ``load_error``."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(HEAD)
    except OSError as err:
        return FileKind(f"a file that cannot be read ({err.strerror or err})")
    if not head:
        return FileKind("an empty file", damaged=True, hint=REPLACE)
    if head.startswith(ZIP_MAGIC):
        return _zip_kind(path, load_error)
    if head.startswith(PICKLE_MAGICS):
        return _pickle_kind(load_error)
    return _other_kind(head, path.suffix.lower())


def _zip_kind(path: Path, load_error: BaseException) -> FileKind:
    """A zip archive: ``torch.save``'s format, cut short when the directory at its end is gone."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return FileKind("a PyTorch file that is cut short or damaged (the directory at the end "
                        "of its zip archive is missing: an interrupted copy or a full disk?)",
                        damaged=True, hint=REPLACE)
    if any(name.endswith("/archive_format") for name in names):
        return FileKind("a torch.export or AOTInductor archive (.pt2)", hint=EXPORTED)
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return _objects_kind(load_error) or FileKind(
            "a PyTorch file that is damaged (its zip archive opens but a part of it does not "
            "read back)", damaged=True, hint=REPLACE)
    if names and all(name.endswith(".npy") for name in names):
        return FileKind("a NumPy archive (.npz)")
    return FileKind("a zip archive that is not a PyTorch file")


def _objects_kind(load_error: BaseException) -> FileKind | None:
    """A whole ``torch.save`` file that holds Python objects besides tensors (the weights-only
    unpickler names the first class it does not allow), else None."""
    found = UNSUPPORTED_GLOBAL.search(str(load_error))
    if found is None:
        return None
    return FileKind(f"a PyTorch file that holds Python objects besides tensors, such as "
                    f"{found[1]} (a whole model saved with torch.save(model)?)",
                    hint="save model.state_dict() instead")


def _pickle_kind(load_error: BaseException) -> FileKind:
    """A plain pickle: ``torch.save``'s format before PyTorch 1.6. Cut short inside a class name,
    it reads as a class the unpickler does not allow, so the two cases are not told apart."""
    if UNSUPPORTED_GLOBAL.search(str(load_error)):
        return FileKind("a PyTorch file of the format before PyTorch 1.6 that is cut short or "
                        "holds Python objects besides tensors",
                        hint="save a state_dict() with a recent PyTorch")
    return FileKind("a PyTorch file of the format before PyTorch 1.6 that is cut short or "
                    "damaged", damaged=True, hint=REPLACE)


def _other_kind(head: bytes, suffix: str) -> FileKind:
    """A file that is not a PyTorch file: by its magic bytes, its suffix, or as text."""
    for magic, what in MAGICS:
        if head.startswith(magic):
            return FileKind(what)
    if suffix in ARTIFACT_SUFFIXES:
        return FileKind(ARTIFACT_SUFFIXES[suffix], hint=EXPORTED)
    if _is_onnx(head):
        return FileKind(ARTIFACT_SUFFIXES[".onnx"], hint=EXPORTED)
    if _is_safetensors(head):
        return FileKind("a safetensors file without the .safetensors suffix",
                        hint="rename it to end in .safetensors")
    if _is_text(head):
        return FileKind("a text file")
    return FileKind("a file of an unknown format")


def _is_onnx(head: bytes) -> bool:
    """An ONNX model under another name: protobuf fields 1 (``ir_version``, a small number) and
    2 (``producer_name``), in the order every exporter writes them."""
    return len(head) > 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] == 0x12


def _is_safetensors(head: bytes) -> bool:
    """safetensors: a little-endian 8-byte header length, then the JSON header."""
    return len(head) > 9 and head[8:10] in (b'{"', b"{}") and int.from_bytes(head[:8], "little") > 0


def _is_text(head: bytes) -> bool:
    """UTF-8 text without NUL bytes (a character cut at the end of ``head`` allowed)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3
    return True


def safetensors_cut_short(path: Path) -> str | None:
    """How a safetensors file falls short of the size its header gives (an 8-byte length, the
    JSON header, then the tensors' bytes up to the largest end offset); None when it does not,
    or when it does not start as a safetensors file does."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            start = stream.read(9)
            if len(start) < 9 or start[8:] != b"{":
                return None
            header_size = int.from_bytes(start[:8], "little")
            if 8 + header_size > size:
                return CUT_SAFETENSORS.format(size=size, part="its header")
            header = json.loads(b"{" + stream.read(header_size - 1))
    except (OSError, ValueError):
        return None
    ends = [entry["data_offsets"][1] for entry in header.values()
            if isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    if ends and all(isinstance(end, int) for end in ends) and 8 + header_size + max(ends) > size:
        return CUT_SAFETENSORS.format(size=size, part="its tensors")
    return None
