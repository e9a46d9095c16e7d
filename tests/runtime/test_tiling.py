"""Tiled (sliding-window) inference: against untiled inference and a direct reference computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
from PIL import Image

from runtime.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, open_split
from runtime.evaluate import predict_probs, segment, window_predictor
from runtime.predict import Predictor, predict_files
from runtime.tiling import Tiling, tiled_bands, tiled_labels, tiling_from_options, window_starts
from specc.api import load_spec
from specc.errors import SpeccError


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    return runkit.random_network()


def reference_window_average(model: torch.nn.Module, image: torch.Tensor, tile: int, stride: int,
                             scales: tuple[float, ...] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Sliding-window probabilities written out directly: windows on a grid of ``stride``, the
    last one shifted back to end at the edge, each window's softmax added into a full-size
    buffer, divided by a full-size count map."""
    _, height, width = image.shape

    def starts(length: int) -> list[int]:
        grids = max(length - tile + stride - 1, 0) // stride + 1
        return [max(min(i * stride + tile, length) - tile, 0) for i in range(grids)]

    total = torch.zeros(runkit.NUM_CLASSES, height, width)
    count = torch.zeros(height, width)
    for y in starts(height):
        for x in starts(width):
            window = image[None, :, y:y + tile, x:x + tile]
            total[:, y:y + tile, x:x + tile] += predict_probs(model, window, scales, flip)[0]
            count[y:y + tile, x:x + tile] += 1
    assert count.min() > 0
    return total / count


def tiled_probs(model: torch.nn.Module, image: torch.Tensor, tiling: Tiling,
                scales: tuple[float, ...] = (1.0,), flip: bool = False) -> torch.Tensor:
    """The bands of :func:`tiled_bands` put together, checking that they follow each other."""
    parts, expected_top = [], 0
    for top, band in tiled_bands(window_predictor(model, scales, flip), image, tiling):
        assert top == expected_top
        parts.append(band)
        expected_top += band.shape[1]
    assert expected_top == image.shape[1]
    return torch.cat(parts, dim=1)


def test_window_starts_cover_every_pixel_and_stay_inside() -> None:
    assert window_starts(150, 65, 43) == [0, 43, 85]
    assert window_starts(108, 65, 43) == [0, 43]
    assert window_starts(65, 65, 43) == [0]
    assert window_starts(40, 65, 43) == [0]
    for length in range(1, 200, 7):
        starts = window_starts(length, 33, 20)
        covered = np.zeros(length, bool)
        for s in starts:
            assert s >= 0 and s + min(33, length) <= length
            covered[s:s + 33] = True
        assert covered.all()


@torch.inference_mode()
def test_tile_covering_the_image_equals_untiled(model: torch.nn.Module) -> None:
    image = torch.randn(3, 57, 61)
    untiled = predict_probs(model, image[None])[0]
    for tile in ((57, 61), (65, 65), (200, 70)):
        tiled = tiled_probs(model, image, Tiling(tile, (20, 20)))
        assert torch.equal(tiled, untiled)


@torch.inference_mode()
@pytest.mark.parametrize(("height", "width", "stride"), [
    (90, 150, 43), (108, 65, 43), (40, 150, 43), (130, 47, 43), (150, 90, 20)])
def test_tiled_equals_direct_window_average(model: torch.nn.Module, height: int, width: int,
                                            stride: int) -> None:
    # sizes not multiples of the stride, exact multiples, a side smaller than the tile, and an
    # overlap of more than half the tile (the band keeps more rows than it hands out)
    image = torch.randn(3, height, width)
    tiled = tiled_probs(model, image, Tiling((65, 65), (stride, stride), batch=2))
    reference = reference_window_average(model, image, 65, stride)
    assert tiled.shape == (runkit.NUM_CLASSES, height, width)
    assert torch.allclose(tiled, reference, atol=1e-6)
    assert torch.allclose(tiled.sum(0), torch.ones(height, width), atol=1e-5)


@torch.inference_mode()
def test_tiled_combines_with_scales_and_flip(model: torch.nn.Module) -> None:
    image = torch.randn(3, 80, 100)
    scales = (0.75, 1.25)
    tiled = tiled_probs(model, image, Tiling((65, 65), (40, 40)), scales, flip=True)
    reference = reference_window_average(model, image, 65, 40, scales, flip=True)
    assert torch.allclose(tiled, reference, atol=1e-6)
    labels = segment(model, image[None], scales, True, tiling=Tiling((65, 65), (40, 40)))
    assert torch.equal(labels[0], reference.argmax(0))


