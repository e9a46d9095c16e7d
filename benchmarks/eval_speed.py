"""Images per second of the evaluation: one image at a time on the training module (as `specc
eval` ran before batching) against batches on the inference-optimized module (as it runs now).

    python benchmarks/eval_speed.py [--images 96] [--batch-size 8] [--rounds 3] [--threads 1]

The model is the CPU demo spec (``specs/deeplabv3plus_mobilenetv2_demo.yaml``) with random weights
and non-trivial batch-norm statistics; the images are the first ``images`` of its synthetic
validation split (128×128), decoded and normalized once beforehand, so both variants time the
same work: ``runtime.evaluate.evaluate`` over the same tensors. The variants run interleaved,
round by round, after a warm-up, so machine load hits both alike. Prints the median images per
second of each, their ratio, and whether the confusion matrices agree.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from runtime import distributed
from runtime.evaluate import evaluate, val_batches
from specc.api import build, load_spec
from specc.passes import optimize_for_inference

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
CPU = torch.device("cpu")


def demo_model() -> tuple[torch.nn.Module, object]:
    """The demo network with random weights and BN statistics, in eval mode, and its spec."""
    torch.manual_seed(0)
    doc = load_spec(SPEC, [])
    model = build(doc).module
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval(), doc.spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, spec = demo_model()
    optimized = optimize_for_inference(model)
    _, loader = val_batches(spec, distributed.Context(device=CPU))
    data = []
    for pair in loader:
        if len(data) == args.images:
            break
        data.append(pair)
    variants = {"one at a time, training module": (model, 1),
                f"batches of {args.batch_size}, optimized module": (optimized, args.batch_size)}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    confusion = {}
    for name, (net, batch) in variants.items():  # warm-up
        confusion[name] = evaluate(net, data[:batch], spec.num_classes, device=CPU,
                                   batch_size=batch).confusion
    for _ in range(args.rounds):
        for name, (net, batch) in variants.items():
            start = time.perf_counter()
            result = evaluate(net, data, spec.num_classes, device=CPU, batch_size=batch)
            speeds[name].append(len(data) / (time.perf_counter() - start))
            confusion[name] = result.confusion
    print(f"{len(data)} images of {tuple(data[0][0].shape[-2:])}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, median")
    print("| variant | images/s | ratio |")
    print("|---|---|---|")
    reference = statistics.median(next(iter(speeds.values())))
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / reference:.2f}× |")
    same = len({tuple(c) for c in confusion.values()}) == 1
    print(f"confusion matrices identical: {same}")


if __name__ == "__main__":
    main()
