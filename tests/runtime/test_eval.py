"""Evaluation, prediction and plotting: metrics by hand, the eval report, weights that (do not) fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
from PIL import Image

from runtime.evaluate import Alignment, alignment, evaluate, parse_scales, predict_probs
from runtime.metrics import confusion_matrix, scores
from specc.errors import SpeccError, WeightsError


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runkit.base_run(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# Metrics against a hand-computed confusion matrix

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 1, 0]])
# (target, prediction) pairs without the ignored pixel: (0,0) (0,1) (1,1) (1,1) (2,1)
CM = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])


def test_confusion_matrix_by_hand() -> None:
    assert torch.equal(confusion_matrix(PRED, TARGET, 4), CM)


def test_scores_by_hand() -> None:
    s = scores(CM)
    # IoU = TP / (TP + FP + FN): class 0: 1/(2+1-1); class 1: 2/(2+4-2); class 2: 0/(1+0-0);
    # class 3 is in neither labels nor predictions: undefined and left out of the mean.
    assert s.per_class_iou == [0.5, 0.5, 0.0, None]
    assert s.miou == pytest.approx(1 / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)
    assert s.mean_accuracy == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert s.pixels == 5


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TARGET[:1], 4)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(PRED, torch.full_like(TARGET, 7), 4)


def test_empty_matrix_is_nan() -> None:
    """No labelled pixel: NaN scores, written as JSON's null (``json`` would write ``NaN``,
    which is not JSON)."""
    empty = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(empty.miou)
    report = empty.as_dict()
    assert report["miou"] is None and report["pixel_accuracy"] is None
    assert json.loads(json.dumps(report, allow_nan=False))["per_class_iou"] == [None] * 3


class Echo(torch.nn.Module):
    """A "model" whose logits are its input: predictions are chosen by the test."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x}


def test_evaluate_matches_confusion_matrix() -> None:
    logits = torch.nn.functional.one_hot(PRED, 4).permute(2, 0, 1).float()[None] * 10
    batches = [(logits, TARGET[None])]
    s = evaluate(Echo(), batches, 4, device=torch.device("cpu"))
    assert s.per_class_iou == [0.5, 0.5, 0.0, None]


def test_multiscale_flip_averages_probabilities() -> None:
    x = torch.randn(2, 3, 17, 23)
    plain = predict_probs(Echo(), x)
    assert torch.allclose(plain, x.softmax(1))
    # flipping, predicting and flipping back is the identity for a per-pixel model
    assert torch.allclose(predict_probs(Echo(), x, flip=True), plain, atol=1e-6)
    multi = predict_probs(Echo(), x, scales=(0.5, 1.0, 1.5), flip=True)
    assert multi.shape == x.shape
    assert torch.allclose(multi.sum(1), torch.ones(2, 17, 23), atol=1e-5)