@torch.inference_mode()
def test_memory_is_bounded_by_the_tile(model: torch.nn.Module) -> None:
    """The model sees at most ``batch`` windows of the tile size, and every band handed out is
    at most a tile high: nothing of C × H × W is ever made."""
    seen: list[tuple[int, ...]] = []
    predict = window_predictor(model, (1.0,), False)

    def recording(windows: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(windows.shape))
        return predict(windows)

    image = torch.randn(3, 150, 170)
    tiling = Tiling((33, 33), (22, 22), batch=3)
    bands = [band.shape for _, band in tiled_bands(recording, image, tiling)]
    assert all(shape[0] <= 3 and shape[-2:] == (33, 33) for shape in seen)
    assert len(seen) == len(window_starts(150, 33, 22)) * -(-len(window_starts(170, 33, 22)) // 3)
    assert all(shape[1] <= 33 and shape[2] == 170 for shape in bands)
    labels = tiled_labels(predict, image, tiling)
    assert labels.dtype == torch.uint8
    assert torch.equal(labels.long(), tiled_probs(model, image, tiling).argmax(0))


def test_tiling_options() -> None:
    assert tiling_from_options(None, None, (513, 513)) is None
    auto = tiling_from_options("auto", None, (129, 97))
    assert auto is not None and auto.tile == (129, 97) and auto.stride == (86, 65)
    assert tiling_from_options("64", 0.5, (1, 1)) == Tiling((64, 64), (32, 32))
    assert tiling_from_options("32x48", 0.0, (1, 1)) == Tiling((32, 48), (32, 48))
    for tile, overlap, fragment in (("0", None, "--tile"), ("big", None, "--tile"),
                                    ("3x4x5", None, "--tile"), ("64", 1.0, "--overlap"),
                                    ("64", -0.1, "--overlap"), (None, 0.5, "--overlap")):
        with pytest.raises(SpeccError, match=fragment):
            tiling_from_options(tile, overlap, (65, 65))


# ---------------------------------------------------------------------------------------------
# specc predict / specc eval with --tile


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runkit.base_run(tmp_path_factory)


def _predict(trained: Path, image: Path, out: Path, capsys: pytest.CaptureFixture[str],
             *tile: str) -> np.ndarray:
    code, _, err = runkit.cli(["predict", runkit.SPEC, image, "--checkpoint", trained,
                               "--out", out, *tile, *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    return np.asarray(Image.open(out / f"{image.stem}_mask.png"))


def test_predict_tiled(trained: Path, model: torch.nn.Module, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    # a mosaic of synthetic validation images, larger than the tile
    dataset = open_split(load_spec(runkit.SPEC, runkit.TINY).spec, "val")
    tiles = [np.asarray(dataset[i][0]) for i in range(6)]
    mosaic = np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(mosaic[:50, :60]).save(small)
    Image.fromarray(mosaic[:100, :140]).save(large)
    # through the command line, a tile that covers the image: the same mask as without tiling
    plain = _predict(trained, small, tmp_path / "plain", capsys)
    assert np.array_equal(plain, _predict(trained, small, tmp_path / "t", capsys, "--tile", "65"))
    # the larger image: the mask is the arg-max of the window average
    predictor = Predictor(model, IMAGENET_MEAN, IMAGENET_STD, "random weights")
    tiling = tiling_from_options("65", 0.4, (1, 1))
    assert tiling is not None and tiling.stride == (39, 39)
    predict_files(predictor, [large], tmp_path / "large", tiling=tiling,
                  device=torch.device("cpu"))
    mask = np.asarray(Image.open(tmp_path / "large" / "large_mask.png"))
    x, _ = eval_transform()((Image.open(large).convert("RGB"), np.zeros((100, 140), np.uint8)))
    with torch.inference_mode():
        reference = reference_window_average(model, x, 65, 39)
    assert mask.shape == (100, 140)
    assert np.array_equal(mask, reference.argmax(0).numpy())
    assert len(np.unique(mask)) > 1, "a one-class mask would not show misplaced windows"


def test_eval_tiled(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def report(*args: str) -> dict:
        code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, "--json",
                                     *args, *runkit.sets(runkit.TINY)], capsys)
        assert code == 0, err
        return json.loads(out)

    plain = report()
    covering = report("--tile", "auto")  # input.size 513 covers the 64 px images
    assert covering["miou"] == plain["miou"] and covering["tile"]["size"] == [513, 513]
    tiled = report("--tile", "33", "--overlap", "0.5")
    assert tiled["tile"] == {"size": [33, 33], "stride": [17, 17]}
    assert 0.0 <= tiled["miou"] <= 1.0 and plain["tile"] is None


def test_bad_tile_exits_2(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--tile", "0"], ["--overlap", "0.5"], ["--tile", "64", "--overlap", "2"]):
        code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, *args,
                                   *runkit.sets(runkit.TINY)], capsys)
        assert code == 2 and "Traceback" not in err and "--" in err
