"""Stage 5 — emit: the lowered network → readable PyTorch source.

Every decision is made here and in the block kinds (:mod:`specc.plan`); the three jinja2
templates (header, backbone, model) only lay out the values they are given, and the building
blocks are copied from the plain modules in ``specc/modules/``. Only the blocks the model uses are
written. The output is deterministic: it depends on the network alone (no dict-order or hash-seed
accident, no timestamp).
"""

from __future__ import annotations

import textwrap
from importlib import resources
from typing import Any

import jinja2

from specc import __version__
from specc.lower_backbone import TimmEncoder
from specc.modules import SHARED
from specc.plan import BLOCKS, STEM, Line, Network, Unit, shape_text

#: Longest line of generated code (the project's own line length).
WIDTH = 100


def layout(line: Line | str, indent: int, suffix: str = "") -> str:
    """One generated line at ``indent`` spaces, its comment trailing, within :data:`WIDTH`.

    When it does not fit, the comment moves to a line of its own above the code, and a call
    that still does not fit breaks after its opening parenthesis, its arguments filled onto
    continuation lines four spaces deeper.
    """
    line = Line(line) if isinstance(line, str) else line
    pad = " " * indent
    code = line.code + suffix
    whole = pad + code + (f"  # {line.comment}" if line.comment else "")
    if len(whole) <= WIDTH:
        return whole
    above = [f"{pad}# {line.comment}"] if line.comment else []
    return "\n".join(above + _wrap_call(code, pad))


def _wrap_call(code: str, pad: str) -> list[str]:
    """``code`` on lines within :data:`WIDTH`, broken between the arguments of its first call."""
    if len(pad + code) <= WIDTH or "(" not in code:
        return [pad + code]
    start = code.index("(")
    args, end = _split_arguments(code, start)
    lines, current = [pad + code[:start + 1]], ""
    inner = pad + "    "
    for i, arg in enumerate(args):
        piece = arg + ("," if i < len(args) - 1 else code[end:])
        candidate = f"{current} {piece}" if current else piece
        if current and len(inner + candidate) > WIDTH:
            lines.append(inner + current)
            candidate = piece
        current = candidate
    lines.append(inner + current)
    return lines


def _split_arguments(code: str, start: int) -> tuple[list[str], int]:
    """The top-level arguments of the call whose ``(`` is at ``start``, and the index of its
    closing ``)``; brackets and string literals nest."""
    depth, quote, args, begin = 0, "", [], start + 1
    for i in range(start, len(code)):
        ch = code[i]
        if quote:
            quote = "" if ch == quote and code[i - 1] != "\\" else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append(code[begin:i].strip())
                return [a for a in args if a], i
        elif ch == "," and depth == 1:
            args.append(code[begin:i].strip())
            begin = i + 1
    raise ValueError(f"unbalanced call in generated code: {code!r}")


