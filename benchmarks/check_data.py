"""A folder data set of photo-sized images for timing `specc check-data`.

    python benchmarks/check_data.py DIR [--images 1000] [--val 200] [--size 500x375]
    /usr/bin/time -v specc check-data specs/deeplabv3plus_mobilenetv2.yaml --data folder:DIR
    python benchmarks/check_data.py DIR --time-check [--workers 2]

Writes ``DIR/images/{train,val}/NNNN.jpg`` and ``DIR/masks/{train,val}/NNNN.png`` (the folder
layout of ``runtime.data.layouts.folder``): ``images`` pairs in all, the last ``val`` of them in
the validation split. Each picture is a colour gradient with a few filled ellipses and
rectangles and mild noise, saved as JPEG at quality 90, so that files are the size of real
photos (tens of kB, where pure noise would be several times larger and slower to decode); its
mask holds the shapes' class ids (1..20 over background 0) in a grey PNG, each shape outlined
with the ignore label 255 as in VOC. Seeded: the same arguments write the same files.

With ``--time-check`` nothing is written: ``runtime.data.check.check_split`` (what
``specc check-data`` runs) is timed in this process over the ``train`` and ``val`` splits of
DIR, with ``workers`` worker processes, so the start-up (importing torch) is left out; the
peak RSS printed after each split shows how little the check adds to the imports'.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "deeplabv3plus_mobilenetv2.yaml"
CLASSES = 21  # as SPEC (VOC's count)
IGNORE = 255


def sample(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """One picture and its mask."""
    ramp = np.linspace(0.0, 1.0, width)[None, :, None] * np.linspace(0.5, 1.0, height)[:, None, None]
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    pixels = low + (high - low) * ramp + rng.normal(0, 12, (height, width, 3))
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    paint, label = ImageDraw.Draw(picture), ImageDraw.Draw(mask)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        box = (x0, y0, x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2)))
        shape = "ellipse" if rng.random() < 0.5 else "rectangle"
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        getattr(paint, shape)(box, fill=colour)
        getattr(label, shape)(box, fill=int(rng.integers(1, CLASSES)), outline=IGNORE, width=3)
    return picture, mask


def time_check(root: Path, workers: int) -> None:
    """Print the seconds ``check_split`` takes over each split of the folder data set ``root``,
    and this process's peak resident set size after it (Linux reports KiB)."""
    from runtime.data import open_split
    from runtime.data.check import check_split
    from specc.api import load_spec

    spec = load_spec(SPEC, [f"data.source=folder:{root}"]).spec
    for split in ("train", "val"):
        dataset = open_split(spec, split)
        start = time.perf_counter()
        report = check_split(dataset, workers)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{split}: {len(dataset)} pairs, {len(report.problems)} unreadable, {seconds:.2f} s "
              f"({seconds / len(dataset) * 1000:.1f} ms per pair, {workers} workers), "
              f"peak RSS {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write (folder:ROOT for --data)")
    parser.add_argument("--images", type=int, default=1000, help="image/mask pairs in all")
    parser.add_argument("--val", type=int, default=200, help="of them in the val split")
    parser.add_argument("--size", default="500x375", help="width x height")
    parser.add_argument("--time-check", action="store_true", help="time the check of DIR instead")
    parser.add_argument("--workers", type=int, default=2, help="with --time-check")
    args = parser.parse_args()
    if args.time_check:
        time_check(args.root, args.workers)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    total = 0
    for index in range(args.images):
        split = "val" if index >= args.images - args.val else "train"
        picture, mask = sample(rng, width, height)
        image_path = args.root / "images" / split / f"{index:04d}.jpg"
        mask_path = args.root / "masks" / split / f"{index:04d}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(image_path, quality=90)
        mask.save(mask_path)
        total += image_path.stat().st_size + mask_path.stat().st_size
    print(f"{args.images} pairs ({args.images - args.val} train, {args.val} val) of "
          f"{width}x{height} in {args.root}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