class Shapes(torch.nn.Module):
    """Logits that depend on the whole input, like image pooling does (a 3×3 box filter plus the
    image's mean: padding changes the mean); records the input sizes it was run on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(tuple(x.shape[-2:]))
        return {"out": torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
                + x.mean((2, 3), keepdim=True)}


def test_alignment_pads_to_the_training_grid() -> None:
    align = Alignment(16, (1, 1))
    assert align.padded((128, 129)) == (129, 129)
    assert align.padded((130, 17)) == (145, 17)
    assert Alignment(8, (0, 4)).padded((500, 375)) == (504, 380)
    demo = {"backbone": {"output_stride": 16}, "data": {"crop": [97, 97]},
            "input": {"size": [129, 129]}}
    assert alignment(demo) == Alignment(16, (1, 1))
    assert alignment({**demo, "data": {}}) == Alignment(16, (1, 1))  # the input size's
    assert alignment({"input": {"size": [512, 512]}}) is None  # no output stride: as it is
    # a fixed image-pooling kernel: padded up to the input size it was built for (TF's eval)
    tf = {"backbone": {"output_stride": 16}, "input": {"size": [513, 513]},
          "aspp": {"image_pooling": {"kernel": "fixed"}}}
    assert alignment(tf).padded((500, 375)) == (513, 513)
    assert alignment(tf).padded((600, 375)) == (609, 513)


def test_aligned_prediction_is_the_padded_run_cropped_back() -> None:
    x = torch.randn(2, 3, 20, 27)
    model = Shapes()
    align = Alignment(8, (1, 1))
    got = predict_probs(model, x, flip=True, align=align)
    assert model.seen == [(25, 33), (25, 33)]  # both the image and its mirror image
    padded = torch.nn.functional.pad(x, (0, 6, 0, 5))
    mirrored = torch.nn.functional.pad(x.flip(-1), (0, 6, 0, 5))
    want = (model(padded)["out"][..., :20, :27].softmax(1)
            + model(mirrored)["out"][..., :20, :27].flip(-1).softmax(1)) / 2
    assert torch.allclose(got, want, atol=1e-6)
    # the mean takes in the padding: not the unaligned run
    assert not torch.allclose(got, predict_probs(model, x, flip=True), atol=1e-4)
    # an image already on the grid runs as it is
    model.seen.clear()
    on_grid = torch.randn(1, 3, 17, 25)
    assert torch.equal(predict_probs(model, on_grid, align=align), predict_probs(model, on_grid))
    assert model.seen == [(17, 25), (17, 25)]


def test_parse_scales() -> None:
    assert parse_scales(None) == (1.0,)
    assert parse_scales("0.5, 1,1.75") == (0.5, 1.0, 1.75)
    assert parse_scales("8") == (8.0,)
    for bad in ("1,x", "0", "-1", "nan"):
        with pytest.raises(SpeccError, match="--scales"):
            parse_scales(bad)
    for huge in ("inf", "1e999", "1e6", "8.5"):  # an image that large would exhaust memory
        with pytest.raises(SpeccError, match=r"--scales: scales are at most 8 .*found"):
            parse_scales(f"1,{huge}")


# ---------------------------------------------------------------------------------------------
# specc eval


def _eval_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = runkit.cli(["eval", runkit.SPEC, *args, "--json",
                                 *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    return json.loads(out)


def test_eval_json_report(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _eval_json(["--checkpoint", str(trained)], capsys)
    assert 0.0 <= report["miou"] <= 1.0
    assert 0.0 <= report["pixel_accuracy"] <= 1.0
    assert len(report["per_class_iou"]) == runkit.NUM_CLASSES
    assert all(v is None or 0.0 <= v <= 1.0 for v in report["per_class_iou"])
    assert report["classes"][0] == "background"
    assert report["images"] == 6 and report["output_stride"] == 16
    # runkit's crop is 65 = 4·16 + 1
    assert report["padded_to"] == {"stride": 16, "remainder": [1, 1], "minimum": [1, 1]}
    # the run's own end-of-training evaluation saw the same weights and images
    final = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    assert report["miou"] == pytest.approx(final["miou"], abs=1e-9)


def test_eval_no_align_runs_images_at_their_own_size(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _eval_json(["--checkpoint", str(trained), "--no-align"], capsys)
    assert plain["padded_to"] is None and plain["images"] == 6
    assert 0.0 <= plain["miou"] <= 1.0


def test_eval_from_weights_and_torchscript_agree(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _eval_json(["--checkpoint", str(trained / "checkpoint" / "model.safetensors")], capsys)
    b = _eval_json(["--checkpoint", str(trained / "model.pt")], capsys)
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-9)
    assert a["checkpoint"].endswith("model.safetensors") and b["checkpoint"].endswith("model.pt")


def test_eval_os16_weights_at_os8_multiscale_flip(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _eval_json(["--checkpoint", str(trained), "--set", "backbone.output_stride=8",
                         "--scales", "0.75,1.0,1.25", "--flip"], capsys)
    assert report["output_stride"] == 8 and report["flip"] is True
    assert report["scales"] == [0.75, 1.0, 1.25]
    assert 0.0 <= report["miou"] <= 1.0


def test_eval_table(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained,
                                 *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    assert "mIoU" in out and "pixel accuracy" in out and "background" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("decoder.projection=8", ["wrong shape", "decoder.project"]),
        ("decoder=null", ["unexpected", "decoder."]),
    ],
)
def test_eval_weights_of_another_decoder(
    trained: Path, capsys: pytest.CaptureFixture[str], override: str, expected: list[str]
) -> None:
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained,
                               *runkit.sets([*runkit.TINY, override])], capsys)
    assert code == 2
    assert "model.safetensors" in err and "do not fit" in err
    for text in expected:
        assert text in err


def test_weights_error_lists_names(trained: Path) -> None:
    from runtime.evaluate import evaluate_checkpoint
    from specc.api import load_spec

    doc = load_spec(runkit.SPEC, [*runkit.TINY, "decoder.convs=1"])
    with pytest.raises(WeightsError, match=r"decoder\.fuse\.1"):
        evaluate_checkpoint(doc, trained)


# ---------------------------------------------------------------------------------------------
# specc predict and specc plot


def _image(path: Path, size: tuple[int, int] = (40, 56)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_writes_pngs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = _image(tmp_path / "street.jpg")
    out = tmp_path / "pred"
    code, stdout, err = runkit.cli(["predict", runkit.SPEC, img, "--checkpoint", trained,
                                    "--out", out, *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    mask, overlay = out / "street_mask.png", out / "street_overlay.png"
    assert str(mask) in stdout and str(overlay) in stdout
    with Image.open(mask) as m:
        assert m.mode == "P" and m.size == (56, 40)
        assert np.asarray(m).max() < runkit.NUM_CLASSES
    with Image.open(overlay) as o:
        assert o.mode == "RGB" and o.size == (56, 40)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_predict_with_torchscript_model(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _image(tmp_path / "a.png", (33, 47))
    code, _, err = runkit.cli(["predict", trained / "model.pt", a, a, "--out", tmp_path / "o",
                               "--scales", "0.5,1", "--flip"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "a_2_mask.png", "a_2_overlay.png", "a_mask.png", "a_overlay.png"]


def test_predict_takes_a_run_folder_for_its_model_pt(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run folder stands for its model.pt; its weights alone ask for the spec first."""
    img = _image(tmp_path / "a.png", (33, 47))
    code, _, err = runkit.cli(["predict", trained, img, "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "a_mask.png").size == (47, 33)
    weights = trained / "checkpoint" / "model.safetensors"
    code, _, err = runkit.cli(["predict", weights, img, "--out", tmp_path / "p"], capsys)
    assert code == 2
    assert err.strip() == (f"error: {weights}: weights without the spec they belong to; give the "
                           f"spec first: specc predict SPEC --checkpoint {weights} IMAGE...")
    code, _, err = runkit.cli(["predict", tmp_path, img, "--out", tmp_path / "p"], capsys)
    assert code == 2 and "this folder has no model.pt" in err


def test_predict_gives_every_image_its_own_outputs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``x.png`` and an ``x_2.png``: the second ``x`` may not take ``x_2`` (the third
    image's own name), so three images give three masks, none written over another."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    images = [_image(tmp_path / "a" / "x.png", (33, 47)), _image(tmp_path / "b" / "x.png", (33, 47)),
              _image(tmp_path / "x_2.png", (33, 47))]
    out = tmp_path / "o"
    code, stdout, err = runkit.cli(["predict", trained / "model.pt", *images, "--out", out], capsys)
    assert code == 0, err
    assert f"{images[1]}: {out / 'x_3_mask.png'}" in stdout
    assert f"{images[2]}: {out / 'x_2_mask.png'}" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "x_2_mask.png", "x_2_overlay.png", "x_3_mask.png", "x_3_overlay.png", "x_mask.png",
        "x_overlay.png"]


def test_predict_names_differing_only_in_case_get_distinct_outputs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``X.png`` and ``x.png`` would write one file on a case-insensitive disk: the first keeps
    its name, the second takes the first suffix that no other name of the run holds in any case
    (``X_2.png`` is the third image's own)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    images = [_image(tmp_path / "a" / "X.png", (33, 47)), _image(tmp_path / "b" / "x.png", (33, 47)),
              _image(tmp_path / "X_2.png", (33, 47))]
    out = tmp_path / "o"
    code, stdout, err = runkit.cli(["predict", trained / "model.pt", *images, "--out", out], capsys)
    assert code == 0, err
    assert f"{images[0]}: {out / 'X_mask.png'}" in stdout
    assert f"{images[1]}: {out / 'x_3_mask.png'}" in stdout
    assert f"{images[2]}: {out / 'X_2_mask.png'}" in stdout
    names = [p.name for p in out.iterdir()]
    assert len({name.casefold() for name in names}) == len(names) == 6


@pytest.mark.parametrize("tile", [None, "33"])
@pytest.mark.parametrize(("num_classes", "mode"), [(256, "P"), (300, "I;16")])
def test_predict_writes_class_ids_above_255_in_16_bit_masks(
    tmp_path: Path, num_classes: int, mode: str, tile: str | None
) -> None:
    """The last class forced by the classifier's bias: up to 256 classes the mask is an 8-bit
    palette PNG; beyond, a 16-bit grey one that holds the id (299 was written as 299 % 256 = 43),
    and the overlay takes the VOC colour map carried on past 255."""
    from runtime.data import IMAGENET_MEAN, IMAGENET_STD, palette
    from runtime.predict import Predictor, predict_files
    from runtime.tiling import tiling_from_options
    from specc.api import build, load_spec

    net = build(load_spec(runkit.SPEC, [*runkit.TINY, f"num_classes={num_classes}"])).module
    classifier = [m for m in net.modules()
                  if isinstance(m, torch.nn.Conv2d) and m.out_channels == num_classes][-1]
    with torch.no_grad():
        classifier.bias.zero_()
        classifier.bias[num_classes - 1] = 100.0
    image = _image(tmp_path / "a.png", (33, 47))
    predict_files(Predictor(net.eval(), IMAGENET_MEAN, IMAGENET_STD, "forced"), [image],
                  tmp_path / "o", device=torch.device("cpu"),
                  tiling=tiling_from_options(tile, None, (1, 1)))
    with Image.open(tmp_path / "o" / "a_mask.png") as mask:
        assert mask.mode == mode and mask.text["Software"] == "specc predict"
        assert np.unique(np.asarray(mask)).tolist() == [num_classes - 1]
    colour = tuple(int(c) for c in palette(num_classes)[num_classes - 1])
    with Image.open(image) as picture, Image.open(tmp_path / "o" / "a_overlay.png") as overlay:
        expected = Image.blend(picture.convert("RGB"), Image.new("RGB", picture.size, colour), 0.5)
        assert np.array_equal(np.asarray(overlay), np.asarray(expected))


def test_predict_never_replaces_the_users_files(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Predicting into the images' own folder: an input named like an output (``a_mask.png``
    beside ``a.png``) or any other file of the user's at an output's name stops the run before
    anything is written; predict's own earlier outputs are replaced on a second run."""
    model = trained / "model.pt"
    folder = tmp_path / "photos"
    folder.mkdir()
    a, a_mask = _image(folder / "a.png", (33, 47)), _image(folder / "a_mask.png", (30, 40))
    before = a_mask.read_bytes()
    code, _, err = runkit.cli(["predict", model, a, a_mask, "--out", folder], capsys)
    assert code == 2
    assert f"{a_mask}: is one of the input images and would be overwritten" in err
    assert a_mask.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "a.png", "a_mask.png"]

    notes = folder / "b_overlay.png"
    notes.write_text("the user's notes")
    b = _image(folder / "b.png", (33, 47))
    code, _, err = runkit.cli(["predict", model, b, "--out", folder], capsys)
    assert code == 2 and f"{notes}: already exists and was not written by specc predict" in err
    assert notes.read_text() == "the user's notes" and not (folder / "b_mask.png").exists()

    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first one's outputs
        code, _, err = runkit.cli(["predict", model, b, "--out", out], capsys)
        assert code == 0, err
    with Image.open(out / "b_mask.png") as mask:
        assert mask.text["Software"] == "specc predict"


