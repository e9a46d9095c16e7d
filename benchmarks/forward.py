"""Forward-pass speed of specc's compiled models against independent references, as ratios.

    python benchmarks/forward.py [--size 257] [--repeats 7] [--threads 2]

Reference runs in the same process, interleaved with the measured ones (so machine load hits
both alike): torchvision's own ``deeplabv3_resnet50`` against specc's build of
``specs/zoo/torchvision_deeplabv3_resnet50.yaml`` (eager and TorchScript), with the same weights
moved across by ``specc import-weights``'s mapping. Prints the median time per forward pass and
the ratio specc / reference; a ratio near 1.0 means the generated code costs nothing extra.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn, x: torch.Tensor, repeats: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=257, help="square input side")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    from torchvision.models.segmentation import deeplabv3_resnet50

    from specc.api import build, load_spec
    from specc.artifacts import script_module
    from specc.importers import import_state

    torch.manual_seed(0)
    reference = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()
    built = build(load_spec(REPO / "specs/zoo/torchvision_deeplabv3_resnet50.yaml"))
    state = import_state(built, reference.state_dict(), "torchvision").state
    model = built.module.eval()
    model.load_state_dict(state)
    scripted = script_module(model)
    x = torch.randn(1, 3, opts.size, opts.size)
    with torch.inference_mode():
        diff = (reference(x)["out"] - model(x)["out"]).abs().max().item()

    runs: dict[str, list[float]] = {"torchvision": [], "specc eager": [], "specc TorchScript": []}
    fns = {"torchvision": reference, "specc eager": model, "specc TorchScript": scripted}
    for fn in fns.values():  # warm-up
        median_seconds(fn, x, 2)
    for _ in range(opts.rounds):
        for name, fn in fns.items():
            runs[name] += median_seconds(fn, x, opts.repeats)
    ref = statistics.median(runs["torchvision"])
    print(f"deeplabv3_resnet50, input 1×3×{opts.size}×{opts.size}, {opts.threads} thread(s), "
          f"{opts.rounds}×{opts.repeats} passes each; max |Δout| = {diff:.2e}")
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"  {name:18s} {med * 1000:8.1f} ms   ratio {med / ref:.3f}")


if __name__ == "__main__":
    main()
