"""What the commands print: rich tables (``info``, ``diff``, ``eval``), markdown, progress bars.

The compiler and the runtime return plain data; this module lays it out for a terminal or a log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from runtime.report import Progress
from specc.analysis import group_of
from specc.errors import SpeccError, SpecError, SpecErrors

# soft_wrap: a long line (a path, a message) is never broken; tables go through print_table.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
#: Widest a table is laid out when the output is not a terminal (a sanity bound, not a layout).
PIPE_WIDTH_LIMIT = 10_000


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` fitted to the window on a terminal, and at its natural width otherwise.

    Piped into a file, a CI log or ``| tee``, rich would assume 80 columns and squeeze and wrap
    every cell; there the table gets the width its content needs (title and caption included),
    so each row stays one line a reader (or ``grep``) can use.
    """
    if console.is_terminal:
        console.print(table)
        return
    options = console.options.update_width(PIPE_WIDTH_LIMIT)
    width = Measurement.get(console, options, table).maximum
    for text in (table.title, table.caption):
        if isinstance(text, str):
            width = max(width, Text.from_markup(text).cell_len)
    table.min_width = width
    wide = Console(file=console.file, width=width, highlight=False, soft_wrap=True,
                   no_color=console.no_color, color_system=None)
    wide.print(table)


def error_text(exc: SpeccError) -> str:
    """How an error is shown: a spec error as it is (it starts with file:line:col), any other
    with ``error:`` before it."""
    return str(exc) if isinstance(exc, SpecError | SpecErrors) else f"error: {exc}"


def os_error_text(exc: OSError) -> str:
    """``PATH: reason`` for an OS error (the target of a failed rename, else its file)."""
    path = exc.filename2 or exc.filename
    reason = exc.strerror or str(exc)
    return f"{path}: {reason}" if path else reason


# ------------------------------------------------------------------------------------------------
# specc info


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def print_info(data: dict) -> None:
    """The figures of ``specc info`` (:func:`specc.analysis.info` and the advice) as tables."""
    out.print(f"[bold]{data['name']}[/bold] — {data['title']}")
    table = Table(title="Schedule", show_lines=False)
    for col in ("stage", "unit", "type", "stride", "rates", "reduction", "feature", "channels",
                "RF"):
        table.add_column(col, justify="right" if col not in ("stage", "unit", "type") else "left")
    for r in data["schedule"]:
        stride = str(r["stride"]) if r["stride"] == r["nominal_stride"] else \
            f"{r['stride']} (was {r['nominal_stride']})"
        table.add_row(r["stage"], r["unit"], r["type"], stride,
                      ",".join(map(str, r["rates"])), str(r["reduction"]),
                      "×".join(map(str, r["feature_size"])), str(r["channels"]),
                      "?" if r["receptive_field"] is None else str(r["receptive_field"]))
    print_table(out, table)
    for s in data.get("stages", []):
        out.print(f"  {s['stage']}: 1/{s['reduction']}, "
                  f"{s['feature_size'][0]}×{s['feature_size'][1]}, rates {s['rates']}, "
                  + ("RF unknown" if s["receptive_field"] is None
                     else f"RF {s['receptive_field']} px"))
    out.print(f"input {data['input_size'][0]}×{data['input_size'][1]}, output stride "
              f"{data['output_stride']}, multi-grid {data['multi_grid']}, strides placed "
              f"'{data['stride_placement']}'")
    out.print(f"ASPP rates (effective): {tuple(data['aspp_rates'])}")
    for b in data.get("atrous_branches", []):
        out.print(f"  rate {b['rate']}: feature {b['feature_size'][0]}×{b['feature_size'][1]}, "
                  f"{b['valid_taps']:.2f} of 9 taps on valid positions")
    costs = Table(title="Cost")
    for col in ("part", "params", "multiply-adds"):
        costs.add_column(col, justify="left" if col == "part" else "right")
    for part, c in data["costs"].items():
        costs.add_row(part, _fmt_count(c["params"]), _fmt_count(c["macs"]))
    costs.add_row("[bold]total[/bold]", _fmt_count(data["params"]), _fmt_count(data["macs"]))
    print_table(out, costs)
    if data.get("opaque"):
        out.print("receptive field of the backbone output: unknown")
        out.print("note: specc sees " + ", ".join(data["opaque"]) + " as whole stages built by "
                  "timm: their parameters are counted, their multiply-adds and receptive fields "
                  "are not (the multiply-adds total covers the heads only)")
    else:
        out.print(f"receptive field of the backbone output: {data['receptive_field']} px")


