"""Stage 1 — load: YAML text → a plain nested dict plus the source position of every value.

Only YAML's safe subset is read (no tags, no Python objects). A spec may start from another one
with ``extends: base.yaml`` (a path relative to the spec's folder) and state only what differs;
``--set key.path=value`` overrides apply last. Every value remembers the file, line and column it
came from, so later stages can point at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specc.errors import Location, SpecError

#: Largest spec file read, in bytes; a spec is a page of YAML, not a data set.
MAX_FILE_BYTES = 1_000_000
#: Most values one document may expand to (guards against alias "billion laughs" bombs).
MAX_NODES = 50_000
#: Deepest nesting of flow lists and mappings read (a spec nests a handful).
MAX_DEPTH = 64
#: Deepest ``extends:`` chain followed.
MAX_EXTENDS_DEPTH = 16

Key = tuple[str | int, ...]

#: Spec keys renamed since they were introduced: old key path → its new last part. Old names
#: still load, with a deprecation warning, so older specs, checkpoints and build folders work.
#: ``input.crop`` is the network's input size (``data.crop`` is the training crop);
#: ``decoder.output_stride`` is the reduction of the decoder's low-level feature (output stride
#: names only the backbone's target, ``backbone.output_stride``).
RENAMED: dict[Key, str] = {
    ("input", "crop"): "size",
    ("decoder", "output_stride"): "low_level_reduction",
    ("train", "amp"): "precision",  # its value "none" reads as "fp32"
}


@dataclass(frozen=True)
class Deprecation:
    """An old key name found in a document: where, and what it is called now."""

    location: Location
    old: str
    new: str

    def __str__(self) -> str:
        return (f"{self.location}: warning: {self.old}: renamed to {self.new}; the old name "
                "still loads but is deprecated")


def format_path(key: Key) -> str:
    """``("aspp", "rates", 1)`` → ``"aspp.rates[1]"``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class SourceMap:
    """Key path → where its value was written. Unknown paths fall back to their nearest parent."""

    file: str
    positions: dict[Key, Location] = field(default_factory=dict)
    #: Key path → where the key itself (not its value) was written, for "unknown key" errors.
    keys: dict[Key, Location] = field(default_factory=dict)

    def locate_key(self, key: Key | str) -> Location:
        """Where the key of ``key`` was written (its value's position if the key's is unknown)."""
        parts = parse_key(key) if isinstance(key, str) else key
        loc = self.keys.get(tuple(parts))
        return loc if loc is not None else self.locate(parts)

    def locate(self, key: Key | str) -> Location:
        """The position of ``key`` (a tuple or a dotted path), or of its nearest known parent."""
        parts = parse_key(key) if isinstance(key, str) else key
        for end in range(len(parts), -1, -1):
            loc = self.positions.get(tuple(parts[:end]))
            if loc is not None:
                return loc
        return Location(self.file)

    def error(self, key: Key | str, message: str) -> SpecError:
        """A :class:`SpecError` for ``key``, placed where the key was written."""
        path = key if isinstance(key, str) else format_path(key)
        return SpecError(message, location=self.locate(key), path=path)


@dataclass(frozen=True)
class RawSpec:
    """A loaded, merged spec document before validation."""

    data: dict[str, Any]
    sources: SourceMap
    path: Path
    #: sha256 of the resolved document (after extends and overrides), as canonical JSON.
    sha256: str
    #: Every file read, the spec first and then its bases.
    files: tuple[Path, ...]
    #: Old key names the document used (see :data:`RENAMED`).
    deprecations: tuple[Deprecation, ...] = ()


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def parse_key(text: str) -> Key:
    """``"aspp.rates[1]"`` → ``("aspp", "rates", 1)``; raises ValueError on a malformed path."""
    parts: list[str | int] = []
    for chunk in text.split("."):
        m = _KEY_PART.fullmatch(chunk)
        if not m:
            raise ValueError(f"malformed key path {text!r}")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(parts)


