"""Sliding-window (tiled) inference for images larger than the network's input.

The image is covered by windows of the tile size, ``stride = tile - overlap`` pixels apart. Each
window is run through :func:`runtime.evaluate.predict_probs` (so every scale and the mirrored
copy are applied to the window), and the softmax probabilities of overlapping windows are
averaged: each pixel's sum is divided by the number of windows that cover it.

Borders: the last window of a row or column is moved back so that it ends at the image's edge,
so every window lies inside the image and no padding is needed (a pixel near the edge is simply
covered by more windows). In a dimension where the image is smaller than the tile, the window is
the image's whole extent there. An image that fits in one tile is therefore run exactly as
without tiling.

Memory is bounded by the tile, not the image. Windows are processed one row of windows at a time,
``batch`` windows per forward pass, and the probabilities are summed into a band of
``C × tile height × image width`` floats. When the next row of windows starts, the rows above it
will not be touched again: they are divided by their counts and handed out (``tiled_bands``), and
the band moves down. The caller keeps only what it needs of each band (the arg-max, one byte per
pixel for up to 256 classes), never ``C × H × W`` probabilities. What remains proportional to the
image is the input tensor itself (3 values per pixel) and the label map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from specc.errors import SpeccError

#: Windows per forward pass: enough to keep a CPU or GPU busy, few enough to bound memory (the
#: upsampled logits and probabilities of a batch take 2 × batch × C × tile area floats).
DEFAULT_TILE_BATCH = 2
#: Rows handed out at a time: the averaged copy of finished rows is C × this × W floats.
ROWS_PER_PIECE = 64
#: Overlap between neighbouring windows as a fraction of the tile when none is given.
DEFAULT_OVERLAP = 1 / 3


@dataclass(frozen=True)
class Tiling:
    """Window size and step, in input pixels, and how many windows go through the model at once."""

    tile: tuple[int, int]  # (height, width)
    stride: tuple[int, int]  # (height, width), each 1..tile
    batch: int = DEFAULT_TILE_BATCH


def tiling_from_options(tile: str | None, overlap: float | None, input_size: Sequence[int],
                        batch: int = DEFAULT_TILE_BATCH) -> Tiling | None:
    """The :class:`Tiling` of the ``--tile`` and ``--overlap`` options; None without ``--tile``.

    ``tile`` is ``auto`` (the network's input size, ``input_size``), ``N`` (N×N) or ``HxW``;
    ``overlap`` is the fraction of the tile that neighbouring windows share, 0 <= overlap < 1
    (default one third).

    Raises:
        SpeccError: a tile that is not ``auto``, ``N`` or ``HxW`` of positive integers, an
            overlap outside [0, 1), or ``--overlap`` without ``--tile``.
    """
    if tile is None:
        if overlap is not None:
            raise SpeccError("--overlap: applies to tiled inference; give --tile too "
                             "(e.g. --tile auto --overlap 0.33)")
        return None
    size = _parse_tile(tile, input_size)
    fraction = DEFAULT_OVERLAP if overlap is None else overlap
    if not 0.0 <= fraction < 1.0:
        raise SpeccError(f"--overlap: expected a fraction of the tile, 0 <= overlap < 1, "
                         f"found {fraction}")
    stride = tuple(max(1, side - round(side * fraction)) for side in size)
    return Tiling(size, (stride[0], stride[1]), batch)


def _parse_tile(text: str, input_size: Sequence[int]) -> tuple[int, int]:
    """``auto`` → ``input_size``; ``513`` → (513, 513); ``512x1024`` → (512, 1024).

    Raises:
        SpeccError: anything else.
    """
    if text.strip().lower() == "auto":
        return int(input_size[0]), int(input_size[1])
    parts = text.lower().replace("×", "x").split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) <= 0:
        raise SpeccError(f"--tile: expected auto, N or HxW with positive integers "
                         f"(e.g. 513 or 512x1024), found {text!r}")
    return (sides[0], sides[-1])


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side of ``length`` pixels.

    Windows start every ``stride`` pixels; the last one is moved back to end at the edge, so all
    lie inside and together cover every pixel. A side no longer than the tile has one window.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def coverage(length: int, tile: int, starts: Sequence[int]) -> torch.Tensor:
    """How many windows cover each pixel along one side: a float tensor of ``length`` values."""
    counts = torch.zeros(length)
    extent = min(tile, length)
    for start in starts:
        counts[start:start + extent] += 1
    return counts


def tiled_bands(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tiling: Tiling,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Averaged probabilities of ``image`` ``(3, H, W)`` in horizontal bands, top to bottom.

    ``predict`` maps a batch of windows ``(n, 3, h, w)`` to probabilities ``(n, C, h, w)``;
    ``prepare``, when given, is applied to each batch of windows first (e.g. to normalize a uint8
    image window by window, so the whole image is never held as floats). Yields ``(top, band)``
    with ``band`` of shape ``(C, rows, W)``: the finished rows ``top .. top + rows - 1``. The
    bands together cover every row once.
    """
    height, width = image.shape[-2:]
    tile_h, tile_w = min(tiling.tile[0], height), min(tiling.tile[1], width)
    ys = window_starts(height, tiling.tile[0], tiling.stride[0])
    xs = window_starts(width, tiling.tile[1], tiling.stride[1])
    rows_count, cols_count = coverage(height, tile_h, ys), coverage(width, tile_w, xs)
    band: torch.Tensor | None = None  # (C, tile height, W); C is known after the first window
    top = 0
    for y in ys:
        if band is not None and y > top:  # rows above y are finished: no later window reaches them
            done = y - top
            yield from _finished(band, done, top, rows_count, cols_count)
            _move_up(band, done)
            top = y
        for first in range(0, len(xs), tiling.batch):
            starts = xs[first:first + tiling.batch]
            windows = torch.stack([image[:, y:y + tile_h, x:x + tile_w] for x in starts])
            probs = predict(prepare(windows) if prepare is not None else windows)
            if band is None:
                band = probs.new_zeros(probs.shape[1], tile_h, width)
            for x, window_probs in zip(starts, probs, strict=True):
                band[:, :, x:x + tile_w] += window_probs
    assert band is not None  # there is always a first window
    yield from _finished(band, height - top, top, rows_count, cols_count)


def _move_up(band: torch.Tensor, rows: int) -> None:
    """Shift ``band`` up by ``rows`` rows in place and zero the rows freed at the bottom.

    The kept rows are copied top down in pieces of at most ``rows`` rows, so a piece's source
    never overlaps its destination and no temporary copy is needed."""
    kept = band.shape[1] - rows
    for start in range(0, kept, rows):
        stop = min(start + rows, kept)
        band[:, start:stop] = band[:, start + rows:stop + rows]
    band[:, max(kept, 0):] = 0


def _finished(band: torch.Tensor, rows: int, top: int, rows_count: torch.Tensor,
              cols_count: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """The first ``rows`` rows of ``band`` (image rows from ``top``) divided by their window
    counts, in pieces of at most :data:`ROWS_PER_PIECE` rows, so the averaged copy stays small."""
    for start in range(0, rows, ROWS_PER_PIECE):
        stop = min(start + ROWS_PER_PIECE, rows)
        counts = (rows_count[top + start:top + stop].to(band.device)[:, None]
                  * cols_count.to(band.device)[None, :])
        yield top + start, band[:, start:stop] / counts


def label_dtype(num_classes: int) -> torch.dtype:
    """The smallest dtype of the class ids of ``num_classes`` classes: uint8 up to 256, int32
    beyond (torch's uint16 lacks most operations)."""
    return torch.uint8 if num_classes <= 256 else torch.int32


def tiled_labels(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tiling: Tiling,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The arg-max class of every pixel of ``image`` ``(3, H, W)`` under tiled inference.

    Returns an ``(H, W)`` tensor, uint8 for up to 256 classes (int32 beyond), so the one buffer
    the size of the image is as small as the class count allows.
    """
    labels: torch.Tensor | None = None
    for top, band in tiled_bands(predict, image, tiling, prepare):
        if labels is None:
            labels = torch.empty(image.shape[-2:], dtype=label_dtype(band.shape[0]),
                                 device=band.device)
        labels[top:top + band.shape[1]] = band.argmax(dim=0).to(labels.dtype)
    assert labels is not None  # there is always a band
    return labels

