"""``specc build``: compile a spec into its output folder (model.py, manifest.json, model.pt).

``model.pt`` is written by :func:`specc.artifacts.write_torchscript`, with the resolved spec and
its hashes inside, like the ``model.pt`` of a training run.
"""

from __future__ import annotations

from pathlib import Path

from specc.api import Compilation, manifest_json
from specc.artifacts import TORCHSCRIPT, load_weights, read_weights, write_torchscript
from specc.fsutil import atomic_write_text


def build_to(comp: Compilation, out_dir: Path, *, weights: Path | None = None,
             check: bool = False) -> list[str]:
    """Build one compiled spec into ``out_dir/<name>/``.

    ``weights`` is any source :func:`specc.artifacts.read_weights` opens, holding every tensor.
    Returns the files written, or with ``check=True`` the files that differ from what would be
    written (nothing is written then, and no model is instantiated; model.pt is not compared, it
    is not kept in git).

    Raises:
        WeightsError: weights that do not fit.
    """
    folder = out_dir / comp.spec.name
    files = {"model.py": comp.source, "manifest.json": manifest_json(comp.manifest)}
    if check:
        differs = []
        for name, text in files.items():
            target = folder / name
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                differs.append(str(target))
        return differs
    module = comp.module
    if weights is not None:
        load_weights(module, read_weights(weights))  # refuses a backbone-only file
    written = []
    for name, text in files.items():
        atomic_write_text(folder / name, text)
        written.append(str(folder / name))
    write_torchscript(module, folder / TORCHSCRIPT, comp.doc)  # the spec inside: predict normalizes
    written.append(str(folder / TORCHSCRIPT))
    return written
