"""What makes training fast keeps it correct: the synthetic set's cache serves the very samples
it generates."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.data import synthetic
from runtime.data.synthetic import SyntheticSegmentation


def test_cached_samples_are_the_generated_ones_and_read_only() -> None:
    data = SyntheticSegmentation("train", num_classes=4, image_size=32, length=5, seed=3)
    first = [np.asarray(data[i][0]).copy() for i in range(5)]
    again = [data[i] for i in range(5)]
    for index, (image, label) in enumerate(again):
        fresh_image, fresh_label = data.generate(index)
        np.testing.assert_array_equal(np.asarray(image), fresh_image)
        np.testing.assert_array_equal(first[index], fresh_image)
        np.testing.assert_array_equal(label, fresh_label)
        with pytest.raises(ValueError, match="read-only"):
            label[0, 0] = 1
    assert data.load_label(2) is again[2][1]  # kept, not generated again


def test_a_set_too_large_for_the_cache_is_generated_on_every_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(synthetic, "CACHE_BYTES", 32 * 32 * 4 * 4)
    data = SyntheticSegmentation("val", num_classes=3, image_size=32, length=5)
    assert data.load_label(1) is not data.load_label(1)
    np.testing.assert_array_equal(data.load_label(1), data.generate(1)[1])
