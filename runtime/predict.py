"""Inference on image files: colour-coded masks and overlays, written as PNG.

For every input image ``photo.jpg`` the output folder gets

* ``photo_mask.png`` — a palette PNG whose pixel values are the predicted class ids and whose
  palette is the PASCAL VOC colour map (so it opens as a coloured picture and reads back as labels);
  for a model of more than 256 classes, whose ids do not fit in 8 bits, a 16-bit grey PNG of the
  ids instead (PNG has no larger palette);
* ``photo_overlay.png`` — the image with the coloured mask blended over it at 50 % (past id 255,
  the VOC colour map carried on).

Each file is written to a temporary name and renamed, so an interrupted run never leaves a
truncated PNG. Each carries a ``Software: specc predict`` text chunk: a file already at an
output's name is replaced only when it is such an earlier output, never when it is one of the
input images or any other file of the user's (the run is refused before anything is written).
An image that cannot be decoded (cut short after a valid header) gets no outputs and is listed;
the images after it are still predicted.
The model is either a spec plus weights, or a TorchScript ``model.pt`` from
``specc build`` or ``specc train`` (which carries its spec, hence the normalization, inside it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from runtime.data import IMAGENET_MEAN, IMAGENET_STD, colorize, eval_transform, palette
from runtime.data.base import check_image, read_image
from runtime.evaluate import (
    Alignment,
    alignment,
    check_scales,
    is_artifact,
    predict_probs,
    window_predictor,
)
from runtime.tiling import Tiling, label_dtype, tiled_labels
from specc.artifacts import load_weights, read_torchscript, read_weights
from specc.errors import DataError, SpeccError
from specc.fsutil import atomic_write

OVERLAY_ALPHA = 0.5  # half image, half mask: both stay readable
#: The PNG text chunk that marks predict's outputs, so that a later run may replace them.
SOFTWARE = ("Software", "specc predict")


@dataclass
class Predictor:
    """A model ready for inference and the normalization its inputs need."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where the weights came from, for messages
    input_size: tuple[int, int] = (513, 513)  # the spec's input.size: the tile of --tile auto
    align: Alignment | None = None  # the sizes the network was trained at (images are padded)


