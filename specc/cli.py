"""The ``specc`` command line (typer). Exit codes: 0 ok, 1 differs (``--check``, ``diff``), 2 error.

Every problem with the user's input is a :class:`~specc.errors.SpeccError`; :func:`main` prints
its message (file:line:col, key, expected, found) and exits 2, never with a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from specc.errors import SpeccError, SpecError, SpecErrors

app = typer.Typer(
    name="specc",
    help="Compile DeepLabv3 / DeepLabv3+ model specs to PyTorch and TorchScript; train and "
         "compare them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, files) gets tables wide enough not to truncate column names.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a spec value: key.path=value (YAML), e.g. backbone.output_stride=8.")]


def _specs_dir() -> Path:
    return Path("specs")


def _all_specs() -> list[Path]:
    root = _specs_dir()
    if not root.is_dir():
        raise SpeccError("--all: no specs/ folder in the current directory")
    return sorted(root.rglob("*.yaml"))


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files.")],
    set_: SetOpt = None,
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
) -> None:
    """Check specs: errors (exit 2) and warnings for legal but suspicious choices."""
    from specc.api import compile_spec, load_spec

    warned = False
    for path in specs:
        comp = compile_spec(load_spec(path, set_ or []))
        for note in comp.warnings:
            err.print(f"{note}", markup=False)
        warned |= bool(comp.warnings)
        out.print(f"ok: {path} — {comp.network.title}", markup=False)
    if strict and warned:
        raise SpeccError("warnings found and --strict given")


@app.command()
def build(
    specs: Annotated[list[Path] | None, typer.Argument(help="Spec files.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every spec under specs/.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("generated"),
    set_: SetOpt = None,
    weights: Annotated[Path | None, typer.Option(
        help="A .safetensors (or .pt) state dict to put in model.pt.")] = None,
    check: Annotated[bool, typer.Option(
        help="Write nothing; exit 1 if the output folder differs from what the specs compile "
             "to.")] = False,
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
) -> None:
    """Compile specs to OUT/<name>/model.py, manifest.json and model.pt (TorchScript)."""
    from specc.api import compile_spec, load_spec
    from specc.build import build_to

    paths = list(specs or [])
    if all_:
        paths += _all_specs()
    if not paths:
        raise SpeccError("nothing to build: give spec files or --all")
    differs = []
    for path in paths:
        comp = compile_spec(load_spec(path, set_ or []))
        for note in comp.warnings:
            err.print(note, markup=False)
        if strict and comp.warnings:
            raise SpeccError(f"{path}: warnings found and --strict given")
        result = build_to(comp, out_dir, weights=weights, check=check)
        if check:
            if result:
                differs.extend(result)
                out.print(f"differs: {path} → {', '.join(result)}", markup=False)
            else:
                out.print(f"in sync: {path}", markup=False)
        else:
            out.print(f"built: {path} → {', '.join(result)}", markup=False)
    if differs:
        raise typer.Exit(1)


@app.command()
def info(
    spec: Annotated[Path, typer.Argument(help="Spec file.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    size: Annotated[tuple[int, int] | None, typer.Option(
        help="Input size H W for feature sizes and multiply-adds (default: the crop).")] = None,
    set_: SetOpt = None,
) -> None:
    """The schedule table, ASPP rates, parameters, multiply-adds and receptive field."""
    from specc.advice import atrous_branches, stage_receptive_fields
    from specc.analysis import info as info_of
    from specc.api import compile_spec, load_spec

    overrides = list(set_ or [])
    if size is not None:
        if min(size) <= 0:
            raise SpeccError(f"--size: expected positive H W, found {size[0]} {size[1]}")
        overrides.append(f"input.crop=[{size[0]}, {size[1]}]")
    comp = compile_spec(load_spec(spec, overrides))
    data = info_of(comp)
    data["atrous_branches"] = atrous_branches(comp)
    data["stages"] = stage_receptive_fields(comp)
    if json_:
        print(json.dumps(data, indent=2))
        return
    _print_info(data)


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _print_info(data: dict) -> None:
    out.print(f"[bold]{data['name']}[/bold] — {data['title']}")
    table = Table(title="Schedule", show_lines=False)
    for col in ("stage", "unit", "type", "stride", "rates", "OS", "feature", "channels", "RF"):
        table.add_column(col, justify="right" if col not in ("stage", "unit", "type") else "left")
    for r in data["schedule"]:
        stride = str(r["stride"]) if r["stride"] == r["nominal_stride"] else \
            f"{r['stride']} (was {r['nominal_stride']})"
        table.add_row(r["stage"], r["unit"], r["type"], stride,
                      ",".join(map(str, r["rates"])), str(r["output_stride"]),
                      "×".join(map(str, r["feature_size"])), str(r["channels"]),
                      str(r["receptive_field"]))
    out.print(table)
    for s in data.get("stages", []):
        out.print(f"  {s['stage']}: OS {s['output_stride']}, "
                  f"{s['feature_size'][0]}×{s['feature_size'][1]}, rates {s['rates']}, "
                  f"RF {s['receptive_field']} px")
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
    out.print(costs)
    out.print(f"receptive field of the backbone output: {data['receptive_field']} px")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec language (for editor completion)."""
    from specc.spec import json_schema

    print(json.dumps(json_schema(), indent=2))


def _register_commands() -> None:
    """Commands that live beside the compiler: import-weights, diff, graph and the runtime's."""
    from runtime import commands as rt
    from specc.diff import diff_command
    from specc.graphviz import graph_command
    from specc.importers import import_weights_command

    app.command("import-weights")(import_weights_command)
    app.command("diff")(diff_command)
    app.command("graph")(graph_command)
    for name, fn in (("train", rt.train), ("eval", rt.eval_), ("predict", rt.predict),
                     ("plot", rt.plot), ("samples", rt.samples)):
        app.command(name)(fn)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors print one message and exit 2."""
    try:
        app(args=argv, prog_name="specc")
    except (SpecError, SpecErrors) as exc:
        err.print(str(exc), markup=False)
        sys.exit(2)
    except SpeccError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
