"""The training augmentation and its read-ahead thread.

``TrainAugment`` calls torchvision's v2 kernels itself; torchvision's own v2 transform pipeline
(the same steps as ``Transform`` objects) is the reference it must equal bit for bit. The
``Prefetcher`` must hand over the stream it reads unchanged: same batches, same order, errors
where they happened, and a thread that stops when asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from runtime import train as train_mod
from runtime.data import Prefetcher, SyntheticSegmentation, train_stream, train_transform
from runtime.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PadToSize,
    RandomDiscreteScale,
    SegmentationTransform,
    mean_fill,
    photometric,
)
from specc.errors import DataError

JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "probability": 1.0}
BLUR = {"kernel": 5, "sigma": (0.5, 2.0), "probability": 0.5}


def _reference(crop: tuple[int, int], min_scale: float, max_scale: float,
               flip: bool, jitter: bool) -> SegmentationTransform:
    """The augmentation written as torchvision's v2 transform pipeline."""
    steps: list[v2.Transform] = [*photometric(JITTER if jitter else None, BLUR if jitter else None),
                                 RandomDiscreteScale(min_scale, max_scale, 0.25),
                                 PadToSize(crop, mean_fill(IMAGENET_MEAN), 255),
                                 v2.RandomCrop(crop)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64},
                         scale=True),
              v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))]
    return SegmentationTransform(v2.Compose(steps), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(("crop", "scales", "flip", "jitter"), [
    ((33, 33), (0.5, 2.0), True, False),  # crops inside and outside the scaled 40-px image
    ((61, 47), (0.5, 2.0), True, False),  # not square: padding and crop offsets per side
    ((17, 80), (0.5, 2.0), True, False),  # taller than wide
    ((40, 40), (1.0, 1.0), False, False),  # no scale change, no flip: one draw, the scale
    ((33, 33), (0.5, 2.0), True, True),  # colour jitter and blur first
])
def test_equals_the_v2_pipeline_bit_for_bit(crop: tuple[int, int], scales: tuple[float, float],
                                            flip: bool, jitter: bool) -> None:
    data = SyntheticSegmentation("train", num_classes=5, image_size=40, length=12)
    augment = train_transform(crop, min_scale=scales[0], max_scale=scales[1], flip=flip,
                              color_jitter=JITTER if jitter else None,
                              blur=BLUR if jitter else None)
    reference = _reference(crop, *scales, flip, jitter)
    labels = set()
    for seed in range(60):
        sample = data[seed % len(data)]
        torch.manual_seed(seed)
        want_image, want_label = reference(sample)
        want_state = torch.get_rng_state()
        torch.manual_seed(seed)
        image, label = augment(sample)  # from the global generator, as the pipeline draws
        assert torch.equal(torch.get_rng_state(), want_state)  # the same number of draws
        results = [(image, label)]
        if not jitter:  # with a generator, the photometric draws come from another stream
            results.append(augment(sample, torch.Generator().manual_seed(seed)))
        for got_image, got_label in results:
            assert got_image.dtype == torch.float32 and got_label.dtype == torch.int64
            assert got_image.shape == (3, *crop) and got_label.shape == crop
            assert torch.equal(got_image, want_image) and torch.equal(got_label, want_label)
        labels.add((seed % len(data), label.numpy().tobytes()))
    moving = scales[0] != scales[1] or flip
    assert (len(labels) > len(data)) is moving  # the draws really moved the samples


def test_a_given_generator_leaves_the_global_one_alone() -> None:
    data = SyntheticSegmentation("train", num_classes=5, image_size=40, length=4)
    for augment in (train_transform(33), train_transform(33, color_jitter=JITTER)):
        torch.manual_seed(7)
        before = torch.get_rng_state()
        first = augment(data[0], torch.Generator().manual_seed(3))
        assert torch.equal(torch.get_rng_state(), before)
        torch.manual_seed(8)  # another global state: the same result
        second = augment(data[0], torch.Generator().manual_seed(3))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        other = augment(data[0], torch.Generator().manual_seed(4))
        assert not torch.equal(first[0], other[0])
    assert train_transform(33).thread_safe
    assert not train_transform(33, color_jitter=JITTER).thread_safe  # jitter uses torch's RNG


def test_prefetcher_hands_over_the_stream_unchanged() -> None:
    assert list(Prefetcher(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise DataError("broken.png: not an image")

    stream = Prefetcher(failing())
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(DataError, match=r"broken\.png"):
        next(stream)


def test_prefetcher_close_stops_an_endless_stream() -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    before, threads = threading.active_count(), torch.get_num_threads()
    with Prefetcher(endless(), depth=2) as stream:
        assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert threading.active_count() == before
    assert torch.get_num_threads() == threads  # the reader's one thread is its own setting
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("photometric", [False, True])
def test_batch_stream_reads_ahead_the_same_batches(photometric: bool) -> None:
    data = SyntheticSegmentation("train", num_classes=3, image_size=32, length=12)
    transform = train_transform(17, color_jitter=JITTER if photometric else None)
    loader, _ = train_stream(data, transform, 2, seed=3, num_workers=0)
    direct = iter(loader)
    want = [next(direct) for _ in range(9)]  # past the end of an epoch (6 batches)
    stream = train_mod.batch_stream(loader, torch.device("cpu"), read_ahead=True)
    # a thread only where the augmentation leaves the global random state alone
    assert isinstance(stream, Prefetcher) is not photometric
    torch.manual_seed(0)
    state = torch.get_rng_state()
    got = [next(stream) for _ in range(9)]
    if isinstance(stream, Prefetcher):
        assert torch.equal(torch.get_rng_state(), state)
        stream.close()
    for (images, labels), (want_images, want_labels) in zip(got, want, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_batch_stream_reads_ahead_only_beside_a_free_core(monkeypatch: pytest.MonkeyPatch) -> None:
    data = SyntheticSegmentation("train", num_classes=3, image_size=32, length=12)
    loader, _ = train_stream(data, train_transform(17), 2, seed=3, num_workers=0)
    cpu = torch.device("cpu")
    monkeypatch.setattr(train_mod, "usable_cores", lambda: torch.get_num_threads())
    assert not isinstance(train_mod.batch_stream(loader, cpu), Prefetcher)  # every core busy
    monkeypatch.setattr(train_mod, "usable_cores", lambda: torch.get_num_threads() + 1)
    stream = train_mod.batch_stream(loader, cpu)
    assert isinstance(stream, Prefetcher)
    stream.close()
    with_workers, _ = train_stream(data, train_transform(17), 2, seed=3, num_workers=1)
    assert not isinstance(train_mod.batch_stream(with_workers, cpu, read_ahead=True), Prefetcher)
