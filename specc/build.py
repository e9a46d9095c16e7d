"""``specc build``: compile a spec into its output folder (model.py, manifest.json, model.pt).

``model.pt`` is written by :func:`specc.artifacts.write_torchscript`, with the resolved spec and
its hashes inside, like the ``model.pt`` of a training run.
"""

from __future__ import annotations

from pathlib import Path

from specc.api import build, load_spec, manifest_json
from specc.artifacts import TORCHSCRIPT, load_weights, read_weights, write_torchscript
from specc.fsutil import atomic_write_text


def build_to(path: Path, out_dir: Path, *, overrides: list[str] | tuple[str, ...] = (),
             weights: Path | None = None, check: bool = False) -> list[str]:
    """Build one spec into ``out_dir/<name>/``.

    ``weights`` is any source :func:`specc.artifacts.read_weights` opens, holding every tensor.
    Returns the files written, or with ``check=True`` the files that differ from what would be
    written (nothing is written then; model.pt is not compared, it is not kept in git).

    Raises:
        SpecError / WeightsError: an invalid spec, or weights that do not fit.
    """
    doc = load_spec(path, overrides)
    built = build(doc)
    folder = out_dir / doc.spec.name
    files = {"model.py": built.source, "manifest.json": manifest_json(built.manifest)}
    if check:
        differs = []
        for name, text in files.items():
            target = folder / name
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                differs.append(str(target))
        return differs
    module = built.module
    if weights is not None:
        load_weights(module, read_weights(weights))  # refuses a backbone-only file
    written = []
    for name, text in files.items():
        atomic_write_text(folder / name, text)
        written.append(str(folder / name))
    write_torchscript(module, folder / TORCHSCRIPT, doc)  # the spec inside: predict normalizes
    written.append(str(folder / TORCHSCRIPT))
    return written