def _loc(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed YAML node tree into Python values, recording each value's position."""

    def __init__(self, file: str, sources: SourceMap) -> None:
        self.file = file
        self.sources = sources
        self.count = 0
        self.scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, key: Key) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(
                f"the document expands to more than {MAX_NODES} values (aliases?); "
                "a spec is expected to be small",
                location=_loc(self.file, node),
            )
        self.sources.positions[key] = _loc(self.file, node)
        plain = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
        if type(node) in plain and node.tag != plain[type(node)]:
            # The builder below would read a tagged collection as a plain one; refuse the tag.
            raise SpecError(f"unsupported YAML value: expected a plain mapping or list, found "
                            f"the tag {node.tag!r}", location=_loc(self.file, node))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("YAML merge keys ('<<') are not supported; use extends:",
                                    location=_loc(self.file, knode))
                if not isinstance(knode, yaml.ScalarNode):
                    raise SpecError("expected a plain key, found a collection",
                                    location=_loc(self.file, knode))
                name = knode.value
                if name in out:
                    first = self.sources.keys[(*key, name)]
                    raise SpecError(f"duplicate key {name!r} (first written at line {first.line}, "
                                    f"column {first.column})", location=_loc(self.file, knode),
                                    path=format_path((*key, name)))
                self.sources.keys[(*key, name)] = _loc(self.file, knode)
                out[name] = self.build(vnode, (*key, name))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*key, i)) for i, v in enumerate(node.value)]
        return self.scalars.construct_object(node, deep=True)


#: What files of these suffixes are, for a message that names them when given as a spec.
NOT_SPECS = {".pt": "a TorchScript model or PyTorch file", ".pth": "a PyTorch file",
             ".pt2": "a torch.export or AOTInductor artifact", ".onnx": "an ONNX artifact",
             ".xml": "an OpenVINO IR", ".safetensors": "a weights file"}


def _read_text(path: Path, display: str) -> str:
    """The text of a spec file, refused before reading when it is not a small regular file.

    The file is opened without blocking (a FIFO would otherwise wait for a writer), checked with
    ``fstat`` on the open descriptor (no race with a rename) and read up to one byte past the
    limit, so a device such as ``/dev/zero`` or a sparse multi-GB file costs no memory.

    Raises:
        SpecError: the file is missing, not a regular file, too large, binary or not UTF-8.
    """
    where = Location(display)
    if path.suffix.lower() in NOT_SPECS and path.is_file():
        raise SpecError(f"expected a spec file (YAML), found {NOT_SPECS[path.suffix.lower()]} "
                        "(eval takes a model with --checkpoint, predict as its first argument)",
                        location=where)
    try:
        data = _read_limited(path, display)
    except FileNotFoundError:
        raise SpecError("no such file", location=where) from None
    except IsADirectoryError:
        raise SpecError("expected a YAML file, found a directory", location=where) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", location=where) from None
    if b"\0" in data:
        at = _byte_location(data, data.index(b"\0"), display)
        raise SpecError("expected YAML text, found binary data (a NUL byte)", location=at)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = _byte_location(data, exc.start, display)
        raise SpecError(f"expected UTF-8 text, found the byte 0x{data[exc.start]:02x}, which is "
                        "not UTF-8 (save the file as UTF-8)", location=at) from None