# ------------------------------------------------------------------------------------------------
# specc diff: sections of (columns, rows), as rich tables or markdown

#: Items listed per category in tables before "… N more" (JSON always has every item).
LIST_LIMIT = 20


@dataclass
class Section:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def fmt(value: Any, attr: str = "") -> str:
    """A value as a reader wants it: sizes as 33×33, lists as 6, 12, 18, mappings as YAML flow."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and attr in ("feature_size", "shape", "input_size", "crop",
                                            "input.size") and all(isinstance(v, int) for v in value):
        return "×".join(map(str, value))
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}"


def _ratio(r: float | None) -> str:
    return "—" if r is None else f"×{r:.3f}"


def _limited(items: list[str], limit: int = LIST_LIMIT) -> list[str]:
    return items if len(items) <= limit else [*items[:limit], f"… {len(items) - limit} more"]


def _unit_runs(units: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Consecutive units of one stage with the same changes, as ``block3 unit1–unit22``."""
    runs: list[list[dict[str, Any]]] = []
    for u in units:
        last = runs[-1][-1] if runs else None
        if last is not None and last["stage"] == u["stage"] and last["changes"] == u["changes"]:
            runs[-1].append(u)
        else:
            runs.append([u])
    out = []
    for run in runs:
        first, end = run[0], run[-1]
        where = f"{first['stage']} {first['unit']}" + (f"–{end['unit']}" if len(run) > 1 else "")
        out.append((where, first["changes"]))
    return out


_LABELS = {"input_size": "input size", "output_stride": "output stride",
           "aspp_rates": "ASPP rates (effective)", "receptive_field": "receptive field (px)",
           "feature_size": "feature at input size", "nominal_stride": "nominal stride",
           "rates": "dilation rates"}


def sections(result: dict[str, Any]) -> list[Section]:
    """The report as sections holding only what differs."""
    out = []
    if result["spec_changes"]:
        out.append(Section("spec", ("key", "A", "B"),
                           [(c["path"], fmt(c["a"], c["path"]), fmt(c["b"], c["path"]))
                            for c in result["spec_changes"]]))
    sch = result["schedule"]
    if sch:
        rows = []
        for key in ("input_size", "output_stride", "aspp_rates", "receptive_field"):
            if key in sch:
                rows.append(("network", _LABELS[key], fmt(sch[key]["a"], key),
                             fmt(sch[key]["b"], key)))
        for s in sch.get("stages", []):
            for attr, ab in s["changes"].items():
                rows.append((f"{s['stage']} (stage)", _LABELS.get(attr, attr), fmt(ab["a"], attr),
                             fmt(ab["b"], attr)))
        for where, changes in _unit_runs(sch.get("units", [])):
            for attr, ab in changes.items():
                rows.append((where, _LABELS.get(attr, attr), fmt(ab["a"], attr),
                             fmt(ab["b"], attr)))
        for key, label in (("stages_removed", "stages only in A"), ("stages_added", "stages only in B"),
                           ("units_removed", "units only in A"), ("units_added", "units only in B")):
            if key in sch:
                rows.append((label, "", ", ".join(_limited(sch[key])), ""))
        out.append(Section("schedule", ("where", "what", "A", "B"), rows))
    if result["cost"] or result["params"]["diff"] or result["macs"]["diff"]:
        rows = []
        for c in [*result["cost"], {"group": "total", "params": result["params"],
                                    "macs": result["macs"]}]:
            for measure, label in (("params", "parameters"), ("macs", "multiply-adds")):
                m = c[measure]
                if m["diff"] or c["group"] == "total":
                    rows.append((c["group"], label, f"{m['a']:,}", f"{m['b']:,}",
                                 _signed(m["diff"]), _ratio(m["ratio"])))
        out.append(Section("cost", ("part", "measure", "A", "B", "B − A", "B / A"), rows))
    if result["graph"] is not None and any(result["graph"].values()):
        out.append(_graph_section(result["graph"]))
    if result["weights_compatible"] is not None and not result["identical"]:
        out.append(_weights_section(result))
    return out


