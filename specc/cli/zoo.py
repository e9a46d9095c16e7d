"""``specc zoo``: the table of shipped specs (rendered by :mod:`specc.cli.render`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from specc.cli import render
from specc.errors import SpeccError
from specc.zoo import zoo as zoo_entries


def zoo(
    root: Annotated[Path, typer.Option("--root", help="The specs folder.")] = Path("specs"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The zoo specs (specs/zoo) and the papers' specs: source library, parameters,
    multiply-adds at 513×513, and the libraries whose weights import into them."""
    if not root.is_dir():
        raise SpeccError(f"--root: expected a folder of specs, found no folder {root}")
    entries = zoo_entries(root)
    if json_:
        print(json.dumps([e.as_json() for e in entries], indent=2))
        return
    render.print_zoo(entries)
