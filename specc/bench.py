"""``specc bench``: measured latency of a model and its deployment artifacts, side by side.

Everything runs in one process on the same input: a warm-up, then interleaved repeats (each
repeat runs every candidate once, in turn, so that a slower or busier stretch of the machine
falls on all of them alike). Per candidate: median/min/max latency, images/s, achieved
multiply-adds per second (the layer graph's count at the measured size), speed-up against the
reference (the compiled module, eager fp32) and, for a spec that is one of torchvision's models,
against torchvision's own eager model with the same weights; argmax agreement with the
reference; and the growth of the process's peak resident memory while the candidate first ran
(0 when an earlier candidate had already set a higher peak).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: torchvision's constructors for the zoo specs that are its models, by spec name.
TORCHVISION = {
    "torchvision_deeplabv3_resnet50": "deeplabv3_resnet50",
    "torchvision_deeplabv3_resnet101": "deeplabv3_resnet101",
}


@dataclass
class Candidate:
    """One thing to time: a name, a function from the input batch to logits, and what it is."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    precision: str = "fp32"
    kind: str = "artifact"


def logits_of(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function returning ``model(x)["out"]`` without autograd."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            result = model(x)
            return result["out"] if isinstance(result, dict) else result

    return run


def torchvision_twin(comp: Any, module: nn.Module) -> nn.Module | None:
    """torchvision's own model of a zoo spec holding ``module``'s weights, or None when the
    spec is not one of torchvision's models.

    The weights are moved across by the name map of ``specc import-weights --from
    torchvision``, read backwards: every tensor of a fresh torchvision model is filled with its
    own index, imported, and the index each of the spec's tensors then holds says where it
    came from.
    """
    name = TORCHVISION.get(comp.spec.name)
    if name is None:
        return None
    import torchvision.models.segmentation as seg

    from specc.importers import import_state

    twin = getattr(seg, name)(weights=None, weights_backbone=None, aux_loss=True,
                              num_classes=comp.spec.num_classes).eval()
    theirs = twin.state_dict()
    tagged = {k: torch.full_like(v, i + 1) if v.is_floating_point() else v
              for i, (k, v) in enumerate(theirs.items())}
    imported = import_state(comp, tagged, "torchvision")
    origin = {int(t.flatten()[0]): ours for ours, t in imported.state.items()
              if t.is_floating_point() and t.numel()}
    ours = module.state_dict()
    twin.load_state_dict({k: ours[origin[i + 1]].reshape(v.shape)
                          if v.is_floating_point() and (i + 1) in origin else v
                          for i, (k, v) in enumerate(theirs.items())})
    return twin


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(candidates: Sequence[Candidate], x: torch.Tensor, *, macs: int, repeats: int = 10,
            warmup: int = 2, progress: Callable[[str], None] = lambda _: None
            ) -> list[dict[str, Any]]:
    """Time every candidate on ``x``; the first candidate is the reference. ``macs`` is the
    multiply-add count of one image at ``x``'s size."""
    outputs, memory = [], []
    for c in candidates:
        progress(f"warm-up: {c.name}")
        before = peak_rss_mib()
        out = c.run(x)
        for _ in range(warmup - 1):
            c.run(x)
        memory.append(max(0.0, peak_rss_mib() - before))
        outputs.append(out.float())
    times: list[list[float]] = [[] for _ in candidates]
    for r in range(repeats):
        progress(f"repeat {r + 1}/{repeats}")
        for i, c in enumerate(candidates):
            start = time.perf_counter()
            c.run(x)
            times[i].append(time.perf_counter() - start)
    reference = statistics.median(times[0])
    want = outputs[0].argmax(1)
    rows = []
    for i, c in enumerate(candidates):
        median = statistics.median(times[i])
        rows.append({
            "name": c.name, "kind": c.kind, "precision": c.precision,
            "median_ms": median * 1e3, "min_ms": min(times[i]) * 1e3,
            "max_ms": max(times[i]) * 1e3,
            "images_per_s": x.shape[0] / median,
            "gmacs_per_s": macs * x.shape[0] / median / 1e9,
            "speedup": reference / median,
            "argmax_agreement": float((outputs[i].argmax(1) == want).float().mean()),
            "peak_rss_growth_mib": round(memory[i], 1),
        })
    twin = next((row for row in rows if row["kind"] == "torchvision"), None)
    for row in rows:
        row["speedup_vs_torchvision"] = twin["median_ms"] / row["median_ms"] if twin else None
    return rows
