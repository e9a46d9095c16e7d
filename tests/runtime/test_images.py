"""Images and label masks of every mode Pillow opens: read at their true scale, or refused by name.

Each case writes a small file on disk in one mode and compares what the reader returns with the
value the mode's bit depth says it holds (16-bit grey over 65535, float grey as 0..1), so a
reader that clips (16-bit to white) or truncates (float to black) fails here.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.data import eval_transform, open_dataset
from runtime.data.base import identity_table, read_image, read_label
from specc.errors import DataError

GREY16 = np.array([[0, 257, 1000], [32768, 50000, 65535]], dtype=np.uint16)
FLOAT = np.array([[0.0, 0.1, 0.25], [0.5, 0.9, 1.0]], dtype=np.float32)


def png16(path: Path, pixels: np.ndarray, color_type: int) -> Path:
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit colour): ``pixels`` is (H, W, C)."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def unit(image: Image.Image) -> np.ndarray:
    """The image as the model sees it before normalization: (H, W, 3) floats in 0..1."""
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.float64) / 255.0


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[..., None], 3, axis=2)


def test_16_bit_grey_png_is_scaled_by_65535(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(GREY16).save(path)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_allclose(unit(read_image(path)), grey(GREY16 / 65535), atol=0.5 / 255)


def test_32_bit_integer_tiff_in_the_16_bit_range_is_scaled_by_65535(tmp_path: Path) -> None:
    path = tmp_path / "i32.tif"
    Image.fromarray(GREY16.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_allclose(unit(read_image(path)), grey(GREY16 / 65535), atol=0.5 / 255)


def test_float_tiff_is_read_as_0_to_1(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(FLOAT).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_allclose(unit(read_image(path)), grey(FLOAT), atol=0.5 / 255)


@pytest.mark.parametrize(("values", "found"), [
    (np.array([[0.0, 2.5]], np.float32), "from 0 to 2.5"),
    (np.array([[-1.0, 0.5]], np.float32), "from -1 to 0.5"),
    (np.array([[np.nan, 0.5]], np.float32), "not finite"),
])
def test_float_values_outside_0_to_1_are_refused_naming_the_file(
    tmp_path: Path, values: np.ndarray, found: str
) -> None:
    path = tmp_path / "bad.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(DataError, match=rf"bad\.tif: mode 'F' image holds values .*{found}.*"
                                        r"floating-point images are read as 0\.\.1"):
        read_image(path)


def test_integer_values_past_16_bits_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
    with pytest.raises(DataError, match=r"wide\.tif: mode 'I' image holds values from 0 to 70000; "
                                        r"16-bit grey is read as 0\.\.65535"):
        read_image(path)


def test_16_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    pixels = np.array([[[65535, 32768, 257], [1000, 20000, 40000]]], dtype=np.uint16)
    path = png16(tmp_path / "rgb16.png", pixels, color_type=2)
    np.testing.assert_allclose(unit(read_image(path)), pixels / 65535, atol=1 / 255)


def test_16_bit_grey_with_alpha_png_keeps_its_grey(tmp_path: Path) -> None:
    pixels = np.array([[[40000, 65535], [65535, 0]]], dtype=np.uint16)
    path = png16(tmp_path / "la16.png", pixels, color_type=4)
    np.testing.assert_allclose(unit(read_image(path)), grey(pixels[..., 0] / 65535), atol=1 / 255)


EIGHT_BIT = [  # mode, pixel written, suffix, the RGB it must read as
    ("L", 200, "png", (200, 200, 200)),
    ("LA", (90, 10), "png", (90, 90, 90)),
    ("1", 1, "png", (255, 255, 255)),
    ("RGBA", (10, 20, 30, 0), "png", (10, 20, 30)),
    ("CMYK", (0, 255, 255, 0), "tif", (255, 0, 0)),
    ("YCbCr", (76, 85, 255), "tif", (254, 0, 0)),
    ("LAB", (255, 128, 128), "tif", (254, 255, 254)),
]


@pytest.mark.parametrize(("mode", "pixel", "suffix", "rgb"), EIGHT_BIT,
                         ids=[case[0] for case in EIGHT_BIT])
def test_8_bit_modes_read_as_their_colour(
    tmp_path: Path, mode: str, pixel: object, suffix: str, rgb: tuple[int, int, int]
) -> None:
    path = tmp_path / f"x.{suffix}"
    Image.new(mode, (3, 2), pixel).save(path)  # type: ignore[arg-type]
    assert Image.open(path).mode == mode
    read = np.asarray(read_image(path))
    assert read.shape == (2, 3, 3)
    np.testing.assert_allclose(read[0, 0], rgb, atol=2)


def test_palette_image_reads_its_palette_colours(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    img = Image.fromarray(np.array([[0, 1]], np.uint8), mode="L").convert("P")
    img.putpalette([0, 0, 0, 250, 100, 5] + [0] * 762)
    img.info["transparency"] = 0
    img.save(path, transparency=0)
    assert np.asarray(read_image(path)).tolist() == [[[0, 0, 0], [250, 100, 5]]]


def test_16_bit_image_reaches_the_model_at_its_scale(tmp_path: Path) -> None:
    """The whole evaluation path: a mid-grey 16-bit image is mid-grey (0.5) before normalization."""
    path = tmp_path / "mid.png"
    Image.fromarray(np.full((4, 5), 32768, np.uint16)).save(path)
    x, _ = eval_transform(mean=(0, 0, 0), std=(1, 1, 1))((read_image(path), np.zeros((4, 5),
                                                                                        np.uint8)))
    assert x.shape == (3, 4, 5)
    assert abs(float(x.mean()) - 0.5) < 1 / 255


# ------------------------------------------------------------------------------- label masks


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_wide_integer_masks_are_class_ids(tmp_path: Path, mode: str) -> None:
    labels = np.array([[0, 1, 2], [255, 1, 0]])
    path = tmp_path / ("m.png" if mode == "I;16" else "m.tif")
    Image.fromarray(labels.astype(np.uint16 if mode == "I;16" else np.int32)).save(path)
    assert Image.open(path).mode == mode
    assert read_label(path, identity_table(3), 3).tolist() == labels.tolist()


def test_a_wide_mask_value_past_255_is_reported_not_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1, 258]], np.uint16)).save(path)  # 258 must not read as 2
    with pytest.raises(DataError, match=r"m\.png: label values 258 are not valid for 3 classes"):
        read_label(path, identity_table(3), 3)


def test_one_bit_masks_are_classes_0_and_1(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(path)
    assert read_label(path, identity_table(2), 2).tolist() == [[0, 1, 0]]


@pytest.mark.parametrize(("mode", "suffix", "hint"), [
    ("F", "tif", ""), ("RGB", "png", "a colour mask"), ("LA", "png", ""),
])
def test_float_and_colour_masks_are_refused(tmp_path: Path, mode: str, suffix: str,
                                            hint: str) -> None:
    path = tmp_path / f"m.{suffix}"
    Image.new(mode, (3, 2)).save(path)
    with pytest.raises(DataError, match=rf"m\.{suffix}: label images must hold class ids in one "
                                        rf"integer channel .*found mode '{mode}'.*{hint}"):
        read_label(path, identity_table(2), 2)


def test_folder_layout_reads_16_bit_tiff_images(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "images/train/a.tif")
    Image.fromarray(np.ones((4, 5), np.uint8)).save(tmp_path / "masks/train/a.png")
    image, label = open_dataset(f"folder:{tmp_path}", "train", 2)[0]
    assert np.asarray(image).min() == 255 and label.tolist() == np.ones((4, 5)).tolist()


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 (turn 90° clockwise to show) is read as
    shown: 140 wide and 100 high becomes 100 wide and 140 high, pixel for pixel as Pillow's
    transpose puts them; a mask with the tag is turned the same way, so the two still match."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "photo.png", exif=exif.tobytes())
    shown = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    read = np.asarray(read_image(tmp_path / "photo.png"))
    assert read.shape == (140, 100, 3) and np.array_equal(read, shown)

    labels = rng.integers(0, 4, (100, 140), dtype=np.uint8)
    mask = Image.fromarray(labels)
    mask.save(tmp_path / "mask.png", exif=exif.tobytes())
    got = read_label(tmp_path / "mask.png", identity_table(4), 4)
    assert np.array_equal(got, np.asarray(Image.fromarray(labels).transpose(
        Image.Transpose.ROTATE_270)))
    plain = tmp_path / "plain.png"
    Image.fromarray(stored).save(plain)
    assert np.array_equal(np.asarray(read_image(plain)), stored)  # no tag: as stored
