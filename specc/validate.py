"""Stage 2 — validate: a loaded document → a :class:`~specc.spec.Spec`, or errors with positions.

pydantic reports each problem with a location inside the document; this module maps it back to
the file, line and column where the value (or its parent, for a missing key) was written, and
words it as "expected …, found …".
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from specc.errors import SpecError, SpecErrors
from specc.load import Key, RawSpec, format_path
from specc.spec import Spec

# pydantic adds the tag of a tagged union and the branch of an ordinary union to the location;
# those are not keys of the document.
_UNION_TAGS = {"basic", "bottleneck", "xception", "inverted_residual", "StemSpec",
               "function-after[_odd(), int]", "literal['conv7','deep']", "tuple[int, int]",
               "list[...]"}


def _document_key(loc: tuple[Any, ...], data: Any) -> Key:
    """Keep the parts of a pydantic location that index the document."""
    key: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            key.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in _UNION_TAGS:
            key.append(part)  # a missing or unknown key
            node = None
        # anything else is a union tag or branch name: skip it
    return tuple(key)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(err: dict[str, Any], data: Any, key: Key) -> str:
    kind = err["type"]
    found = err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = key[:-1]
        node: Any = data
        for part in parent:
            node = node[part] if isinstance(node, dict | list) else None
        allowed = ""
        return f"unknown key {key[-1]!r}{allowed}"
    text = err["msg"]
    if text.startswith("Value error, "):
        text = text[len("Value error, "):]
    elif text.startswith("Assertion failed, "):
        text = text[len("Assertion failed, "):]
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"expected type one of {ctx.get('expected_tags')}, found {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return "expected a 'type' key (basic, bottleneck, xception or inverted_residual)"
    if kind.startswith(("literal_error", "int_", "float_", "string_", "bool_", "greater",
                        "less", "too_", "tuple_", "list_", "dict_", "model_")):
        if text.startswith("Input should be "):
            text = "expected " + text[len("Input should be "):]
        text = text[0].lower() + text[1:]
        if not text.startswith("expected"):
            text = f"expected {text}"
        return f"{text}; found {_describe(found)}"
    return text


def validate(raw: RawSpec) -> Spec:
    """Check a loaded document against the spec language.

    Raises:
        SpecErrors: one :class:`SpecError` per problem, each placed at its key.
    """
    try:
        return Spec.model_validate(raw.data)
    except ValidationError as exc:
        errors: list[SpecError] = []
        seen: set[str] = set()
        for err in exc.errors(include_url=False):
            key = _document_key(err["loc"], raw.data)
            text = f"{format_path(key)}|{err['type']}"
            if text in seen:
                continue
            seen.add(text)
            loc = raw.sources.locate(key)
            errors.append(SpecError(_message(err, raw.data, key), location=loc,
                                    path=format_path(key)))
        errors.sort(key=lambda e: (e.location.line if e.location else 0,
                                   e.location.column if e.location else 0))
        raise SpecErrors(errors) from None
