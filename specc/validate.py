"""Stage 2 — validate: a loaded document → a :class:`~specc.spec.Spec`, or errors with positions.

pydantic reports each problem with a location inside the document; this module maps it back to
the file, line and column where the value (or its parent, for a missing key; the key itself, for
an unknown one) was written, and words it as "expected …, found …". pydantic's own wording
("Input should be a valid dictionary or instance of …") and its per-branch noise for unions
("expected 'conv7' or 'deep'" *and* "expected a mapping" for one value) never reach the user.
"""

from __future__ import annotations

import difflib
import inspect
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from specc.errors import SpecError, SpecErrors
from specc.load import Key, RawSpec, format_path
from specc.spec import Spec, Unit

#: Error types whose last location part is a key that is not (or may not be) in the document.
_KEY_ERRORS = ("missing", "extra_forbidden")

#: Regular expressions of the spec's string types → what a user should write instead.
_PATTERNS = {
    r"^[a-z][a-z0-9_]{0,63}$": "a lower-case identifier (a letter, then letters, digits or '_'; "
                               "at most 64 characters)",
    r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$": "a node name such as backbone.block1.unit2 "
                                         "(lower-case identifiers joined by '.')",
}


@dataclass(frozen=True)
class _Problem:
    """One pydantic error placed in the document."""

    key: Key
    #: (depth in ``key``, branch name) for each union branch pydantic descended into.
    branches: tuple[tuple[int, str], ...]
    err: dict[str, Any]


def _document_key(err: dict[str, Any], data: Any) -> tuple[Key, tuple[tuple[int, str], ...]]:
    """Split a pydantic location into the document's key path and the union branches taken.

    A location part that indexes the document is a key; a string that does not is the name of a
    union branch (``StemSpec``, ``literal['conv7','deep']``, a unit ``type``), except the last
    part of a "missing" or "unknown key" error, which names the key itself.
    """
    loc = err["loc"]
    key: list[str | int] = []
    branches: list[tuple[int, str]] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict | list) and _has(node, part):
            key.append(part)
            node = node[part]
        elif (i == len(loc) - 1 and err["type"] in _KEY_ERRORS and isinstance(part, str)
              and isinstance(node, dict)):
            key.append(part)
            node = None
        elif isinstance(part, int):
            node = None  # an item missing from a fixed-length list: the error is the list's
        else:
            branches.append((len(key), str(part)))
    return tuple(key), tuple(branches)


def _alternatives(annotation: Any) -> list[Any]:
    """The types an annotation allows, with ``Annotated`` and unions taken apart."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [alt for arg in get_args(annotation) for alt in _alternatives(arg)]
    return [annotation]


def _is_model(tp: Any) -> bool:
    return inspect.isclass(tp) and issubclass(tp, BaseModel)


def _model_at(key: Key, data: Any) -> type[BaseModel] | None:
    """The spec model whose fields the mapping at ``key`` holds (None when it is not one)."""
    options: list[Any] = [Spec]
    node = data
    for part in key:
        found: list[Any] = []
        for opt in options:
            if isinstance(part, str) and _is_model(opt) and part in opt.model_fields:
                found += _alternatives(opt.model_fields[part].annotation)
            elif isinstance(part, int) and get_origin(opt) in (list, tuple):
                args = [a for a in get_args(opt) if a is not Ellipsis]
                if args:
                    found += _alternatives(args[min(part, len(args) - 1)])
        options = found
        node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
    models = [o for o in options if _is_model(o)]
    if len(models) > 1 and isinstance(node, dict):
        tagged = [m for m in models if "type" in m.model_fields
                  and node.get("type") in get_args(m.model_fields["type"].annotation)]
        models = tagged or models
    return models[0] if len(models) == 1 else None


def _has(node: dict[str, Any] | list[Any], part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _value_at(key: Key, data: Any) -> Any:
    node = data
    for part in key:
        if not (isinstance(node, dict | list) and _has(node, part)):
            return None
        node = node[part]
    return node


def _describe(value: Any) -> str:
    """A found value, as a user would recognize it in the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _expected(err: dict[str, Any]) -> str | None:
    """What the value should have been (the X of "expected X"), or None for other errors."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return ctx["expected"]
    if kind.startswith("int_"):
        return "an integer"
    if kind.startswith("float_"):
        return "a number"
    if kind == "finite_number":
        return "a finite number"
    if kind.startswith("bool_"):
        return "true or false"
    if kind.startswith("string_") and kind != "string_pattern_mismatch":
        return "a string"
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(ctx.get("pattern", ""), f"text matching {ctx.get('pattern')}")
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return "a list"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "a mapping"
    bounds = {"greater_than": ("gt", "a number greater than"),
              "greater_than_equal": ("ge", "a number of at least"),
              "less_than": ("lt", "a number less than"),
              "less_than_equal": ("le", "a number of at most")}
    if kind in bounds:
        name, words = bounds[kind]
        return f"{words} {_number(ctx[name])}"
    if kind in ("too_short", "too_long"):
        if ctx.get("field_type") == "Tuple" and kind == "too_long":
            return f"exactly {_items(ctx['max_length'])}"
        if ctx.get("field_type") == "Tuple":
            return f"exactly {_items(ctx['min_length'])}"
        if kind == "too_short":
            return f"at least {_items(ctx['min_length'])}"
        return f"at most {_items(ctx['max_length'])}"
    return None


def _join(alternatives: list[str]) -> str:
    """``["'a'", "'b'", "a mapping"]`` → ``"'a', 'b' or a mapping"``."""
    parts: list[str] = []
    for alt in alternatives:
        for piece in alt.replace(" or ", ", ").split(", ") if alt.startswith("'") else [alt]:
            if piece not in parts:
                parts.append(piece)
    if not parts:
        return "another value"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _message(p: _Problem, data: Any) -> str:
    """The user-facing text of one problem (without file:line:col and key path)."""
    err, key = p.err, p.key
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing" and isinstance(err["loc"][-1], int):
        # A fixed-length list (a tuple) with too few items: pydantic names the first missing one.
        found = _value_at(key, data)
        model = _model_at(key[:-1], data)
        field = model.model_fields.get(str(key[-1])) if model else None
        sizes = [len(get_args(t)) for t in _alternatives(field.annotation if field else None)
                 if get_origin(t) is tuple and Ellipsis not in get_args(t)]
        wanted = f"exactly {_items(sizes[0])}" if sizes else "more items"
        return f"expected {wanted}, found {_describe(found)}"
    if kind == "missing":
        model = _model_at(key[:-1], data)
        field = model.model_fields.get(str(key[-1])) if model else None
        about = f" ({_lower_first(field.description)})" if field and field.description else ""
        return f"required key is missing{about}"
    if kind == "extra_forbidden":
        model = _model_at(key[:-1], data)
        name = str(key[-1])
        if model is None:
            return f"unknown key {name!r}"
        allowed = list(model.model_fields) + (["extends"] if model is Spec else [])
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {name!r}{hint}; expected one of {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        return f"expected {_join([ctx['expected_tags']])}, found {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        tags = _join([", ".join(repr(t) for t in _unit_types())])
        return f"expected a 'type' key ({tags}), found a mapping without one"
    if kind in ("value_error", "assertion_error"):
        text = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if text.startswith(prefix):
                text = text[len(prefix):]
        return text
    expected = _expected(err)
    if expected is None:
        text = err["msg"]
        if text.startswith("Input should be "):
            text = "expected " + text[len("Input should be "):]
        return f"{_lower_first(text)}, found {_describe(err.get('input'))}"
    return f"expected {expected}, found {_describe(err.get('input'))}"


def _unit_types() -> list[str]:
    """The spec's unit types, in the order of the ``Unit`` union."""
    members = get_args(get_args(Unit)[0])
    return [get_args(m.model_fields["type"].annotation)[0] for m in members]