def _describe(n: dict[str, Any]) -> str:
    op = n.get("op", "")
    bits = [op + (f" {n['kernel']}×{n['kernel']}" if isinstance(n.get("kernel"), int) else "")]
    if n.get("stride", 1) != 1:
        bits.append(f"stride {n['stride']}")
    if n.get("dilation", 1) != 1:
        bits.append(f"dilation {n['dilation']}")
    if op in ("conv", "sepconv"):
        bits.append(f"{n['in_channels']}→{n['out_channels']}")
    if "shape" in n:
        bits.append(fmt(n["shape"], "shape"))
    if n.get("params"):
        bits.append(f"{n['params']:,} params")
    return ", ".join(bits)


#: Node attributes that differ node by node when a whole part changes resolution.
_VARYING = ("params", "macs", "receptive_field", "shape", "kernel")


def _part(node: str) -> str:
    return node if node in ("input", "output") else group_of(node)


def _graph_section(gr: dict[str, Any]) -> Section:
    rows: list[tuple[str, ...]] = []
    for kind, label in (("added", "only in B"), ("removed", "only in A")):
        by_group: dict[str, list[dict[str, Any]]] = {}
        for n in gr[kind]:
            by_group.setdefault(_part(n["node"]), []).append(n)
        for group, nodes in by_group.items():
            if len(nodes) > 6:
                params = sum(n.get("params", 0) for n in nodes)
                rows.append((label, f"{group} ({len(nodes)} nodes)", f"{params:,} params"))
            else:
                rows.extend((label, n["node"], _describe(n)) for n in nodes)
    # Changed nodes, grouped by part and by what changed (sizes and costs may vary inside a group).
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in gr["changed"]:
        fixed = {k: v for k, v in c["changes"].items() if k not in _VARYING}
        key = json.dumps([_part(c["node"]), list(c["changes"]), fixed])
        groups.setdefault((_part(c["node"]), key), []).append(c)
    for (group, _key), nodes in groups.items():
        where = nodes[0]["node"] if len(nodes) == 1 else f"{group} ({len(nodes)} nodes)"
        parts = []
        for attr in nodes[0]["changes"]:
            values = {json.dumps(n["changes"][attr]) for n in nodes}
            if len(values) == 1:
                ab = nodes[0]["changes"][attr]
                parts.append(f"{attr} {fmt(ab['a'], attr)} → {fmt(ab['b'], attr)}")
            elif attr in ("params", "macs"):
                a = sum(n["changes"][attr]["a"] or 0 for n in nodes)
                b = sum(n["changes"][attr]["b"] or 0 for n in nodes)
                parts.append(f"{attr} {a:,} → {b:,} in all")
            else:
                parts.append(f"{attr} (varies)")
        rows.append(("changed", where, "; ".join(parts)))
    for kind, label in (("edges_added", "edges only in B"), ("edges_removed", "edges only in A")):
        if gr[kind]:
            n = len(gr[kind])
            rows.append((label, f"{n} edge{'s' if n > 1 else ''}",
                         ", ".join(_limited([f"{u} → {v}" for u, v in gr[kind]], 8))))
    return Section("graph", ("change", "node", "details"), rows)


