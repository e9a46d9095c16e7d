"""The CPU demo, end to end: ``specc train`` then ``specc eval`` on the demo spec, timed.

    python benchmarks/demo.py [--out runs/demo-bench] [--threads N] [--set key=value]...

Runs the two commands exactly as a user would (separate processes, so start-up is counted),
then prints the wall time of each, the CPU time they used, the validation mIoU and pixel
accuracy, and whether the demo's targets hold: both commands within 10 minutes on two CPU cores,
mIoU >= 0.75 on the synthetic val split. Exits 1 when a target is missed.

The load average is printed too: on a machine shared with other jobs, PyTorch's OpenMP threads
spin while waiting for a core and wall time can grow many-fold; ``--threads 1`` (one intra-op
thread per process) keeps the run predictable there, at some cost on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
TIME_LIMIT_S = 600.0  # train + eval, two CPU cores
MIOU_TARGET = 0.75


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``python -m specc ARGS``: (wall seconds, CPU seconds, stdout); exits on failure."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "specc", *args], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if done.returncode != 0:
        sys.exit(f"specc {args[0]} failed with exit code {done.returncode}")
    return wall, cpu, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo-bench",
                        help="run folder (replaced)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads per process (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="a spec override for the training run, e.g. "
                        "train.channels_last=false (repeatable)")
    opts = parser.parse_args()

    env = dict(os.environ)
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    shutil.rmtree(opts.out, ignore_errors=True)
    load_before = os.getloadavg()[0]
    print(f"demo: {SPEC.relative_to(REPO)} {' '.join(opts.sets)} -> {opts.out}  "
          f"({os.cpu_count()} CPUs, load {load_before:.1f}, threads {opts.threads or 'default'})",
          flush=True)

    overrides = [arg for value in opts.sets for arg in ("--set", value)]
    train_wall, train_cpu, _ = run(["train", str(SPEC), "--out", str(opts.out), *overrides], env)
    eval_wall, eval_cpu, out = run(
        ["eval", str(SPEC), "--checkpoint", str(opts.out), "--json"], env)
    report = json.loads(out)
    total = train_wall + eval_wall
    load_after = os.getloadavg()[0]

    print(f"train: {train_wall:7.1f} s wall, {train_cpu:7.1f} s CPU")
    print(f"eval:  {eval_wall:7.1f} s wall, {eval_cpu:7.1f} s CPU")
    print(f"total: {total:7.1f} s wall (target <= {TIME_LIMIT_S:.0f} s)")
    print(f"mIoU:  {report['miou']:.4f} (target >= {MIOU_TARGET}), pixel accuracy "
          f"{report['pixel_accuracy']:.4f}, {report['images']} val images")
    print("per-class IoU: " + ", ".join(
        f"{name} {iou:.3f}" if iou is not None else f"{name} -"
        for name, iou in zip(report["classes"], report["per_class_iou"], strict=True)))
    print(f"load average: {load_before:.1f} before, {load_after:.1f} after")
    ok = total <= TIME_LIMIT_S and report["miou"] >= MIOU_TARGET
    print("PASS" if ok else "MISS")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
