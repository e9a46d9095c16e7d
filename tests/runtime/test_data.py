"""Tests of runtime.data: layouts on disk, the synthetic set, transforms, loaders, bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import runkit
import torch
from PIL import Image

from runtime.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SyntheticSegmentation,
    bootstrap_indices,
    build_loader,
    class_ids,
    class_presence,
    colorize,
    denormalize,
    eval_transform,
    has_labelled_pixel,
    open_dataset,
    palette,
    train_transform,
)
from runtime.data.layouts import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from runtime.data.transforms import RandomDiscreteScale
from specc.errors import DataError


def label_with(values: list[int], height: int = 24, width: int = 32) -> np.ndarray:
    """A label map cycling through ``values`` row by row (as the conftest trees are written)."""
    return np.resize(np.asarray(values, dtype=np.uint8), height * width).reshape(height, width)


# ---------------------------------------------------------------------------- layouts on disk


def test_voc_palette_index_is_the_label(trees: dict[str, Path], kit: SimpleNamespace) -> None:
    ds = open_dataset(f"voc:{trees['voc']}", "train", 21)
    assert (len(ds), ds.num_classes, ds.ignore_index) == (1, 21, 255)
    assert ds.class_names == VOC_CLASSES
    image, label = ds[0]
    assert image.mode == "RGB" and image.size == (kit.W, kit.H)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, kit.VOC_LABEL)
    assert len(open_dataset(f"voc:{trees['voc']}", "trainval", 21)) == 2


def test_voc_train_aug_reads_sbd_labels_and_path_style_lists(trees: dict[str, Path]) -> None:
    ds = open_dataset(f"voc:{trees['voc']}", "train_aug", 21)
    assert [p[0].name for p in ds.pairs] == ["a.jpg", "c.jpg"]  # sorted
    assert all(p[1].parent.name == "SegmentationClassAug" for p in ds.pairs)
    assert set(np.unique(ds[1][1])) == {0, 9}


def test_cityscapes_label_ids_map_to_train_ids(
    trees: dict[str, Path], kit: SimpleNamespace
) -> None:
    ds = open_dataset(f"cityscapes:{trees['cityscapes']}", "train", 19)
    assert ds.class_names == CITYSCAPES_CLASSES
    assert [p[0].name for p in ds.pairs] == sorted(p[0].name for p in ds.pairs)
    _, label = ds[0]
    expected = {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 4: 255, 255: 255, 1: 255}
    for raw, train_id in expected.items():
        assert (label[np.equal(kit.CITYSCAPES_RAW, raw)] == train_id).all(), raw


def test_ade20k_shifts_labels_and_ignores_zero(
    trees: dict[str, Path], kit: SimpleNamespace
) -> None:
    assert len(ADE20K_CLASSES) == 150
    for split in ("train", "val", "validation"):
        ds = open_dataset(f"ade20k:{trees['ade20k']}", split, 150)
        _, label = ds[0]
        for raw, train_id in {0: 255, 1: 0, 2: 1, 150: 149}.items():
            assert (label[np.equal(kit.ADE_RAW, raw)] == train_id).all(), raw


def test_folder_layout_with_classes_txt(trees: dict[str, Path]) -> None:
    ds = open_dataset(f"folder:{trees['folder']}", "train", 3)
    assert ds.class_names == ("sky", "grass", "rock")
    assert [p[0].name for p in ds.pairs] == ["x.jpg", "y.png"]
    np.testing.assert_array_equal(ds[0][1], label_with([0, 1, 2]))
    np.testing.assert_array_equal(ds.load_label(1), label_with([0, 255]))


def test_folder_layout_without_classes_txt(make_tree: Callable[..., Path]) -> None:
    root = make_tree("folder", labels={"a": label_with([0, 4])})
    ds = open_dataset(f"folder:{root}", "train", 5)
    assert ds.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")


def test_palette_and_colorize() -> None:
    colors = palette()
    assert colors.shape == (256, 3)
    assert colors[1].tolist() == [128, 0, 0] and colors[255].tolist() == [224, 224, 192]
    img = colorize(np.array([[0, 1], [15, 255]]))
    assert img.mode == "P" and np.asarray(img).tolist() == [[0, 1], [15, 255]]
    assert img.convert("RGB").getpixel((0, 1)) == tuple(colors[15])


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed_split_and_index() -> None:
    a, b = SyntheticSegmentation("train", seed=3), SyntheticSegmentation("train", seed=3)
    img_a, lab_a = a[5]
    img_b, lab_b = b[5]
    np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_b))
    np.testing.assert_array_equal(lab_a, lab_b)
    assert not np.array_equal(np.asarray(SyntheticSegmentation("train", seed=4)[5][0]), img_a)
    assert not np.array_equal(np.asarray(SyntheticSegmentation("val", seed=3)[5][0]), img_a)
    assert not np.array_equal(np.asarray(a[6][0]), img_a)


@pytest.mark.parametrize("num_classes", [2, 8, 21])
def test_synthetic_covers_every_class_with_ignore_borders(num_classes: int) -> None:
    ds = open_dataset("synthetic", "train", num_classes, synthetic_size=96, synthetic_length=60)
    assert (len(ds), ds.num_classes, ds.class_names[0]) == (60, num_classes, "background")
    image, label = ds[0]
    assert image.size == (96, 96) and label.shape == (96, 96)
    present = class_presence(ds).any(axis=0)
    assert present.all()
    assert set(np.unique(label)) <= {*range(num_classes), 255}
    # The ignore band surrounds objects: no background pixel has an object pixel among its
    # 8 neighbours, the band of 255 always lies between them.
    padded = np.pad(label, 1, constant_values=255)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 97 + dy, 1 + dx : 97 + dx]
            assert not ((label == 0) & (neighbour > 0) & (neighbour < 255)).any()
    assert (label == 255).any()


def test_synthetic_rejects_unknown_split() -> None:
    with pytest.raises(DataError, match="test"):
        open_dataset("synthetic", "test", 8)


# ---------------------------------------------------------------------------- transforms


def _sample(height: int, width: int, values: list[int]) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image, label_with(values, height, width)


def test_discrete_scale_set() -> None:
    assert RandomDiscreteScale(0.5, 2.0, 0.25).scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


@pytest.mark.parametrize("size", [(20, 30), (64, 64), (150, 90)])
def test_train_transform_output_is_crop_sized(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    transform = train_transform(48)
    for _ in range(5):
        image, label = transform(_sample(*size, [0, 3, 7, 255]))
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert label.shape == (48, 48) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= {0, 3, 7, 255}  # nearest: no new values


def test_padding_uses_mean_colour_and_ignore_label() -> None:
    transform = train_transform((40, 50), min_scale=1.0, max_scale=1.0, flip=False)
    image, label = transform(_sample(20, 30, [1, 2]))
    # pad is at the bottom/right; the random crop of a 40x50 padded image is the whole image
    assert (label[20:, :] == 255).all() and (label[:, 30:] == 255).all()
    assert set(label[:20, :30].unique().tolist()) == {1, 2}
    restored = denormalize(image, IMAGENET_MEAN, IMAGENET_STD)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    assert torch.allclose(restored[:, 20:, :].reshape(3, -1), mean, atol=1 / 255)
    assert torch.allclose(restored[:, :, 30:].reshape(3, -1), mean, atol=1 / 255)


def test_flip_moves_image_and_label_together() -> None:
    torch.manual_seed(1)
    pixels = np.zeros((16, 24, 3), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0)  # red third on the left: asymmetric
    pixels[:, 8:] = (0, 0, 255)
    label = np.where(np.arange(24) < 8, 1, 2).astype(np.uint8)[None, :].repeat(16, axis=0)
    transform = train_transform((16, 24), min_scale=1.0, max_scale=1.0)
    orientations = set()
    for _ in range(12):
        image, out = transform((Image.fromarray(pixels), label))
        red = denormalize(image, IMAGENET_MEAN, IMAGENET_STD)[0] > 0.5
        assert torch.equal(red, out == 1)
        orientations.add(bool(out[0, 0] == 1))
    assert orientations == {True, False}


def test_eval_transform_normalizes_and_optionally_pads() -> None:
    image, label = eval_transform()(_sample(20, 30, [0, 5]))
    assert image.shape == (3, 20, 30) and label.shape == (20, 30)
    image, label = eval_transform(32)(_sample(20, 30, [0, 5]))
    assert image.shape == (3, 32, 32) and (label[20:] == 255).all()
    assert set(label[:20, :30].unique().tolist()) == {0, 5}


# ---------------------------------------------------------------------------- loaders


def test_build_loader_batches_and_is_repeatable() -> None:
    ds = SyntheticSegmentation("train", num_classes=4, image_size=40, length=10)
    batches = []
    for _ in range(2):
        loader = build_loader(ds, train_transform(32), 4, True, 1, seed=7)
        batches.append(next(iter(loader)))
        assert len(loader) == 2  # drop_last follows shuffle: 10 // 4
    (x1, y1), (x2, y2) = batches
    assert x1.shape == (4, 3, 32, 32) and y1.shape == (4, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(build_loader(ds, eval_transform(), 4, False, 0, seed=0)) == 3


def _counting_reads(ds: object, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices of the labels ``ds`` reads from now on."""
    read: list[int] = []
    real = type(ds).load_label
    monkeypatch.setattr(type(ds), "load_label", lambda self, i: read.append(i) or real(self, i))
    return read