def compact_names(names: list[str]) -> list[str]:
    """Parameter names sharing a module as one item: ``aux.conv.bn.{bias, weight}``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    out = []
    for parent, leaves in groups.items():
        if not parent:
            out.extend(leaves)
        elif len(leaves) == 1:
            out.append(f"{parent}.{leaves[0]}")
        else:
            out.append(f"{parent}.{{{', '.join(leaves)}}}")
    return out


def _weights_section(result: dict[str, Any]) -> Section:
    m = result["weight_mismatches"]
    rows: list[tuple[str, ...]] = []
    if result["weights_compatible"]:
        n = result.get("weights_count", {}).get("a")
        same = f"same {n} parameter and buffer names and shapes" if n else "same architecture"
        return Section("weights", ("check", "result"),
                       [("a checkpoint of A loads into B", f"yes ({same})")])
    rows.append(("a checkpoint of A loads into B", "no"))
    for key, label in (("missing", "missing (B has, A lacks)"),
                       ("unexpected", "unexpected (A has, B lacks)")):
        if m[key]:
            rows.append((f"{len(m[key])} {label}", ", ".join(_limited(compact_names(m[key])))))
    if m["reshaped"]:
        items = [f"{k} {fmt(a, 'shape')} → {fmt(b, 'shape')}" for k, a, b in m["reshaped"]]
        rows.append((f"{len(items)} reshaped (A → B)", ", ".join(_limited(items))))
    return Section("weights", ("check", "result"), rows)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def diff_markdown(result: dict[str, Any]) -> str:
    """The report as GitHub markdown, for a pull request."""
    lines = [f"## specc diff: `{result['a']}` → `{result['b']}`", ""]
    if result["identical"]:
        lines += ["Identical: same spec, schedule, cost, graph and weight shapes.", ""]
    for s in sections(result):
        lines += [f"### {s.title}", "", "| " + " | ".join(s.columns) + " |",
                  "|" + "|".join("---" for _ in s.columns) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
        lines.append("")
    lines += [f"> {note}" for note in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def print_diff(result: dict[str, Any], console: Console | None = None) -> None:
    """The report as rich tables on ``console`` (default: standard output; see print_table)."""
    if console is None:
        console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]A[/bold] {result['a']} — {result['title']['a']}", highlight=False)
    console.print(f"[bold]B[/bold] {result['b']} — {result['title']['b']}", highlight=False)
    if result["identical"]:
        console.print("identical: same spec, schedule, cost, graph and weight shapes")
    for s in sections(result):
        table = Table(title=s.title, title_justify="left", show_lines=False)
        for col in s.columns:
            numeric = col in ("B − A", "B / A") or (s.title == "cost" and col in ("A", "B"))
            table.add_column(col, justify="right" if numeric else "left", overflow="fold")
        for row in s.rows:
            table.add_row(*row)
        print_table(console, table)
    for note in result["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------
# specc train / eval: progress bars and the score table


class _Bar:
    def __init__(self, progress: RichProgress, task: Any) -> None:
        self._progress, self._task = progress, task

    def update(self, done: int, **stats: float) -> None:
        self._progress.update(self._task, completed=done, **stats)


class TrainStats(ProgressColumn):
    """``loss 0.6931  lr 7.00e-03  1.25 it/s``; the loss reads ``—`` until a step has given one
    (it starts as NaN, which would read like a diverged run)."""

    def render(self, task: Any) -> Text:
        fields = task.fields
        loss = "—" if math.isnan(fields["loss"]) else f"{fields['loss']:.4f}"
        return Text(f"loss {loss}  lr {fields['lr']:.2e}  {fields['speed']:.2f} it/s")


class RichReporter:
    """A :class:`runtime.report.Reporter` drawing rich progress bars on ``console``: training
    with its loss, learning rate and speed; evaluation as a bar that disappears when done."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def message(self, text: str) -> None:
        self.console.print(text, markup=False)

    @contextmanager
    def progress(self, task: str, total: int | None, done: int = 0,
                 **stats: float) -> Iterator[Progress]:
        if task == "train":
            bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TrainStats(),
                TimeRemainingColumn(), console=self.console)
        else:
            bar = RichProgress(TextColumn(task), BarColumn(), MofNCompleteColumn(),
                               TimeRemainingColumn(), console=self.console, transient=True)
        with bar:
            yield _Bar(bar, bar.add_task(task, total=total, completed=done, **stats))


def _tile_caption(tile: dict[str, Any] | None) -> str:
    """``, tiles 65×65 every 43×43`` for a tiled evaluation; empty otherwise."""
    if not tile:
        return ""
    (th, tw), (sh, sw) = tile["size"], tile["stride"]
    return f", tiles {th}×{tw} every {sh}×{sw}"


#: Why a class may have no labelled pixel in a data set of the user's.
IGNORE_HINT = "255 in a mask is the ignore label, not a class"