def _read_limited(path: Path, display: str) -> bytes:
    """At most ``MAX_FILE_BYTES`` of a regular file; SpecError for anything else or anything more."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(stream.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"expected a YAML file, found {_file_kind(info.st_mode)}",
                            location=Location(display))
        if info.st_size > MAX_FILE_BYTES:
            raise SpecError(_too_large(info.st_size), location=Location(display))
        data = stream.read(MAX_FILE_BYTES + 1)  # the file may have grown since fstat
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(_too_large(len(data)), location=Location(display))
    return data


def _too_large(size: int) -> str:
    return f"expected a spec under {MAX_FILE_BYTES} bytes, found a file of {size} bytes"


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words: ``a named pipe (FIFO)``, ``a character device`` ..."""
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _byte_location(data: bytes, offset: int, display: str) -> Location:
    """The line and column (in characters) of byte ``offset`` of ``data``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Location(display, data.count(b"\n", 0, offset) + 1, column)


_FLOW_TOKENS = re.compile(r"""[\[\]{}'"#\n\\]""")


def _check_flow_depth(text: str, file: str) -> None:
    """Refuse deeply nested ``[`` / ``{`` before PyYAML's scanner spends minutes on them.

    PyYAML's time grows with the cube of the flow nesting depth (a 100 kB file of ``[`` would
    take hours). Quotes and comments are skipped; brackets inside plain scalars may over-count,
    which only matters past :data:`MAX_DEPTH` of them.
    """
    depth, quote, comment, escaped = 0, "", False, False
    for m in _FLOW_TOKENS.finditer(text):
        ch = m.group()
        if comment:
            comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (m.start() == 0 or text[m.start() - 1] in " \t\n"):
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                column = m.start() - text.rfind("\n", 0, m.start())
                raise SpecError(f"not valid as a spec: expected at most {MAX_DEPTH} nested "
                                "lists or mappings, found more", location=Location(file, line, column))
        elif ch in "]}":
            depth = max(0, depth - 1)


def _parse_document(text: str, file: str, sources: SourceMap, root: Key = ()) -> Any:
    """Compose and build one YAML document; ``_EMPTY`` when it holds no node at all."""
    _check_flow_depth(text, file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = exc.problem or exc.context or "malformed YAML"
        if "'\\t'" in problem:
            problem += " (indent with spaces; YAML does not allow tabs)"
        elif "<block end>" in problem or "mapping values are not allowed" in problem:
            problem += " (check the indentation: the keys of one mapping line up)"
        raise SpecError(f"not valid YAML: {problem}", location=loc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", location=Location(file)) from None
    except RecursionError:
        raise SpecError("not valid as a spec: the document nests too deeply",
                        location=Location(file)) from None
    if node is None:
        return _EMPTY
    try:
        return _Builder(file, sources).build(node, root)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        raise SpecError(f"unsupported YAML value: {exc.problem}", location=loc) from None
    except RecursionError:
        raise SpecError("not valid as a spec: the document nests too deeply",
                        location=Location(file)) from None


#: What :func:`_parse_document` returns for a document with no content (only comments or blanks).
_EMPTY = object()


def _merge(base: Any, over: Any, base_src: SourceMap, over_src: SourceMap, key: Key,
           out_src: SourceMap) -> Any:
    """Deep-merge ``over`` onto ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged: dict[str, Any] = {}
        out_src.positions[key] = over_src.positions.get(key) or base_src.locate(key)
        for name in list(base) + [k for k in over if k not in base]:
            child = (*key, name)
            if name in over:
                b = base.get(name)
                out_src.keys[child] = over_src.keys.get(child) or base_src.locate_key(child)
                if over[name] is None and name in base:
                    # An explicit null removes an optional section from the base (e.g. aux: null).
                    merged[name] = None
                    out_src.positions[child] = over_src.positions[child]
                else:
                    merged[name] = _merge(b, over[name], base_src, over_src, child, out_src)
            else:
                merged[name] = base[name]
                _copy_positions(base_src, child, out_src)
        return merged
    _copy_positions(over_src, key, out_src)
    return over


def _copy_positions(src: SourceMap, key: Key, dst: SourceMap) -> None:
    n = len(key)
    for k, loc in src.positions.items():
        if k[:n] == key:
            dst.positions[k] = loc
    for k, loc in src.keys.items():
        if k[:n] == key:
            dst.keys[k] = loc


def renamed_key(key: Key) -> Key:
    """``key`` with a renamed prefix (:data:`RENAMED`) replaced by today's name."""
    for old, new in RENAMED.items():
        if key[:len(old)] == old:
            return (*old[:-1], new, *key[len(old):])
    return key


def upgrade(data: dict[str, Any], sources: SourceMap | None = None) -> list[Deprecation]:
    """Rename old keys of a spec document in place (key order kept) and say which were found.

    Raises:
        SpecError: a mapping holds both the old and the new name of one key.
    """
    found = []
    for old, new in RENAMED.items():
        parent = data
        for part in old[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        new_key = (*old[:-1], new)
        src = sources or SourceMap("")
        if new in parent:
            raise SpecError(f"expected one of {format_path(old)} (its old name) and "
                            f"{format_path(new_key)}, found both", location=src.locate_key(old),
                            path=format_path(old))
        items = [(new if k == old[-1] else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
        if sources is not None:
            _move_positions(sources, old, new_key)
        found.append(Deprecation(src.locate_key(new_key), format_path(old), format_path(new_key)))
    return found


def _move_positions(sources: SourceMap, old: Key, new: Key) -> None:
    n = len(old)
    for table in (sources.positions, sources.keys):
        for k in [k for k in table if k[:n] == old]:
            table[(*new, *k[n:])] = table.pop(k)


def _load_file(path: Path, seen: tuple[Path, ...], display: str
               ) -> tuple[dict[str, Any], SourceMap, list[Path], list[Deprecation]]:
    resolved = path.resolve()
    sources = SourceMap(display)
    data = _parse_document(_read_text(path, display), display, sources)
    if data is _EMPTY:
        raise SpecError("the file is empty; expected a mapping with at least name, num_classes "
                        "and backbone", location=Location(display))
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top level, found {_kind(data)}",
                        location=sources.locate(()))
    files = [path]
    deprecations = upgrade(data, sources)
    if "extends" not in data:
        return data, sources, files, deprecations
    base_name = data.pop("extends")
    if not isinstance(base_name, str) or not base_name:
        raise sources.error(("extends",), f"expected a file name, found {_kind(base_name)}")
    base_path = path.parent / base_name
    found = _not_a_spec_file(base_path)
    if found:
        where = "" if Path(base_name).is_absolute() else f" next to {path.name}"
        raise sources.error(("extends",), f"expected a spec file{where}, found {found} "
                            f"{base_name!r}")
    chain = (*seen, resolved)
    if base_path.resolve() in chain:
        names = " → ".join(p.name for p in (*chain, base_path.resolve()))
        raise sources.error(("extends",), f"expected a chain of bases that ends, found a cycle: "
                            f"{names}")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise sources.error(("extends",), f"expected at most {MAX_EXTENDS_DEPTH} levels of "
                            "extends, found more")
    base_display = str(Path(display).parent / base_name)
    base, base_src, base_files, base_deprecations = _load_file(base_path, chain, base_display)
    merged_src = SourceMap(display)
    merged = _merge(base, data, base_src, sources, (), merged_src)
    merged_src.positions[()] = Location(display, 1, 1)
    return merged, merged_src, files + base_files, deprecations + base_deprecations


def _not_a_spec_file(path: Path) -> str | None:
    """What ``path`` holds when it cannot be a spec file (``no file``, ``the folder``, ``a
    character device``, ...); None for a regular file, and for a path that cannot be looked at
    (reading it then says why)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "no file"
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "the folder" if stat.S_ISDIR(mode) else _file_kind(mode)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f"{type(value).__name__} {value!r}"


def apply_override(data: dict[str, Any], sources: SourceMap, text: str) -> Deprecation | None:
    """Apply one ``key.path=value`` override in place; the value is read as YAML (``[12,24,36]``).

    Returns the deprecation when the path starts with an old key name (it is applied under the
    new name).

    Raises:
        SpecError: the override is not ``key.path=value``, the path is malformed or runs through
            a value that is not a mapping (or a list too short), or the value is not YAML.
    """
    where = Location(f"--set {text}")
    if "=" not in text:
        raise SpecError(f"expected key.path=value, found {text!r}", location=where)
    key_text, value_text = text.split("=", 1)
    try:
        key = parse_key(key_text.strip())
    except ValueError:
        raise SpecError(f"expected a key path such as aspp.rates[1], found {key_text.strip()!r}",
                        location=where) from None
    if key == ("extends",):
        raise SpecError("expected a key that --set can change; extends is followed when the "
                        "spec file is read, before --set applies: write a spec file that extends "
                        "the other one instead", location=where, path="extends")
    written, key = key, renamed_key(key)
    deprecation = None if written == key else Deprecation(
        where, format_path(written), format_path(key))
    tmp = SourceMap(where.file)
    try:
        value = _parse_document(value_text, where.file, tmp, key) if value_text.strip() else None
    except SpecError as exc:
        raise SpecError(exc.detail, location=where, path=format_path(key)) from None
    if value is _EMPTY:
        value = None
    node: Any = data
    created: list[Key] = []  # the mappings and lists the override makes on its way
    for i, part in enumerate(key):
        last = i == len(key) - 1
        here = format_path(key[:i]) or "the spec"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise SpecError(f"expected a list to index with [{part}], found {_kind(node)}",
                                location=where, path=here)
            if part >= len(node):
                have = (f"a list of {len(node)}" if node else "an empty list; set the whole "
                        "list instead, e.g. key=[a, b]")
                raise SpecError(f"expected an index below {len(node)}, found [{part}] into {have}",
                                location=where, path=here)
        elif not isinstance(node, dict):
            raise SpecError(f"expected a mapping to set {part!r} in, found {_kind(node)}",
                            location=where, path=here)
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = [] if isinstance(key[i + 1], int) else {}
                created.append(tuple(key[:i + 1]))
            node = node[part]
    n = len(key)
    for table in (sources.positions, sources.keys):
        for k in [k for k in table if k[:n] == key]:
            del table[k]
    for k in tmp.positions:
        sources.positions[k] = where
    for k in tmp.keys:
        sources.keys[k] = where
    for k in [*created, key]:  # an unknown key among them is the override's, not the file's
        sources.positions[k] = where
        sources.keys[k] = where
    return deprecation


def canonical_sha256(data: Any) -> str:
    """sha256 of the document as canonical JSON (sorted keys), independent of YAML formatting."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RawSpec:
    """Read a spec file, follow ``extends:``, apply ``--set`` overrides.

    Raises:
        SpecError: the file is missing, unreadable, not YAML, not a mapping, or an override
            is malformed. The message names the file, line and column.
    """
    p = Path(path)
    display = str(path)
    data, sources, files, deprecations = _load_file(p, (), display)
    for text in overrides:
        if (found := apply_override(data, sources, text)) is not None:
            deprecations.append(found)
    return RawSpec(data=data, sources=sources, path=p, sha256=canonical_sha256(data),
                   files=tuple(files), deprecations=tuple(deprecations))