def prose(text: str, indent: int = 0) -> str:
    """Each line of ``text`` filled to :data:`WIDTH` (a docstring's sentences and lists)."""
    return "\n".join(textwrap.fill(part, WIDTH, subsequent_indent=" " * indent,
                                   break_long_words=False, break_on_hyphens=False) or part
                     for part in text.split("\n"))


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("specc", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["layout"] = layout
_ENV.filters["prose"] = prose

#: The line of a building-block module after which its text is copied into model.py.
EMITTED = "# ---- EMITTED: everything below goes into model.py verbatim ----"


def class_name(name: str) -> str:
    """``deeplabv3plus_xception`` → ``Deeplabv3plusXception``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def module_source(name: str) -> str:
    """The part of ``specc/modules/<name>.py`` that generated code contains."""
    text = resources.files("specc.modules").joinpath(f"{name}.py").read_text(encoding="utf-8")
    _imports, marker, body = text.partition(EMITTED)
    if not marker:
        raise ValueError(f"specc/modules/{name}.py has no {EMITTED!r} line")
    return body


def used_modules(net: Network) -> list[str]:
    """The building-block modules the network needs: shared layers first, then each kind's own
    module in the order the kinds are registered."""
    blocks = list(net.blocks())
    shared = {name for b in blocks for name in b.shared()}
    own = {b.code for b in blocks if b.code is not None}
    kinds = [k.code for k in BLOCKS.values() if k.code is not None and k.code in own]
    return [name for name in SHARED if name in shared] + list(dict.fromkeys(kinds))


def _backbone(net: Network) -> dict[str, Any]:
    """The values of the backbone template: stem layers, stages, and forward lines with taps."""
    taps: dict[str, list[tuple[str, str | None]]] = {}
    for port, tap in net.taps.items():
        taps.setdefault(tap.unit, []).append((port, tap.inner))
    stem = net.stem
    forward = [Line("x = self.stem(x)", shape_text(stem.out.channels, stem.out.reduction))]
    forward += [Line(f'features["{port}"] = x') for port, _ in taps.get(STEM, [])]

    stages: list[dict[str, Any]] = []
    for stage in net.stages:
        members = stage.units
        keys = sorted({u.spec_key for u in members})
        spec_key = ", ".join(keys)
        if spec_key in ("backbone.preset", "backbone.cascade"):
            spec_key = f"{spec_key} → {stage.name}"
        # A stage runs as one nn.Sequential call unless a tap needs a unit's (inner) output.
        unroll = any(inner is not None or i < len(members) - 1
                     for i, u in enumerate(members) for _port, inner in taps.get(u.path, []))
        units = []
        for i, u in enumerate(members):
            unit_taps = taps.get(u.path, [])
            units.append(Line(u.constructor(_tap_index(u, unit_taps)),
                              f"{u.name}: {_shape(u)}"))
            if unroll:
                forward += _unrolled(stage.name, i, u, unit_taps)
        if not unroll:
            last = members[-1]
            forward.append(Line(f"x = self.{stage.name}(x)", _shape(last)))
            forward += [Line(f'features["{port}"] = x') for port, _ in taps.get(last.path, [])]
        stages.append(dict(attr=stage.name, spec_key=spec_key, units=units))
    return dict(stem=dict(spec_key=stem.spec_key, layers=stem.layers()), stages=stages,
                forward=forward, description=net.backbone_description)


def _timm_backbone(net: Network, encoder: TimmEncoder) -> dict[str, Any]:
    """The values of the timm backbone template: the encoder and which stage each tap reads."""
    index = {u.path: i for i, u in enumerate(net.units())}
    forward = [Line(f'features["{port}"] = stages[{index[tap.unit]}]', tap.unit)
               for port, tap in net.taps.items()]
    return dict(description=net.backbone_description, model=encoder.model,
                spec_key=encoder.spec_key, constructor=Line(f"self.encoder = {encoder.constructor()}"),
                forward=forward, last=len(index) - 1)


def _shape(u: Unit) -> str:
    return shape_text(u.out.channels, u.out.reduction)


def _tap_index(u: Unit, unit_taps: list[tuple[str, str | None]]) -> int:
    """Which inner layer (numbered from 1) the unit's ``forward_tap`` returns; the last if none."""
    inners = {inner for _port, inner in unit_taps if inner is not None}
    return u.taps.index(inners.pop()) + 1 if inners else 3


def _unrolled(stage: str, i: int, u: Unit, unit_taps: list[tuple[str, str | None]]) -> list[Line]:
    inner = any(inner is not None for _p, inner in unit_taps)
    call = f"x, tapped = self.{stage}[{i}].forward_tap(x)" if inner else f"x = self.{stage}[{i}](x)"
    lines = [Line(call, _shape(u))]
    for port, which in unit_taps:
        lines.append(Line(f'features["{port}"] = {"tapped" if which is not None else "x"}'))
    return lines


def _model(net: Network) -> dict[str, Any]:
    """The values of the model template: the heads' ``__init__`` and ``forward`` lines."""
    init = [Line("self.backbone = Backbone()", "backbone")]
    forward = [Line("features = self.backbone(x)")]
    if not any(h.reads_backbone for h in net.heads):
        forward.append(Line('y = features["out"]'))
    for head in net.heads:
        init += head.init()
        forward += head.forward()
    return dict(init=init, forward=forward)


def emit(net: Network, *, sha256: str) -> str:
    """The PyTorch source of ``net`` (a module with a ``build()`` function)."""
    aux = ', and "aux", the auxiliary head\'s logits' if "aux" in net.outputs else ""
    docstring = prose(
        f"{net.title}\n\n{net.summary}\n\n"
        f"Input: (N, 3, H, W) images normalized with mean {list(net.input.mean)} and std "
        f"{list(net.input.std)}; shapes are derived for H×W = {net.input.size[0]}×"
        f"{net.input.size[1]}.\n"
        f'Output: a dict with "out", (N, {net.num_classes}, H, W) logits at the input '
        f"resolution{aux}.")
    header = _ENV.get_template("header.py.j2").render(
        version=__version__, name=net.name, sha256=sha256, docstring=docstring)
    parts = [header, *(module_source(name) for name in used_modules(net))]
    if isinstance(net.stem, TimmEncoder):
        parts.append(_ENV.get_template("backbone_timm.py.j2").render(
            **_timm_backbone(net, net.stem)))
    else:
        parts.append(_ENV.get_template("backbone.py.j2").render(**_backbone(net)))
    parts.append(_ENV.get_template("model.py.j2").render(
        class_name=class_name(net.name), description=net.title, num_classes=net.num_classes,
        **_model(net)))
    return "".join(parts)
