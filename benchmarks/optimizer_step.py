"""The SGD update alone: torch's per-parameter loop, its foreach and its fused implementation.

    python benchmarks/optimizer_step.py [SPEC] [--threads N] [--steps 50] [--rounds 7]

Over the spec's compiled model with random gradients, the parameter groups and momentum
``specc train`` uses (``runtime.train.make_optimizer`` takes the fused one). One process,
interleaved rounds, median after a warm-up round; prints the CPU and the time per step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from runtime import finetune
from specc.api import compile_spec, load_spec
from specc.hardware import cpu_info

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
KINDS = {"per-parameter loop": {"foreach": False}, "foreach": {"foreach": True},
         "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEMO)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tr = load_spec(args.spec).spec.train
    model = compile_spec(load_spec(args.spec)).module
    print(f"CPU: {cpu_info().summary()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(list(model.parameters()))} parameter tensors")
    optimizers = {}
    for name, options in KINDS.items():
        copied = copy.deepcopy(model)
        for p in copied.parameters():
            p.grad = torch.randn_like(p)
        groups = finetune.lr_groups(copied, tr.weight_decay, tr.lr_mult).groups
        optimizers[name] = torch.optim.SGD(groups, lr=tr.lr, momentum=tr.momentum, **options)
    times: dict[str, list[float]] = {name: [] for name in KINDS}
    for round_ in range(args.rounds + 1):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            if round_:
                times[name].append((time.perf_counter() - start) / args.steps)
    loop = statistics.median(times["per-parameter loop"])
    print("| SGD step | median ms | vs per-parameter loop |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.2f} | {loop / median:.2f}× |")


if __name__ == "__main__":
    main()
