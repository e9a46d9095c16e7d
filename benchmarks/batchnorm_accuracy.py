"""Batch-norm accuracy in training mode: contiguous, channels-last with the CPU's native kernel,
and channels-last with ``specc.train_passes.exact_batchnorm``, each against float64.

    python benchmarks/batchnorm_accuracy.py [SPEC] [--warmup 30]

1. A lone ``BatchNorm2d`` (32 channels, mean 0.3, spread 1) over a growing number of values per
   channel: the largest relative error of its output.
2. The spec's model (default: the demo) after ``--warmup`` contiguous SGD steps on its training
   stream, dropout off: one training-mode forward and backward of one batch in float64, then in
   float32 three ways; per top-level block, the relative error (norm of the difference over the
   norm) of its output and of the gradient reaching it, and the median over the parameters of
   their gradients' relative errors.

Prints the CPU and torch's version: the kernels, and so the figures, depend on both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime import distributed
from runtime import train as train_mod
from specc.api import compile_spec, load_spec
from specc.hardware import cpu_info
from specc.train_passes import exact_batchnorm

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
CL = torch.channels_last
WAYS = ("contiguous", "channels-last", "channels-last, exact")


def prepared(model: nn.Module, way: str, dtype: torch.dtype) -> nn.Module:
    """A training-mode copy of ``model`` in ``dtype``, set up the ``way`` named."""
    model = copy.deepcopy(model).to(dtype).train()
    if way != "contiguous":
        model = model.to(memory_format=CL)
    if way == "channels-last, exact":
        exact_batchnorm(model)
    return model


def lone_batchnorm() -> None:
    print("\n| values per channel (N·H·W) | " + " | ".join(WAYS) + " |")
    print("|---|---|---|---|")
    torch.manual_seed(0)
    for n, side in [(2, 7), (8, 13), (8, 25), (8, 49), (32, 49), (8, 97)]:
        x = torch.randn(n, 32, side, side, dtype=torch.float64) + 0.3
        bn = nn.BatchNorm2d(32)
        expected = prepared(bn, "contiguous", torch.float64)(x)
        errors = []
        for way in WAYS:
            layer = prepared(bn, way, torch.float32)
            images = x.float().contiguous(memory_format=CL if way != "contiguous" else
                                          torch.contiguous_format)
            got = layer(images).double()
            errors.append(((got - expected).abs().max() / expected.abs().max()).item())
        print(f"| {n * side * side} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")


def network(spec: Path, warmup: int) -> None:
    doc = load_spec(spec, ["aspp.projection.dropout=0"])
    torch.manual_seed(0)
    model = compile_spec(doc).module.train()
    stream = iter(train_mod._train_loader(doc.spec, distributed.Context(), 8, 0))
    optimizer = torch.optim.SGD(model.parameters(), lr=doc.spec.train.lr, momentum=0.9)
    for _ in range(warmup):
        images, labels = next(stream)
        loss = F.cross_entropy(model(images)["out"], labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = next(stream)

    def run(way: str, dtype: torch.dtype) -> tuple[dict, dict, dict]:
        net = prepared(model, way, dtype)
        outputs: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}
        for name, block in net.named_children():
            def keep(_: nn.Module, __: object, out: object, name: str = name) -> None:
                tensor = out if isinstance(out, torch.Tensor) else out.get("out")
                outputs[name] = tensor.detach().double()
                tensor.register_hook(lambda g: grads.__setitem__(name, g.double()))
            block.register_forward_hook(keep)
        x = images.to(dtype).contiguous(memory_format=CL if way != "contiguous" else
                                        torch.contiguous_format)
        F.cross_entropy(net(x)["out"], labels, ignore_index=255).backward()
        params = {n: p.grad.double() for n, p in net.named_parameters()}
        return outputs, grads, params

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    ref_out, ref_grad, ref_params = run("contiguous", torch.float64)
    results = {way: run(way, torch.float32) for way in WAYS}
    print(f"\n{spec.name}, one batch after {warmup} steps; per block: output error / "
          "input-gradient error")
    print("\n| block | " + " | ".join(WAYS) + " |")
    print("|---|---|---|---|")
    for name in ref_out:
        cells = [f"{rel(out[name], ref_out[name]):.1e} / {rel(grad[name], ref_grad[name]):.1e}"
                 for out, grad, _ in results.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    # parameters whose float64 gradient is not zero to rounding (a BN bias before another BN)
    live = [n for n, g in ref_params.items() if g.norm() > 1e-9]
    medians = [statistics.median(rel(params[n], ref_params[n]) for n in live)
               for _, _, params in results.values()]
    print("| parameters' gradients (median) | " + " | ".join(f"{m:.1e}" for m in medians) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEMO)
    parser.add_argument("--warmup", type=int, default=30,
                        help="contiguous SGD steps before the comparison")
    args = parser.parse_args()
    print(f"CPU: {cpu_info().summary()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    lone_batchnorm()
    network(args.spec, args.warmup)


if __name__ == "__main__":
    main()
