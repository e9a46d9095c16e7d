"""Training speed: specc's training step path against a plain hand-written loop, same model.

    python benchmarks/train_speed.py [SPEC] [--set k=v]... [--iters 20] [--rounds 5]
        [--threads N] [--baseline] [--native-batchnorm] [--variant 'LABEL:k=v,k=v']...

One process, one generated model (``specc.api``), the same initial weights for every variant:

* **plain loop** — what one would write by hand: the model as built (contiguous fp32), SGD with
  the spec's lr, momentum and weight decay, cross-entropy with the ignore label, over batches
  drawn from specc's own training stream *before* timing starts (so the data costs nothing);
* **specc** — ``runtime.train``'s own path: its loader (synthetic data, augmentation) and its
  ``_step`` under the settings ``step_settings`` picks for the device (channels-last, precision,
  compile), one batch read and one step per iteration, after one pass over the data set (most
  of a run reads samples the synthetic set already generated and kept; ``--first-epoch`` times
  a run's first epoch instead);
  with ``train.workers: 0`` its batches are read ahead in a thread where the step leaves a core
  free (``--threads`` below the core count) and in the loop otherwise, as ``batch_stream``
  decides in a run;
* **specc, batches read ahead / in the loop** — the same with the other of the two, to show what
  the thread brings;
* with ``--baseline``, the specc path as it was before the speed-ups (contiguous fp32, every
  synthetic sample generated on every read, batches read in the loop; the augmentation is
  today's, which gives the same batches in 0.57 of the time of the v2 pipeline it replaced);
* with ``--native-batchnorm``, the specc path channels-last with the CPU's native batch-norm
  statistics (without :func:`specc.train_passes.exact_batchnorm`), to show what the exact
  statistics cost;
* each ``--variant`` — the specc path with more ``--set`` overrides (e.g. today's defaults
  switched off, to measure what each one brings in the same process).

Each round runs every variant for ``--iters`` iterations, in a rotating order (the machine's
load hits every variant alike); after one warm-up round the median time per iteration over the
rounds is reported, with its ratio to the plain loop (> 1: faster than the plain loop) and, for
the specc variants, the share of the time spent reading the batch. The CPU time of the process
per iteration is reported beside it: with one thread (``--threads 1``) it counts the work done
and not the time spent waiting for a core, so it is the steadier figure on a busy machine (a
read-ahead thread's work counts in it too). Prints the CPU model, its
instruction-set features, torch's version and thread count, and the load average before and
after: on a shared machine the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime import distributed, finetune, losses
from runtime import train as train_mod
from specc.api import compile_spec, load_spec
from specc.hardware import cpu_info, usable_cores

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
CPU = distributed.Context()


@dataclass
class Runner:
    """One variant: a function that runs ``n`` iterations, and its timings per round."""

    name: str
    run: Callable[[int], float]  # runs n iterations; returns the seconds spent reading data
    per_iter: list[float] = field(default_factory=list)
    cpu_per_iter: list[float] = field(default_factory=list)
    data_share: list[float] = field(default_factory=list)

    def measure(self, n: int, keep: bool) -> None:
        """Run ``n`` iterations; record the wall-clock and CPU time per iteration when ``keep``."""
        start, cpu_start = time.perf_counter(), time.process_time()
        data_seconds = self.run(n)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if keep:
            self.per_iter.append(elapsed / n)
            self.cpu_per_iter.append(cpu / n)
            self.data_share.append(data_seconds / elapsed)


def plain_loop(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               tr: object) -> Callable[[int], float]:
    """A hand-written SGD loop over pre-drawn batches (no data cost, no logging, no checks)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=tr.lr, momentum=tr.momentum,
                                weight_decay=tr.weight_decay)
    model.train()
    position = 0

    def run(n: int) -> float:
        nonlocal position
        for _ in range(n):
            images, labels = batches[position % len(batches)]
            position += 1
            out = model(images)
            loss = F.cross_entropy(out["out"], labels, ignore_index=tr.ignore_index)
            if "aux" in out:
                loss = loss + tr.aux_weight * F.cross_entropy(out["aux"], labels,
                                                              ignore_index=tr.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return 0.0

    return run


def read_every_sample(dataset: object) -> None:
    """Read every sample once, as the first epoch of a run does (the synthetic set keeps what it
    generated, so later epochs read it from memory)."""
    for index in range(len(dataset)):
        dataset[index]


def specc_path(doc: object, model: nn.Module, run_dir: Path, warm: bool,
               read_ahead: bool | None = None,
               exact_batchnorm: bool = True) -> Callable[[int], float]:
    """``runtime.train``'s loader and step over ``model``, set up as ``_train`` sets them up;
    with ``warm``, after one pass over the data set (the state of a run past its first epoch),
    else with the synthetic set generating every sample it is asked for. ``read_ahead``: as
    ``batch_stream`` decides for this process (None, what ``specc train`` does), or forced on
    (a background thread reads one or two batches ahead) or off (the loop reads).
    ``exact_batchnorm=False``: channels-last without the exact batch-norm statistics.
    """
    spec, tr = doc.spec, doc.spec.train
    amp_dtype, channels_last = train_mod.step_settings(doc, CPU.device)
    if exact_batchnorm:
        model = train_mod.prepare_for_steps(model, channels_last, CPU.device)
    elif channels_last:
        model = model.to(memory_format=torch.channels_last)
    for bn in train_mod.batchnorms(model):
        bn.momentum = 1.0 - tr.bn_decay
    groups = finetune.lr_groups(model, tr.weight_decay, tr.lr_mult)
    optimizer = train_mod.make_optimizer(groups, tr)
    tuning = train_mod.Tuning(groups, losses.class_weight_tensor(tr.loss, spec.num_classes,
                                                                 CPU.device))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loader = train_mod._train_loader(spec, CPU, tr.batch_size, 0)
    if warm:
        read_every_sample(loader.dataset.dataset)
    else:
        loader.dataset.dataset._cache = None  # every read generates its sample again
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = train_mod.batch_stream(
        loader, CPU.device, read_ahead)
    train_mod.set_train_mode(model, tr.freeze_bn)
    stepper = torch.compile(model) if tr.compile else model
    it = 0

    def run(n: int) -> float:
        nonlocal it
        data = 0.0
        for _ in range(n):
            lr = train_mod.poly_lr(tr.lr, it, tr.iters, tr.poly_power)
            start = time.perf_counter()
            micro = [next(batches) for _ in range(tr.accumulate)]
            data += time.perf_counter() - start
            train_mod._step(stepper, optimizer, scaler, micro, lr, tr, CPU, amp_dtype,
                            channels_last, tuning, run_dir, it)
            it += 1
        return data

    return run


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"LABEL:k=v,k=v"`` → ``("LABEL", ["k=v", "k=v"])``."""
    label, _, sets = text.partition(":")
    return label, [s for s in sets.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEMO)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--iters", type=int, default=20, help="iterations per variant and round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 on a shared machine)")
    parser.add_argument("--first-epoch", action="store_true",
                        help="time the first epoch: the data set not yet read once")
    parser.add_argument("--baseline", action="store_true",
                        help="add the specc path as it was before the speed-ups: contiguous "
                        "fp32, every synthetic sample generated on every read")
    parser.add_argument("--native-batchnorm", action="store_true",
                        help="add the specc path channels-last with the native batch-norm "
                        "statistics (no exact_batchnorm pass)")
    parser.add_argument("--variant", action="append", default=[],
                        help="another specc variant, 'LABEL:k=v,k=v'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    doc = load_spec(args.spec, args.sets)
    base = compile_spec(doc).module
    tr = doc.spec.train
    print(f"CPU: {cpu_info().summary()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; spec {args.spec.name} "
          f"{' '.join(args.sets)}; batch {tr.batch_size}, crop {doc.spec.data.crop}; "
          f"{args.iters} iterations × {args.rounds} rounds per variant after a warm-up round")
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    stream = iter(train_mod._train_loader(doc.spec, CPU, tr.batch_size, 0))
    drawn = [next(stream) for _ in range(args.iters)]
    warm = not args.first_epoch
    run_dir = Path(os.devnull)  # _step names it only in the message of a non-finite loss
    # what specc train does here: read ahead in a thread, or in the loop (``batch_stream``)
    ahead = torch.get_num_threads() < usable_cores()
    reading = "read ahead" if ahead else "read in the loop"
    runners = [Runner("plain loop (pre-drawn batches)", plain_loop(copy.deepcopy(base), drawn, tr)),
               Runner(" ".join(["specc", *args.sets, f"(batches {reading})"]),
                      specc_path(doc, copy.deepcopy(base), run_dir, warm)),
               Runner(f"specc, batches {'read in the loop' if ahead else 'read ahead'}",
                      specc_path(doc, copy.deepcopy(base), run_dir, warm, read_ahead=not ahead))]
    if args.baseline:
        baseline_doc = load_spec(args.spec, [*args.sets, "train.channels_last=false",
                                             "train.precision=fp32", "train.compile=false"])
        runners.append(Runner("specc, previous defaults (contiguous, samples generated on "
                              "every read)", specc_path(baseline_doc, copy.deepcopy(base),
                                                        run_dir, warm=False, read_ahead=False)))
    if args.native_batchnorm:
        cl_doc = load_spec(args.spec, [*args.sets, "train.channels_last=true"])
        runners.append(Runner("specc, channels-last with native batch-norm statistics",
                              specc_path(cl_doc, copy.deepcopy(base), run_dir, warm,
                                         exact_batchnorm=False)))
    for text in args.variant:
        label, sets = parse_variant(text)
        variant_doc = load_spec(args.spec, [*args.sets, *sets])
        runners.append(Runner(f"specc, {label}", specc_path(variant_doc, copy.deepcopy(base),
                                                            run_dir, warm)))

    for round_ in range(args.rounds + 1):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner.measure(args.iters, keep=round_ > 0)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    plain = statistics.median(runners[0].per_iter)
    plain_cpu = statistics.median(runners[0].cpu_per_iter)
    print("\n| variant | median per iteration (min–max) | speed vs plain loop | CPU time per "
          "iteration | CPU-time speed vs plain loop | data share |")
    print("|---|---|---|---|---|---|")
    for runner in runners:
        median, cpu = statistics.median(runner.per_iter), statistics.median(runner.cpu_per_iter)
        share = statistics.median(runner.data_share)
        print(f"| {runner.name} | {median * 1e3:.1f} ms ({min(runner.per_iter) * 1e3:.1f}–"
              f"{max(runner.per_iter) * 1e3:.1f}) | {plain / median:.2f}× | {cpu * 1e3:.1f} ms | "
              f"{plain_cpu / cpu:.2f}× | {share * 100:.0f} % |")


if __name__ == "__main__":
    main()
