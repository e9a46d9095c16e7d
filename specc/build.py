"""``specc build``: compile a spec into its output folder (model.py, manifest.json, model.pt)."""

from __future__ import annotations

from pathlib import Path

from specc.api import Compilation, manifest_json
from specc.fsutil import atomic_write_text


def build_to(comp: Compilation, out_dir: Path, *, weights: Path | None = None,
             check: bool = False) -> list[str]:
    """Build one compiled spec into ``out_dir/<name>/``.

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
        from specc.errors import WeightsError
        from specc.importers import contents
        from specc.weights import load_into, read_state_dict

        if contents(weights) == "backbone":
            raise WeightsError(
                f"{weights}: holds backbone weights only (import-weights --backbone-only); a "
                "built model needs every tensor. Start a training run from it instead "
                "(specc train SPEC --init FILE).")
        load_into(module, read_state_dict(weights), str(weights))
    module.eval()
    from specc.compile import save_script, script_module

    written = []
    for name, text in files.items():
        atomic_write_text(folder / name, text)
        written.append(str(folder / name))
    save_script(script_module(module), folder / "model.pt")
    written.append(str(folder / "model.pt"))
    return written