def unlabelled_classes(ids: list[int], names: Sequence[str] | None, total: int,
                       where: str) -> str:
    """``2 of 5 classes have no labelled pixel {where}: 1 (sky), 4 (road)``, at most eight
    named."""
    listed = ", ".join(f"{c} ({names[c]})" if names else str(c) for c in ids[:8])
    more = f" and {len(ids) - 8} more" if len(ids) > 8 else ""
    return f"{len(ids)} of {total} classes have no labelled pixel {where}: {listed}{more}"


def unlabelled_note(report: dict[str, Any], split: str) -> str | None:
    """A line naming the classes that no ground-truth pixel of ``split`` holds, which the mIoU
    leaves out; None when every class is labelled somewhere (or nothing is)."""
    ids = report.get("unlabelled_classes") or []
    if not ids or report.get("miou") is None:
        return None
    listed = unlabelled_classes(ids, report.get("classes"), len(report["per_class_iou"]),
                                f"in the {split} split")
    return f"note: {listed}; the mIoU averages the others ({IGNORE_HINT})"


def print_eval(report: dict[str, Any], name: str, scales: tuple[float, ...], flip: bool) -> None:
    """The report of ``specc eval``: per-class IoU, mIoU and pixel accuracy as a table."""
    table = Table(title=f"{name}: mIoU {100 * report['miou']:.2f} %", caption=(
        f"{report['data']} {report['split']}, {report['images']} images, output stride "
        f"{report['output_stride']}, scales {','.join(str(s) for s in scales)}"
        f"{', flip' if flip else ''}{_tile_caption(report.get('tile'))}"))
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for cls, iou in zip(report["classes"], report["per_class_iou"], strict=True):
        table.add_row(cls, "—" if iou is None else f"{100 * iou:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{100 * report['miou']:.2f}")
    table.add_row("pixel accuracy", f"{100 * report['pixel_accuracy']:.2f}")
    console = Console(highlight=False, soft_wrap=True)
    print_table(console, table)
    console.print(f"weights: {report['checkpoint']}   (— : class absent from labels and "
                  "predictions, left out of the mean)", markup=False)
    note = unlabelled_note(report, report["split"])
    if note:
        console.print(note, markup=False)


# ------------------------------------------------------------------------------------------------
# specc bench


def print_bench(result: dict[str, Any]) -> None:
    """The ``specc bench`` table: one row per candidate, the machine in the title."""
    cpu = result["cpu"]
    features = " ".join(cpu["features"]) or "no AVX2"
    table = Table(title=f"{result['spec']} at {result['batch']}×3×{result['size'][0]}×"
                        f"{result['size'][1]}, {result['threads']} threads, "
                        f"{result['repeats']} interleaved repeats — {cpu['model']} "
                        f"({features}), torch {result['torch']}")
    for column in ("", "precision", "median ms", "min ms", "max ms", "images/s", "GMAC/s",
                   "speed-up", "vs torchvision", "argmax agree", "peak RSS +MiB"):
        table.add_column(column, justify="left" if column in ("", "precision") else "right")
    for row in result["results"]:
        versus = row["speedup_vs_torchvision"]
        table.add_row(row["name"], row["precision"], f"{row['median_ms']:.1f}",
                      f"{row['min_ms']:.1f}", f"{row['max_ms']:.1f}",
                      f"{row['images_per_s']:.2f}", f"{row['gmacs_per_s']:.1f}",
                      f"{row['speedup']:.2f}×", "—" if versus is None else f"{versus:.2f}×",
                      f"{row['argmax_agreement'] * 100:.2f} %",
                      f"{row['peak_rss_growth_mib']:.0f}")
    print_table(out, table)


# ------------------------------------------------------------------------------------------------
# specc zoo


def print_zoo(entries: list[Any]) -> None:
    """The ``specc zoo`` table: one row per spec (:class:`specc.zoo.ZooEntry`)."""
    table = Table(title="Model zoo (multiply-adds at 513×513)")
    for col in ("spec", "source", "model", "params", "multiply-adds", "weights (--from)"):
        table.add_column(col, justify="right" if col in ("params", "multiply-adds") else "left")
    for e in entries:
        weights = ", ".join(lib if kind == "model" else f"{lib} (backbone)"
                            for lib, kind in e.weights.items()) or "—"
        table.add_row(e.path, e.source, e.title, f"{e.params / 1e6:.1f} M",
                      f"{e.macs / 1e9:.1f} G", weights)
    print_table(out, table)
