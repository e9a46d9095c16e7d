"""Loading weights into a built model, with a full account of anything that does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from specc.errors import WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``torch.save``'d state dict (``.pt``/``.pth``).

    Raises:
        WeightsError: the file is missing or not a readable state dict.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise WeightsError(f"{p}: not a readable PyTorch state dict ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: expected a state dict (names → tensors), found "
                           f"{type(obj).__name__}")
    return obj


def mismatches(expected: dict[str, list[int]], given: dict[str, list[int]]) -> dict[str, list]:
    """What keeps ``given`` (name → shape) from loading where ``expected`` is wanted."""
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted(k for k in given if k not in expected)
    reshaped = sorted(
        (k, list(given[k]), list(expected[k]))
        for k in expected if k in given and list(given[k]) != list(expected[k]))
    return {"missing": missing, "unexpected": unexpected, "reshaped": reshaped}


def describe_mismatches(m: dict[str, list], limit: int = 20) -> str:
    """A readable list of missing, unexpected and reshaped parameters."""
    lines = []
    for label, items in (("missing", m["missing"]), ("unexpected", m["unexpected"])):
        if items:
            shown = ", ".join(items[:limit]) + (f", … ({len(items) - limit} more)"
                                                 if len(items) > limit else "")
            lines.append(f"  {len(items)} {label}: {shown}")
    if m["reshaped"]:
        shown = ", ".join(f"{k} {tuple(a)} → expected {tuple(b)}" for k, a, b in m["reshaped"][:limit])
        more = f", … ({len(m['reshaped']) - limit} more)" if len(m["reshaped"]) > limit else ""
        lines.append(f"  {len(m['reshaped'])} of the wrong shape: {shown}{more}")
    return "\n".join(lines)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module`` exactly: every tensor present, none extra, shapes equal.

    Raises:
        WeightsError: naming every missing, unexpected and reshaped tensor.
    """
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    given = {k: list(v.shape) for k, v in state.items()}
    m = mismatches(expected, given)
    if m["missing"] or m["unexpected"] or m["reshaped"]:
        raise WeightsError(f"{source}: the weights do not fit this model:\n"
                           + describe_mismatches(m))
    module.load_state_dict(state, strict=True)