def test_has_labelled_pixel_stops_at_the_first_labelled_label(
    make_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    void = label_with([255])
    root = make_tree("folder", labels={"a": label_with([0, 255]), "b": void, "c": label_with([2])})
    ds = open_dataset(f"folder:{root}", "train", 3)
    read = _counting_reads(ds, monkeypatch)
    assert has_labelled_pixel(ds) and read == [0]  # one label, no image: the usual cost
    read.clear()
    assert has_labelled_pixel(ds, ignore_index=2) and read == [0]
    masks = root / "masks" / "train"
    Image.fromarray(void).save(masks / "a.png")
    Image.fromarray(label_with([0, 255])).save(masks / "c.png")
    assert not has_labelled_pixel(ds, ignore_index=0)  # only 0 (ignored here) and 255 left
    assert has_labelled_pixel(ds)  # class 0 in the last label


def test_has_labelled_pixel_uses_the_class_presence_table(
    make_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree("folder", labels={"a": label_with([255]), "b": label_with([255])})
    ds = open_dataset(f"folder:{root}", "train", 3)
    class_presence(ds)  # as hard-image bootstrapping makes it
    read = _counting_reads(ds, monkeypatch)
    assert not has_labelled_pixel(ds) and read == []


def test_bootstrap_repeats_images_with_hard_classes(make_tree: Callable[..., Path]) -> None:
    labels = {"a": label_with([0, 1]), "b": label_with([0, 2]), "c": label_with([0, 1, 3])}
    root = make_tree("folder", labels=labels, classes=["bg", "easy", "hard", "other"])
    ds = open_dataset(f"folder:{root}", "train", 4)
    presence = class_presence(ds)
    assert presence.tolist() == [
        [True, True, False, False],
        [True, False, True, False],
        [True, True, False, True],
    ]
    assert class_presence(ds) is presence  # cached: labels read once
    assert bootstrap_indices(ds, class_ids(ds, ["hard", "other"]), repeat=3) == [
        0,
        1,
        1,
        1,
        2,
        2,
        2,
    ]
    assert bootstrap_indices(ds, [], repeat=3) == [0, 1, 2]
    with pytest.raises(DataError, match="9"):
        bootstrap_indices(ds, [9])
    with pytest.raises(DataError, match="chair"):
        class_ids(ds, ["chair"])


# ---------------------------------------------------------------------------- bad input


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_voc"
    for scheme, n in [("voc", 21), ("cityscapes", 19), ("ade20k", 150), ("folder", 3)]:
        with pytest.raises(DataError, match="no_such_voc"):
            open_dataset(f"{scheme}:{missing}", "train", n)


def test_missing_split_list(make_tree: Callable[..., Path]) -> None:
    root = make_tree("voc")
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt"):
        open_dataset(f"voc:{root}", "val", 21)


def test_missing_listed_image(make_tree: Callable[..., Path]) -> None:
    root = make_tree("voc")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.jpg"):
        open_dataset(f"voc:{root}", "val", 21)


def test_missing_mask(make_tree: Callable[..., Path]) -> None:
    root = make_tree("cityscapes")
    next((root / "gtFine").rglob("aachen_000001_*")).unlink()
    with pytest.raises(DataError, match="aachen_000001_000019_gtFine_labelIds"):
        open_dataset(f"cityscapes:{root}", "train", 19)


def test_truncated_jpeg(make_tree: Callable[..., Path], kit: SimpleNamespace) -> None:
    root = make_tree("voc")
    path = kit.write_image(root / "JPEGImages" / "a.jpg", 64, 64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = open_dataset(f"voc:{root}", "train", 21)
    with pytest.raises(DataError, match=r"a\.jpg.*truncated"):
        ds[0]


def test_label_value_outside_classes(make_tree: Callable[..., Path]) -> None:
    root = make_tree("voc", train_label=label_with([0, 30, 255]))
    ds = open_dataset(f"voc:{root}", "train", 21)
    with pytest.raises(DataError, match=r"a\.png: label values 30 "):
        ds[0]


def test_ade20k_value_above_150(make_tree: Callable[..., Path], kit: SimpleNamespace) -> None:
    root = make_tree("ade20k")
    kit.write_label(
        root / "annotations" / "training" / "ADE_training_00000001.png", label_with([151])
    )
    with pytest.raises(DataError, match=r"ADE_training_00000001\.png: label values 151"):
        open_dataset(f"ade20k:{root}", "train", 150)[0]


def test_rgb_label_png(make_tree: Callable[..., Path], kit: SimpleNamespace) -> None:
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    kit.write_image(root / "masks" / "train" / "a.png")
    with pytest.raises(DataError, match=r"a\.png: .*mode 'RGB'"):
        open_dataset(f"folder:{root}", "train", 2)[0]


def test_size_mismatch(make_tree: Callable[..., Path], kit: SimpleNamespace) -> None:
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    kit.write_label(root / "masks" / "train" / "a.png", label_with([0, 1], kit.H + 1, kit.W))
    with pytest.raises(DataError, match=r"a\.png: label is 32x25 .*a\.jpg is 32x24"):
        open_dataset(f"folder:{root}", "train", 2)[0]


@pytest.mark.parametrize(
    ("scheme", "expected", "given"), [("voc", 21, 19), ("cityscapes", 19, 21), ("ade20k", 150, 151)]
)
def test_class_count_mismatch(
    trees: dict[str, Path], scheme: str, expected: int, given: int
) -> None:
    with pytest.raises(DataError) as err:
        open_dataset(f"{scheme}:{trees[scheme]}", "train", given)
    message = str(err.value)
    assert str(trees[scheme]) in message
    assert f"{expected} classes" in message and f"expects {given}" in message


def test_classes_txt_mismatch(trees: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"classes\.txt: lists 3 classes but the model expects 5"):
        open_dataset(f"folder:{trees['folder']}", "train", 5)


def test_classes_txt_with_a_name_twice_is_refused(
    make_tree: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    (root / "classes.txt").write_text("sky\ngrass\n\nrock\n grass \n")
    expected = (f"{root / 'classes.txt'}:5: the class name 'grass' is listed twice (first on "
                "line 2); expected each class once")
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train", 4)
    assert str(err.value) == expected
    code, _, stderr = runkit.cli(["class-weights", runkit.SPEC, "--data", f"folder:{root}",
                                  *runkit.sets([*runkit.TINY, "num_classes=4"])], capsys)
    assert code == 2 and stderr.strip() == f"error: {expected}"


def test_folder_skips_hidden_files_and_reads_gif(make_tree: Callable[..., Path], kit) -> None:
    """macOS's ._NAME companions and other hidden files are not samples; GIF images are."""
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    images, masks = root / "images" / "train", root / "masks" / "train"
    (images / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (images / ".hidden.png").write_bytes(b"")
    Image.open(next(images.glob("a.*"))).convert("P").save(images / "b.gif")
    kit.write_label(masks / "b.png", label_with([1, 0]))
    ds = open_dataset(f"folder:{root}", "train", 2)
    assert len(ds) == 2 and ds[1][0].size == ds[0][0].size


def test_folder_mask_of_another_suffix_or_a_folder_is_named(
        make_tree: Callable[..., Path]) -> None:
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    masks = root / "masks" / "train"
    (masks / "a.png").rename(masks / "a.PNG")
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{root}", "train", 2)
    assert str(err.value).startswith(f"{masks / 'a.png'}: label file not found; found a.PNG, "
                                     "expected the name a.png")
    (masks / "a.PNG").unlink()
    (masks / "a.png").mkdir()
    with pytest.raises(DataError, match=r"a\.png: a folder, where the label file should be"):
        open_dataset(f"folder:{root}", "train", 2)


def test_classes_txt_with_a_byte_order_mark(make_tree: Callable[..., Path]) -> None:
    """Saved by a Windows editor: the mark is not part of the first class's name."""
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    (root / "classes.txt").write_bytes("background\r\nsky\r\n".encode("utf-8-sig"))
    assert open_dataset(f"folder:{root}", "train", 2).class_names == ("background", "sky")


@pytest.mark.parametrize("num_classes", [256, 300])
def test_more_classes_than_8_bit_masks_hold_is_refused(
    make_tree: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    num_classes: int
) -> None:
    """Masks hold train ids 0..254 beside the ignore label 255: at 256 classes the last one is
    ignored wherever it is labelled, past that the lookup table ran out (an IndexError)."""
    root = make_tree("folder", labels={"a": label_with([0, 1])})
    limit = ("num_classes must be at most 255, got {} (masks hold train ids 0..254 in 8 bits "
             "and 255 is the ignore label)")
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run",
                               *runkit.sets([*runkit.TINY, f"num_classes={num_classes}",
                                             f"data.source=folder:{root}"])], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: folder:{root}: {limit.format(num_classes)}"
    with pytest.raises(DataError) as synthetic:
        open_dataset("synthetic", "train", num_classes)
    assert str(synthetic.value) == f"synthetic: {limit.format(num_classes)}"
    assert open_dataset(f"folder:{root}", "train", 255).num_classes == 255


@pytest.mark.parametrize("source", ["coco:/data/coco", "synthetic:foo", "voc", "VOC:/x", ""])
def test_unknown_source(source: str) -> None:
    with pytest.raises(DataError) as err:
        open_dataset(source, "train", 21)
    assert repr(source) in str(err.value)
    assert "synthetic, voc:PATH, cityscapes:PATH, ade20k:PATH, folder:PATH" in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_check_data_names_every_unreadable_sample_and_unlabelled_class(
        workers: int, tmp_path: Path, kit, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated image and a mask of another size in one split: both are named (training
    would have stopped at the first, when its turn came), exit 2; class 2 is in no mask."""
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for i in range(4):
            kit.write_image(root / "images" / split / f"{i}.png", 24, 32, seed=i)
            kit.write_label(root / "masks" / split / f"{i}.png", label_with([0, 1]))
    cut = root / "images" / "train" / "1.png"
    cut.write_bytes(cut.read_bytes()[:200])
    kit.write_label(root / "masks" / "train" / "3.png", label_with([0, 1], height=20))
    code, out, err = runkit.cli(["check-data", runkit.SPEC, "--data", f"folder:{root}",
                                 *runkit.sets([*runkit.TINY, "num_classes=3",
                                               f"train.workers={workers}"])], capsys)
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == f"folder:{root} (train): 4 samples, 2 unreadable"
    assert lines[1].startswith(f"  {cut}: ") and "truncated" in lines[1]
    assert lines[2].startswith(f"  {root / 'masks' / 'train' / '3.png'}")
    assert lines[3] == ("  note: 1 of 3 classes have no labelled pixel here: 2 (class_2) (255 in "
                        "a mask is the ignore label, not a class)")
    assert lines[4] == f"folder:{root} (val): 4 samples, all readable"
    assert err.strip() == ("error: 2 sample(s) cannot be read; fix or remove the files named "
                           "above")
