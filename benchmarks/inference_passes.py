"""Forward-pass speed of the inference passes (specc.passes) against the module they start from.

    python benchmarks/inference_passes.py [--size 257] [--rounds 3] [--repeats 5] [--threads 2]

For the zoo's ``torchvision_deeplabv3_resnet50`` spec and the CPU demo spec, the reference is the
compiled module in eval mode (random weights, non-trivial batch-norm statistics); each variant is
the reference after some passes, plus the reference frozen by TorchScript for comparison. All run
in one process, interleaved round by round (machine load hits each alike), after a warm-up.
Prints the CPU model and instruction-set flags, then per variant the median time per forward
pass, its ratio to the reference's, the largest |Δout| and the argmax agreement.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from specc.api import build, load_spec
from specc.passes import optimize_for_inference

REPO = Path(__file__).resolve().parents[1]
SPECS = {
    "zoo/torchvision_deeplabv3_resnet50": REPO / "specs/zoo/torchvision_deeplabv3_resnet50.yaml",
    "deeplabv3plus_mobilenetv2_demo": REPO / "specs/deeplabv3plus_mobilenetv2_demo.yaml",
}
#: Instruction-set flags of /proc/cpuinfo that decide which kernels run fastest.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")
#: The variants measured: name → (the passes applied to the reference, frozen by TorchScript).
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "reference (eager fp32)": ((), False),
    "inference_only": (("inference_only",), False),
    "+ fold_batchnorm": (("inference_only", "fold_batchnorm"), False),
    "+ channels_last": (("inference_only", "fold_batchnorm", "channels_last"), False),
    "TorchScript frozen (reference)": ((), True),
    "all passes, TorchScript frozen": (("inference_only", "fold_batchnorm", "channels_last"),
                                       True),
}


def cpu_line() -> str:
    """The CPU model and which of :data:`CPU_FLAGS` it has, from /proc/cpuinfo."""
    model, flags = "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    found = [f for f in CPU_FLAGS if f in flags]
    return f"{model}; flags: {' '.join(found) or 'none of ' + ' '.join(CPU_FLAGS)}"


def reference_model(path: Path, seed: int) -> nn.Module:
    """The spec's compiled module in eval mode with random, non-identity BN statistics."""
    model = build(load_spec(path)).module.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def variant(reference: nn.Module, passes: tuple[str, ...], frozen: bool) -> nn.Module:
    """The reference after ``passes``, then scripted and frozen by TorchScript if ``frozen``."""
    model = optimize_for_inference(reference, passes) if passes else reference
    return torch.jit.optimize_for_inference(torch.jit.script(model)) if frozen else model


def timed(fn: Callable[[torch.Tensor], object], x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per forward pass, ``repeats`` times."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return times


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Largest |Δ| and the fraction of pixels with the same argmax."""
    same = (got.argmax(1) == want.argmax(1)).float().mean().item()
    return (got - want).abs().max().item(), same


def bench_spec(name: str, path: Path, opts: argparse.Namespace) -> None:
    """Measure every variant of one spec and print its table."""
    reference = reference_model(path, seed=0)
    models = {label: variant(reference, *how) for label, how in VARIANTS.items()}
    x = torch.randn(1, 3, opts.size, opts.size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = reference(x)["out"]
        checks = {label: agreement(m(x)["out"], want) for label, m in models.items()}
    for m in models.values():  # warm-up (TorchScript's profiling runs, allocator caches)
        timed(m, x, 2)
    runs: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(opts.rounds):
        for label, m in models.items():
            runs[label] += timed(m, x, opts.repeats)
    ref = statistics.median(runs[next(iter(runs))])
    print(f"\n{name}, input 1×3×{opts.size}×{opts.size}, {opts.threads} thread(s), "
          f"{opts.rounds}×{opts.repeats} passes each")
    print("| variant | median per pass | speed-up | max abs diff | argmax agreement |")
    print("|---|---|---|---|---|")
    for label, times in runs.items():
        med = statistics.median(times)
        diff, same = checks[label]
        print(f"| {label} | {med * 1000:.1f} ms | {ref / med:.2f}× | {diff:.1e} "
              f"| {same * 100:.2f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=257, help="square input side")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per variant, round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"CPU: {cpu_line()}; torch {torch.__version__}")
    for name, path in SPECS.items():
        bench_spec(name, path, opts)


if __name__ == "__main__":
    main()
