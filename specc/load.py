"""Stage 1 — load: YAML text → a plain nested dict plus the source position of every value.

Only YAML's safe subset is read (no tags, no Python objects). A spec may start from another one
with ``extends: base.yaml`` (a path relative to the spec's folder) and state only what differs;
``--set key.path=value`` overrides apply last. Every value remembers the file, line and column it
came from, so later stages can point at it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specc.errors import Location, SpecError

#: Largest spec file read, in bytes; a spec is a page of YAML, not a data set.
MAX_FILE_BYTES = 1_000_000
#: Most values one document may expand to (guards against alias "billion laughs" bombs).
MAX_NODES = 50_000
#: Deepest ``extends:`` chain followed.
MAX_EXTENDS_DEPTH = 16

Key = tuple[str | int, ...]


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
                    raise SpecError(f"duplicate key {name!r}", location=_loc(self.file, knode),
                                    path=format_path((*key, name)))
                out[name] = self.build(vnode, (*key, name))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*key, i)) for i, v in enumerate(node.value)]
        return self.scalars.construct_object(node, deep=True)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("no such file", location=Location(str(path))) from None
    except IsADirectoryError:
        raise SpecError("expected a YAML file, found a directory", location=Location(str(path))) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", location=Location(str(path))) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(f"file is {len(data)} bytes; a spec is expected under {MAX_FILE_BYTES}",
                        location=Location(str(path)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"expected UTF-8 YAML text, found binary data (byte {exc.start})",
                        location=Location(str(path))) from None


def _parse_document(text: str, file: str, sources: SourceMap, root: Key = ()) -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = exc.problem or exc.context or "malformed YAML"
        raise SpecError(f"not valid YAML: {problem}", location=loc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", location=Location(file)) from None
    if node is None:
        return None
    try:
        return _Builder(file, sources).build(node, root)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        raise SpecError(f"unsupported YAML value: {exc.problem}", location=loc) from None
    except RecursionError:
        raise SpecError("the document nests too deeply", location=Location(file)) from None


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


def _load_file(path: Path, seen: tuple[Path, ...], display: str) -> tuple[dict[str, Any], SourceMap, list[Path]]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " → ".join(p.name for p in (*seen, resolved))
        raise SpecError(f"extends: cycle {chain}", location=Location(display))
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise SpecError(f"extends: chain deeper than {MAX_EXTENDS_DEPTH}", location=Location(display))
    sources = SourceMap(display)
    data = _parse_document(_read_text(path), display, sources)
    if data is None:
        raise SpecError("the file is empty; expected a mapping with at least name, num_classes "
                        "and backbone", location=Location(display))
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top level, found {_kind(data)}",
                        location=sources.locate(()))
    files = [path]
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, sources, files
    if not isinstance(base_name, str) or not base_name:
        raise sources.error(("extends",), f"expected a file name, found {_kind(base_name)}")
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise sources.error(("extends",), f"no such file {base_name!r} next to {path.name}")
    base_display = str(Path(display).parent / base_name)
    base, base_src, base_files = _load_file(base_path, (*seen, resolved), base_display)
    merged_src = SourceMap(display)
    merged = _merge(base, data, base_src, sources, (), merged_src)
    merged_src.positions[()] = Location(display, 1, 1)
    return merged, merged_src, files + base_files


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def apply_override(data: dict[str, Any], sources: SourceMap, text: str) -> None:
    """Apply one ``key.path=value`` override in place; the value is read as YAML (``[12,24,36]``)."""
    where = Location(f"--set {text}")
    if "=" not in text:
        raise SpecError("expected key.path=value", location=where)
    key_text, value_text = text.split("=", 1)
    try:
        key = parse_key(key_text.strip())
    except ValueError:
        raise SpecError(f"malformed key path {key_text.strip()!r}; expected e.g. aspp.rates[1]",
                        location=where) from None
    tmp = SourceMap(where.file)
    value = _parse_document(value_text, where.file, tmp, key) if value_text.strip() else None
    node: Any = data
    for i, part in enumerate(key[:-1]):
        nxt = key[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise SpecError(f"{format_path(key[:i])} has no item [{part}]", location=where)
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"{format_path(key[:i])} is not a mapping", location=where)
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = key[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise SpecError(f"{format_path(key[:-1])} has no item [{last}]", location=where)
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise SpecError(f"{format_path(key[:-1])} is not a mapping", location=where)
        node[last] = value
    n = len(key)
    for k in [k for k in sources.positions if k[:n] == key]:
        del sources.positions[k]
    for k in tmp.positions:
        sources.positions[k] = where
    sources.positions[key] = where


def canonical_sha256(data: Any) -> str:
    """sha256 of the document as canonical JSON (sorted keys), independent of YAML formatting."""
    import json

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
    data, sources, files = _load_file(p, (), display)
    for text in overrides:
        apply_override(data, sources, text)
    return RawSpec(data=data, sources=sources, path=p, sha256=canonical_sha256(data),
                   files=tuple(files))