def test_plot_writes_png(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curves.png"
    code, stdout, err = runkit.cli(["plot", trained, "--out", out], capsys)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 500
    assert str(out) in stdout


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2 and the file named


def _folder(root: Path, *, image: bytes | None = None, mask_value: int = 1,
            mask_size: tuple[int, int] = (24, 32), classes: int | None = None) -> Path:
    """A folder data set with a val split of two images; one of them can be broken."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    _image(root / "images" / "val" / "a.png", (24, 32))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "masks" / "val" / "a.png")
    if image is None:
        _image(root / "images" / "val" / "b.png", (24, 32))
    else:
        (root / "images" / "val" / "b.png").write_bytes(image)
    Image.fromarray(np.full(mask_size, mask_value, np.uint8)).save(root / "masks" / "val" / "b.png")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(classes)))
    return root


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"image": b"\x89PNG\r\n\x1a\n truncated"}, "images/val/b.png"),
        ({"mask_value": 9}, "masks/val/b.png"),
        ({"mask_size": (20, 20)}, "masks/val/b.png"),
        ({"classes": 3}, "classes.txt"),
    ],
    ids=["corrupt-image", "mask-out-of-range", "size-mismatch", "class-count"],
)
def test_eval_bad_data_exits_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kwargs: dict, named: str
) -> None:
    root = _folder(tmp_path / "ds", **kwargs)
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained,
                               "--data", f"folder:{root}", *runkit.sets(runkit.TINY)], capsys)
    assert code == 2
    assert named in err
    assert "Traceback" not in err


def test_eval_of_data_without_a_labelled_pixel_exits_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "ds", mask_value=255)
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(root / "masks" / "val" / "a.png")
    code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained, "--json",
                                 "--data", f"folder:{root}", *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err and "NaN" not in out
    assert "no pixel of its 2 images is labelled (every mask pixel is the ignore label 255)" \
        in err.replace("\n", " ")


def test_missing_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", tmp_path / "nowhere",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "nowhere" in err


def test_eval_of_a_checkpoint_cut_short_says_so(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "model.pt"
    cut.write_bytes((trained / "model.pt").read_bytes()[:1000])  # an interrupted copy
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", cut,
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: {cut}: a PyTorch file that is cut short or damaged (the directory at the end of "
        "its zip archive is missing: an interrupted copy or a full disk?); copy it again from "
        "where it came from, or use another checkpoint")


def test_predict_missing_and_corrupt_images_exit_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for image in (bad, tmp_path / "missing.png"):
        code, _, err = runkit.cli(["predict", trained / "model.pt", image, "--out",
                                   tmp_path / "o"], capsys)
        assert code == 2 and str(image) in err
    assert not (tmp_path / "o").exists()  # nothing written when an input is bad


def test_predict_checks_every_image_before_decoding_any(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is not an image, given last, stops the run before any image is decoded or
    any output written; good images are then decoded one at a time, each written before the
    next is read."""
    import runtime.predict

    events: list[str] = []
    read_image, write_png = runtime.predict.read_image, runtime.predict.write_png
    monkeypatch.setattr(runtime.predict, "read_image",
                        lambda path: events.append(f"read {path.name}") or read_image(path))
    monkeypatch.setattr(runtime.predict, "write_png",
                        lambda image, path: events.append(f"write {path.name}")
                        or write_png(image, path))
    good = [_image(tmp_path / f"{name}.png", (33, 47)) for name in ("a", "b")]
    bad = tmp_path / "c.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o"
    code, _, err = runkit.cli(["predict", trained / "model.pt", *good, bad, "--out", out], capsys)
    assert code == 2 and f"{bad}: cannot read image" in err and "Traceback" not in err
    assert events == [] and not out.exists()

    code, _, err = runkit.cli(["predict", trained / "model.pt", *good, "--out", out], capsys)
    assert code == 0, err
    assert events == ["read a.png", "write a_mask.png", "write a_overlay.png",
                      "read b.png", "write b_mask.png", "write b_overlay.png"]


def test_predict_goes_on_past_images_cut_short(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images cut short after a valid header pass the check made before the run and fail when
    decoded: each is listed with its reason, every other image is still written whole (those
    after it too), and the run exits 2 with the count of each."""
    a, c = _image(tmp_path / "a.png", (33, 47)), _image(tmp_path / "c.png", (33, 47))
    b, d = tmp_path / "b.jpg", tmp_path / "d.png"
    for cut, whole in ((b, tmp_path / "whole.jpg"), (d, tmp_path / "whole.png")):
        data = _image(whole, (33, 47)).read_bytes()
        cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o"
    code, stdout, err = runkit.cli(["predict", trained / "model.pt", a, b, c, d, "--out", out],
                                   capsys)
    assert code == 2 and "Traceback" not in err
    assert f"2 image(s) segmented with {trained / 'model.pt'}, 2 failed; results in {out}/" \
        in stdout
    listed = err.splitlines()
    assert listed[0].startswith("error: 2 image(s) could not be decoded")
    assert [line.partition(": ")[0].strip() for line in listed[1:]] == [str(b), str(d)]
    assert all("cannot read image" in line for line in listed[1:])
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]
    for written in out.iterdir():
        with Image.open(written) as png:
            png.load()  # whole files, not cut short themselves
            assert png.size == (47, 33)


def test_plot_without_metrics_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = runkit.cli(["plot", tmp_path], capsys)
    assert code == 2 and "metrics.jsonl" in err


def test_eval_warns_of_weights_trained_with_another_normalization(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The weights load whatever mean the spec says; scores of images normalized otherwise
    than in training come with a warning naming both."""
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained,
                               *runkit.sets([*runkit.TINY, "input.mean=[0.5, 0.5, 0.5]"])],
                              capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "trained with input.mean [0.485, 0.456, 0.406]; the spec " \
        "normalizes with [0.5, 0.5, 0.5]" in warned[0]
    code, _, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", trained,
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 0 and "warning:" not in err
