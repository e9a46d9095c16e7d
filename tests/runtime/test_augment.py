"""Photometric augmentation (data.color_jitter, data.blur): off by default, the image changes and
the label does not, the draws depend on the sample's place in the stream, and a resumed run with
them (and with gradient accumulation) still ends with the weights of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import runkit
import torch

from runtime import checkpoint as ckpt
from runtime import train as train_mod
from runtime.data import SyntheticSegmentation, train_stream, train_transform
from runtime.data.transforms import photometric
from specc.spec_train import BlurSpec, ColorJitterSpec, DataSpec

JITTER = ColorJitterSpec(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1).model_dump()
BLUR = BlurSpec(kernel=5, sigma=(0.5, 2.0), probability=1.0).model_dump()


def test_off_by_default() -> None:
    data = DataSpec()
    assert data.color_jitter is None and data.blur is None
    assert photometric() == []


def _first_batch(**photo: object) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticSegmentation("train", num_classes=3, image_size=32, length=8)
    transform = train_transform(17, mean=(0.5,) * 3, std=(0.5,) * 3, **photo)  # type: ignore[arg-type]
    loader, _ = train_stream(data, transform, 2, seed=3, num_workers=0)
    return next(iter(loader))


def test_photometric_changes_the_image_only() -> None:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (20, 20), dtype=torch.uint8))
    jittered, kept = v2.Compose(photometric(JITTER, BLUR))(image, mask)
    assert torch.equal(kept, mask) and not torch.equal(jittered, image)


def test_photometric_draws_depend_on_the_position_only() -> None:
    torch.manual_seed(1)
    images, labels = _first_batch(color_jitter=JITTER, blur=BLUR)
    torch.manual_seed(99)  # the global generator's state plays no part
    again, again_labels = _first_batch(color_jitter=JITTER, blur=BLUR)
    torch.testing.assert_close(images, again, rtol=0, atol=0)
    assert torch.equal(labels, again_labels)
    plain, _ = _first_batch()
    assert not torch.allclose(images, plain)


def test_blur_alone_smooths_the_image() -> None:
    plain, _ = _first_batch()
    blurred, _ = _first_batch(blur=BLUR)
    # neighbouring pixels differ less after a Gaussian blur
    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(blurred) < roughness(plain)


ITERS, STOP = 5, 2
RUN = [f"train.iters={ITERS}", f"train.save_every={STOP}", "data.synthetic.train_length=12",
       "train.batch_size=2", "train.accumulate=2", "train.lr=0.1",
       "data.color_jitter={brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.05}",
       "data.blur={kernel: 3, probability: 0.5}"]


def test_resume_with_photometric_and_accumulation_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    runkit.train_tiny(straight, RUN)
    stopped = tmp_path / "stopped"
    real = train_mod._step

    def step(*args: object, **kwargs: object) -> float:
        if args[-1] == STOP + 1:  # die one step past the checkpoint, as a kill would
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(train_mod, "_step", step)
        with pytest.raises(KeyboardInterrupt):
            runkit.train_tiny(stopped, RUN)
    runkit.train_tiny(stopped, RUN, resume=True)
    expected, _, _ = ckpt.load_checkpoint(straight)
    got, state, _ = ckpt.load_checkpoint(stopped)
    assert state["iteration"] == ITERS
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
