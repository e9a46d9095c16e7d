"""Batches for training and evaluation: DataLoader construction and hard-image bootstrapping.

:func:`build_loader` wraps a data set and a transform into a ``torch.utils.data.DataLoader`` with
deterministic shuffling and worker seeding, optionally sharded with a ``DistributedSampler``.

:func:`train_stream` is the endless, resumable stream of training batches: which sample comes at
each position, and the random draws of its augmentation, are a pure function of the seed, the
epoch and the position (:class:`TrainOrder`), not of a random state that runs along with the
loop. A run resumed at iteration k therefore reads exactly the batches the uninterrupted run read
from iteration k on, with the same crops, scales and flips, whatever the worker count.

:func:`bootstrap_indices` implements the hard-image bootstrapping of DeepLabv3 §4.3: images that
contain a hard class are repeated in the epoch. Which classes each image contains is found by
reading every label once (:func:`class_presence`) and cached per data set object.
"""

from __future__ import annotations

import queue
import random
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from specc.errors import DataError

from .base import IGNORE_INDEX, SegmentationDataset
from .transforms import SegmentationTransform, TrainAugment

# DeepLabv3 §4.3: "bicycle, chair, table, potted-plant, and sofa" on PASCAL VOC.
VOC_HARD_CLASSES = ("bicycle", "chair", "dining table", "potted plant", "sofa")

_PRESENCE_CACHE: weakref.WeakKeyDictionary[SegmentationDataset, np.ndarray] = (
    weakref.WeakKeyDictionary()
)


class TransformedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A data set whose samples pass through a transform (optionally over a list of indices).

    ``indices`` (for instance from :func:`bootstrap_indices`) selects and repeats samples.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        transform: SegmentationTransform | TrainAugment,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``key``; a key ``(index, seed)`` (from :class:`TrainOrder`) draws its
        augmentation from a generator seeded with ``seed`` and leaves torch's global one as it
        was, so the draws depend on the sample's place in the stream alone."""
        if isinstance(key, int):
            return self.transform(self.dataset[self.indices[key]])
        index, seed = key
        sample = self.dataset[self.indices[index]]
        if isinstance(self.transform, TrainAugment):
            return self.transform(sample, torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a seed for every
            # accelerator (on a CUDA build, with a recorded call stack per sample)
            torch.default_generator.manual_seed(seed)
            return self.transform(sample)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class TrainOrder(Sampler[tuple[int, int]]):
    """The endless training order of one process: ``(sample index, augmentation seed)`` pairs.

    Epoch ``e`` is a permutation of the samples seeded with ``(seed, e)``, shared by all
    processes; process ``rank`` of ``world_size`` takes every ``world_size``-th sample of it, cut
    to whole batches (as ``drop_last`` would). The sample at position ``p`` of epoch ``e`` on
    ``rank`` is augmented with the seed ``(seed, e, rank, p)``. Iteration starts after
    ``start_batch`` batches, so a resumed run continues the same stream.
    """

    def __init__(self, length: int, batch_size: int, seed: int, *, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0) -> None:
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Whole batches of this process per epoch (0 when there is not even one)."""
        return self.length // self.world_size // self.batch_size

    def epoch(self, epoch: int) -> list[int]:
        """This process's sample indices in epoch ``epoch``, in order."""
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        mine = order[self.rank::self.world_size]
        return mine[: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.batches_per_epoch == 0:
            return
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        skip = batch * self.batch_size
        while True:
            for position, index in enumerate(self.epoch(epoch)):
                if position >= skip:
                    yield index, mix_seed(self.seed, epoch, self.rank, position)
            skip, epoch = 0, epoch + 1


def train_stream(
    dataset: SegmentationDataset,
    transform: SegmentationTransform | TrainAugment,
    batch_size: int,
    *,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    indices: Sequence[int] | None = None,
) -> tuple[DataLoader[tuple[torch.Tensor, torch.Tensor]], TrainOrder]:
    """An endless DataLoader of augmented training batches in :class:`TrainOrder`, starting
    after ``start_batch`` batches; returns it with its order (for ``batches_per_epoch``)."""
    data = TransformedDataset(dataset, transform, indices)
    order = TrainOrder(len(data), batch_size, seed, rank=rank, world_size=world_size,
                       start_batch=start_batch)
    generator = torch.Generator()  # workers' base seed: never drawn from the global generator
    generator.manual_seed(mix_seed(seed, rank, start_batch))
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, order


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave that worker.

    torch derives each worker's seed from the loader's generator, so with a seeded generator every
    worker's random streams (torch, numpy, random) are the same from run to run.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


T = TypeVar("T")
_DONE = object()  # the end of the stream, on the prefetch queue


class Prefetcher(Generic[T]):
    """Iterates ``iterable`` in a background thread, up to ``depth`` items ahead.

    The items come in the iterable's order, so a stream whose content depends only on the
    position (:func:`train_stream` with a :class:`~runtime.data.transforms.TrainAugment`, whose
    draws leave every global random state alone) gives the same batches as iterating it
    directly. An exception raised while reading is raised again by the ``next`` call that would
    have returned that item. :meth:`close` (or leaving a ``with`` block) stops the thread.

    The point is overlap: augmentation is mostly Python dispatch while a training step is mostly
    kernels that release the GIL, so the next batch is prepared on the core the step leaves
    idle, without the start-up, memory and per-process data-set caches of a worker process.
    """

    def __init__(self, iterable: Iterable[T], depth: int = 2) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = iter(iterable)
        torch.get_num_threads()  # settles this thread's count before the reader sets its own
        self._thread = threading.Thread(target=self._fill, name="specc-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        # Kernels called from this thread run on one core: with more, OpenMP would give the
        # thread a team of its own beside the training step's, both competing for the same
        # cores. The setting is this thread's (the constructor fixed the calling thread's).
        torch.set_num_threads(1)
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as err:
            self._put(err)
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless stopped first; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread (it finishes the item it is reading) and wait for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_loader(
    dataset: SegmentationDataset,
    transform: SegmentationTransform | TrainAugment,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    distributed: bool = False,
    drop_last: bool | None = None,
    indices: Sequence[int] | None = None,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader of ``(images (N, 3, H, W) float32, labels (N, H, W) int64)`` batches.

    ``drop_last`` defaults to ``shuffle``: training drops the ragged last batch (a batch of one
    breaks batch norm statistics, DeepLabv3 §4.1), evaluation keeps every image. With
    ``distributed`` each process reads its own shard; call ``loader.sampler.set_epoch(epoch)``
    every epoch so the shards reshuffle. With ``num_workers == 0`` the augmentation draws from the
    global torch generator, so seed it (``torch.manual_seed``) for a repeatable run.

    Raises:
        ValueError: a batch size below 1 or a negative worker count.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    if drop_last is None:
        drop_last = shuffle
    data = TransformedDataset(dataset, transform, indices)
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = (
        DistributedSampler(data, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if distributed
        else None
    )
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # keep workers (and their file handles) across epochs
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


class _PresenceView(Dataset[np.ndarray]):
    """Per-index class presence vectors, so a DataLoader can read labels in parallel."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        label = self.dataset.load_label(index)
        counts = np.bincount(label.ravel(), minlength=256)
        return counts[: self.dataset.num_classes] > 0


def class_presence(dataset: SegmentationDataset, num_workers: int = 0) -> np.ndarray:
    """Which classes each sample's label contains: bool ``(len(dataset), num_classes)``.

    Every label is read once per data set object; later calls return the cached table.

    Raises:
        DataError: a label file is missing, unreadable or holds invalid values.
    """
    cached = _PRESENCE_CACHE.get(dataset)
    if cached is not None:
        return cached
    loader = DataLoader(_PresenceView(dataset), batch_size=None, num_workers=num_workers)
    rows = [np.asarray(row, dtype=bool) for row in loader]
    table = np.stack(rows) if rows else np.zeros((0, dataset.num_classes), dtype=bool)
    _PRESENCE_CACHE[dataset] = table
    return table


def has_labelled_pixel(dataset: SegmentationDataset, ignore_index: int = IGNORE_INDEX,
                       num_workers: int = 0) -> bool:
    """Whether any label of ``dataset`` holds a pixel of a class (not ``ignore_index``).

    Labels are read in order (without their images) until the first labelled one, so a
    labelled data set costs one label read (the first, in this process) and only a data set
    without any labelled pixel is read through (by ``num_workers`` processes); a
    :func:`class_presence` table made before (hard-image bootstrapping) is used instead.

    Raises:
        DataError: a label file that is read is missing, unreadable or holds invalid values.
    """
    classes = [c for c in range(dataset.num_classes) if c != ignore_index]
    cached = _PRESENCE_CACHE.get(dataset)
    if cached is not None:
        return bool(cached[:, classes].any())
    view = _PresenceView(dataset)
    if len(view) and view[0][classes].any():  # the usual answer, without starting workers
        return True
    loader = DataLoader(view, batch_size=None, num_workers=num_workers)
    return any(bool(np.asarray(row)[classes].any()) for row in loader)


def class_ids(dataset: SegmentationDataset, names: Iterable[str]) -> list[int]:
    """Train ids of the named classes, e.g. :data:`VOC_HARD_CLASSES`.

    Raises:
        DataError: a name is not one of the data set's classes (the message lists them).
    """
    ids = []
    for name in names:
        if name not in dataset.class_names:
            raise DataError(
                f"{dataset.name}: no class named {name!r}; classes: {', '.join(dataset.class_names)}"
            )
        ids.append(dataset.class_names.index(name))
    return ids


def bootstrap_indices(
    dataset: SegmentationDataset,
    hard_classes: Iterable[int],
    repeat: int = 2,  # DeepLabv3 §4.3 "duplicate the images that contain hard classes"
    num_workers: int = 0,
) -> list[int]:
    """Sample indices in order, each image containing any hard class repeated ``repeat`` times.

    Pass the result as ``indices`` to :func:`build_loader`.

    Raises:
        DataError: a hard class id outside ``0 .. num_classes - 1``, ``repeat`` below 1, or a label
            that cannot be read.
    """
    hard = sorted(set(hard_classes))
    bad = [c for c in hard if not 0 <= c < dataset.num_classes]
    if bad:
        raise DataError(
            f"{dataset.name}: hard classes {bad} are not class ids 0..{dataset.num_classes - 1}"
        )
    if repeat < 1:
        raise DataError(f"{dataset.name}: hard-image repeat must be at least 1, got {repeat}")
    if not hard or repeat == 1:
        return list(range(len(dataset)))
    is_hard = class_presence(dataset, num_workers)[:, hard].any(axis=1)
    indices: list[int] = []
    for index, flag in enumerate(is_hard):
        indices.extend([index] * (repeat if flag else 1))
    return indices