def _resolve_unions(problems: list[_Problem], data: Any) -> list[_Problem | tuple[Key, str]]:
    """Collapse the per-branch errors pydantic reports for one value of a plain union.

    When some branch got past the value's kind (a mapping given to ``str | StemSpec``), only that
    branch's errors count. When none did, the value is of no allowed kind: one message lists all
    kinds ("expected 'conv7', 'deep' or a mapping, found 'conv9'").
    """
    groups: dict[Key, dict[str, list[_Problem]]] = {}
    for p in problems:
        if p.branches:
            depth, branch = p.branches[0]
            groups.setdefault(p.key[:depth], {}).setdefault(branch, []).append(p)
    out: list[_Problem | tuple[Key, str]] = []
    done: set[Key] = set()
    for p in problems:
        if not p.branches:
            out.append(p)
            continue
        union_key = p.key[:p.branches[0][0]]
        branches = groups[union_key]
        if len(branches) < 2:
            out.append(p)
            continue
        deep = {b for b, ps in branches.items() if any(len(q.key) > len(union_key) for q in ps)}
        if deep:
            if p.branches[0][1] in deep:
                out.append(p)
            continue
        if union_key in done:
            continue
        done.add(union_key)
        kinds = [e for ps in branches.values() for q in ps if (e := _expected(q.err))]
        found = _describe(_value_at(union_key, data))
        out.append((union_key, f"expected {_join(kinds)}, found {found}"))
    return out


def validate(raw: RawSpec) -> Spec:
    """Check a loaded document against the spec language.

    Raises:
        SpecErrors: one :class:`SpecError` per problem, each placed at its key, in file order.
    """
    try:
        return Spec.model_validate(raw.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key, branches = _document_key(err, raw.data)
            if err["type"] == "union_tag_invalid" and isinstance(_value_at(key, raw.data), dict):
                key = (*key, "type")
            problems.append(_Problem(key, branches, err))
        errors: list[SpecError] = []
        seen: set[tuple[Key, str]] = set()
        for item in _resolve_unions(problems, raw.data):
            if isinstance(item, tuple):
                key, text = item
                kind = ""
            else:
                key, text, kind = item.key, _message(item, raw.data), item.err["type"]
            if (key, text) in seen:
                continue
            seen.add((key, text))
            loc = raw.sources.locate_key(key) if kind == "extra_forbidden" else \
                raw.sources.locate(key)
            errors.append(SpecError(text, location=loc, path=format_path(key)))
        errors.sort(key=lambda e: _order(e, raw))
        raise SpecErrors(errors) from None


def _order(err: SpecError, raw: RawSpec) -> tuple[int, str, int, int]:
    """File order: the spec itself, then its bases, then ``--set`` overrides; then line, column."""
    loc = err.location
    if loc is None:
        return (3, "", 0, 0)
    rank = 0 if loc.file == raw.sources.file else 2 if loc.file.startswith("--set ") else 1
    return (rank, loc.file, loc.line, loc.column)
