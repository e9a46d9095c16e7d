"""Peak memory and time of `specc predict` on a large photo, whole-image against tiled.

    python benchmarks/tiled_predict.py [--size 4000x3000] [--classes 21] [--threads 2]

The model is the CPU demo spec (``specs/deeplabv3plus_mobilenetv2_demo.yaml``) with ``classes``
output classes and random weights; the image is a random RGB PNG of ``size`` (width × height).
Each variant runs ``runtime.predict.predict_files`` — reading the PNG, predicting, writing the
mask and the overlay — in a fresh process, so that its peak resident set size
(``resource.getrusage(...).ru_maxrss``) is its own. The peak is reported as measured and as the
growth over the process's peak before prediction (interpreter, torch, model and the decoded
image), which is what the image size and the tiling change. Prints one Markdown table row per
variant.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
#: Variants: name → the --tile and --overlap options of `specc predict` (None: whole image).
VARIANTS: dict[str, tuple[str | None, float | None]] = {
    "whole image": (None, None),
    "--tile 513 --overlap 0.33": ("513", 0.33),
}


def peak_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, image: Path, classes: int, threads: int) -> None:
    """Run one variant in this process and print its figures as JSON."""
    import torch

    from runtime.predict import Predictor, predict_files
    from runtime.tiling import tiling_from_options
    from specc.api import build, load_spec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = load_spec(SPEC, [f"num_classes={classes}"])
    model = build(spec).module.eval()
    size = spec.spec.input.size
    predictor = Predictor(model, spec.spec.input.mean, spec.spec.input.std, "random", size)
    tile, overlap = VARIANTS[variant]
    tiling = tiling_from_options(tile, overlap, size)
    before = peak_mb()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        predict_files(predictor, [image], Path(out), tiling=tiling, device=torch.device("cpu"))
        seconds = time.perf_counter() - start
    print(json.dumps({"peak_mb": peak_mb(), "before_mb": before, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4000x3000", help="image width x height")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.image, args.classes, args.threads)
        return
    import numpy as np
    from PIL import Image

    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "photo.png"
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image)
        del pixels
        print(f"{width}×{height} px, {args.classes} classes, {args.threads} threads")
        print("| variant | time | peak RSS | growth during predict |")
        print("|---|---|---|---|")
        for variant in VARIANTS:
            result = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--image", str(image),
                 "--classes", str(args.classes), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {variant} | {figures['seconds']:.1f} s | {figures['peak_mb']:.0f} MiB | "
                  f"{figures['peak_mb'] - figures['before_mb']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