def load_predictor(
    model: Path, checkpoint: Path | None = None, overrides: Sequence[str] = ()
) -> Predictor:
    """A predictor from a TorchScript ``model.pt``, a deployment artifact of ``specc build
    --target`` (``.pt2``, ``.onnx``, OpenVINO ``.xml``, opened from its build folder), or from a
    spec and its weights.

    For a spec, ``checkpoint`` is a run folder, a ``.safetensors`` file or a ``model.pt``;
    it defaults to ``runs/<spec name>``.

    Raises:
        SpeccError: a bad combination of arguments; SpecError / WeightsError from loading.
    """
    model = _model_file(model)
    if is_artifact(model):
        if checkpoint is not None or overrides:
            raise SpeccError(f"{model}: a deployment artifact carries its own weights and spec; "
                             "--checkpoint and --set apply to a spec file")
        from specc.targets import load_artifact

        artifact = load_artifact(model)
        resolved = artifact.info.get("spec", {}).get("resolved", {})
        spec_input = resolved.get("input", {})
        return Predictor(artifact, tuple(spec_input.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                         tuple(spec_input.get("std", IMAGENET_STD)), str(model),
                         tuple(spec_input.get("size", Predictor.input_size)),
                         alignment(resolved, artifact.input_bounds))
    if model.suffix in (".pt", ".pth"):
        if checkpoint is not None or overrides:
            raise SpeccError(f"{model}: a TorchScript model carries its own weights and spec; "
                             "--checkpoint and --set apply to a spec file")
        module, info = read_torchscript(model)
        resolved_input = (info or {}).get("resolved", {}).get("input", {})
        mean = tuple(resolved_input.get("mean", IMAGENET_MEAN))
        std = tuple(resolved_input.get("std", IMAGENET_STD))
        size = tuple(resolved_input.get("size", Predictor.input_size))
        return Predictor(module.eval(), mean, std, str(model), size,  # type: ignore[arg-type]
                         alignment((info or {}).get("resolved", {})))
    from specc.api import build, load_spec

    doc = load_spec(model, list(overrides))
    net = build(doc).module
    weights = read_weights(checkpoint or Path("runs") / doc.spec.name)
    load_weights(net, weights)
    spec_input = doc.spec.input
    return Predictor(net.eval(), tuple(spec_input.mean), tuple(spec_input.std), str(weights.file),
                     (spec_input.size[0], spec_input.size[1]), alignment(doc.resolved))


def _model_file(model: Path) -> Path:
    """The file predict's first argument names: a run or build folder stands for the
    ``model.pt`` in it; weights alone are refused with the command that takes them.

    Raises:
        SpeccError: a folder without model.pt, or a weights file given as the model.
    """
    if model.is_dir():
        if (model / "model.pt").is_file():
            return model / "model.pt"
        raise SpeccError(f"{model}: expected a spec file, a model.pt or an artifact, or a run or "
                         "build folder holding model.pt; this folder has no model.pt")
    if model.suffix == ".safetensors":
        raise SpeccError(f"{model}: weights without the spec they belong to; give the spec "
                         f"first: specc predict SPEC --checkpoint {model} IMAGE...")
    return model


def _output_names(images: Sequence[Path]) -> list[str]:
    """Output stems, one per image and all different, so that no prediction overwrites another.

    The first image of each stem keeps it; a later one gets the first free ``_2``, ``_3`` ...
    suffix, where free means neither given out already nor the stem of any image of the run
    (``x_2.png`` keeps ``x_2`` even when it follows two ``x.png``). Stems are compared casefolded:
    on a case-insensitive disk (macOS, Windows) ``X_mask.png`` and ``x_mask.png`` are one file,
    so ``x.png`` after ``X.png`` gets ``x_2``.
    """
    own = {path.stem.casefold() for path in images}
    names: list[str] = []
    taken: set[str] = set()
    for path in images:
        name = path.stem
        if name.casefold() in taken:
            name = _free_name(name, taken, own)
        taken.add(name.casefold())
        names.append(name)
    return names


def _free_name(stem: str, taken: set[str], reserved: set[str]) -> str:
    """``stem_N`` for the smallest ``N >= 2`` whose casefolded form is in neither ``taken`` nor
    ``reserved`` (both casefolded)."""
    count = 2
    while (folded := f"{stem}_{count}".casefold()) in taken or folded in reserved:
        count += 1
    return f"{stem}_{count}"


def write_png(image: Image.Image, path: Path) -> Path:
    """Save a PIL image as PNG atomically, marked as predict's output (:data:`SOFTWARE`)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(*SOFTWARE)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def _written_by_predict(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(SOFTWARE[0]) == SOFTWARE[1]
    except Exception:  # not an image, unreadable: the user's, whatever it is
        return False


def check_outputs(images: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Refuse to write any of ``outputs`` where that would replace one of the input ``images``
    or a file that is not an earlier output of predict.

    Raises:
        SpeccError: naming the file and what to do.
    """
    inputs = {path.resolve() for path in images}
    for out in outputs:
        if out.resolve() in inputs:
            raise SpeccError(f"{out}: is one of the input images and would be overwritten by "
                             "a prediction; choose another --out folder")
        if out.exists() and not (out.is_file() and _written_by_predict(out)):
            raise SpeccError(f"{out}: already exists and was not written by specc predict; "
                             "it is left as it is: choose another --out folder, or move it away")


def _segment_picture(
    predictor: Predictor,
    model: nn.Module,
    picture: Image.Image,
    scales: Sequence[float],
    flip: bool,
    device: torch.device,
    tiling: Tiling | None,
) -> np.ndarray:
    """The predicted class ids of one RGB picture, ``(H, W)``: uint8 for up to 256 classes,
    uint16 beyond (:func:`_class_ids`).

    Tiled, the picture stays uint8 and each batch of windows is normalized on its own, so no
    float copy of the whole picture is made.
    """
    if tiling is None:
        transform = eval_transform(mean=predictor.mean, std=predictor.std)
        x, _ = transform((picture, np.zeros((picture.height, picture.width), np.uint8)))
        probs = predict_probs(model, x.unsqueeze(0).to(device), scales, flip,
                              align=predictor.align)
        return _class_ids(probs.argmax(dim=1)[0].to(label_dtype(probs.shape[1])))
    with warnings.catch_warnings():  # read-only pixels: the windows are copied, never written
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1).to(device)  # (3, H, W)
    mean = torch.tensor(predictor.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(predictor.std, device=device).view(1, 3, 1, 1)

    def normalize(windows: torch.Tensor) -> torch.Tensor:  # as eval_transform, operation by operation
        return windows.float().mul_(1.0 / 255).sub_(mean).div_(std)

    labels = tiled_labels(window_predictor(model, scales, flip, align=predictor.align), pixels,
                          tiling, normalize)
    return _class_ids(labels)


def _class_ids(labels: torch.Tensor) -> np.ndarray:
    """Class ids of :func:`~runtime.tiling.label_dtype` as the array a mask PNG holds: uint8
    for up to 256 classes, uint16 beyond, so that an id above 255 is written as it is."""
    if labels.dtype == torch.uint8:
        return labels.cpu().numpy()
    return labels.to(torch.int32).cpu().numpy().astype(np.uint16)  # ids < MAX_CLASSES = 65535


def _mask_images(ids: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The mask PNG of class ``ids`` and its colours (RGB) for the overlay.

    Up to 256 classes the mask is a palette image of the VOC colours (it opens as a coloured
    picture and reads back as the ids); beyond, it is 16-bit grey, as PNG has no palette of
    more than 256 colours, and the overlay takes the VOC colour map carried on past 255.
    """
    if ids.dtype == np.uint8:
        mask = colorize(ids)
        return mask, mask.convert("RGB")
    colours = palette(int(ids.max()) + 1)[ids]
    return Image.fromarray(ids), Image.fromarray(colours)


@dataclass
class Predictions:
    """What :func:`predict_files` did: ``(image, mask, overlay)`` for every image written, and
    one message (the file and why) for every image that could not be decoded."""

    written: list[tuple[Path, Path, Path]]
    failed: list[str]


def predict_files(
    predictor: Predictor,
    images: Sequence[Path],
    out_dir: Path,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: torch.device | None = None,
    tiling: Tiling | None = None,
) -> Predictions:
    """Predict every image and write its mask and overlay (:class:`Predictions`).

    Every image's header is checked before anything is written (a missing file or one that is
    not an image stops the run there); then the images are decoded, predicted and written one
    at a time, so a run over a thousand photos holds one of them in memory, not all. An image
    cut short after its header is found only when it is decoded: it is listed in
    ``Predictions.failed`` and the run goes on with the next, so one bad photo of a thousand
    costs its own masks, not the others'. With ``tiling`` each image is predicted by sliding
    windows (:mod:`runtime.tiling`), normalized window by window.

    Raises:
        DataError: an image is missing or its header is not an image's (the message names it).
        SpeccError: no images given, or an output would replace an input image or a file
        that predict did not write (:func:`check_outputs`).
    """
    if not images:
        raise SpeccError("no images given")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_scales(predictor.model, scales)
    for path in images:
        check_image(path)  # DataError names a bad file
    model = predictor.model.to(device).eval()
    stems = _output_names(images)
    check_outputs(images, [out_dir / f"{stem}_{kind}.png" for stem in stems
                           for kind in ("mask", "overlay")])
    out_dir.mkdir(parents=True, exist_ok=True)
    done = Predictions([], [])
    for path, stem in zip(images, stems, strict=True):
        try:
            picture = read_image(path)
        except DataError as err:  # names the file and why
            done.failed.append(str(err))
            continue
        with torch.inference_mode():
            label = _segment_picture(predictor, model, picture, scales, flip, device, tiling)
        mask, colours = _mask_images(label)
        overlay = Image.blend(picture, colours, OVERLAY_ALPHA)
        mask_path = write_png(mask, out_dir / f"{stem}_mask.png")
        overlay_path = write_png(overlay, out_dir / f"{stem}_overlay.png")
        done.written.append((path, mask_path, overlay_path))
    return done
