"""The arithmetic of Winograd's F(m, 3) (:mod:`specc.winograd`): the transforms compute the
correlation exactly, and the rule that picks a tile per conv."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from specc.winograd import choose_tile, saving, tiles, winograd_matrices


def matmul(a: list[list[Fraction]], b: list[list[Fraction]]) -> list[list[Fraction]]:
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0))
             for j in range(len(b[0]))] for i in range(len(a))]


def transposed(a: list[list[Fraction]]) -> list[list[Fraction]]:
    return [list(row) for row in zip(*a, strict=True)]


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6])
def test_the_transforms_compute_the_correlation_exactly(m: int) -> None:
    """In exact arithmetic, A^T [(G g G^T) ⊙ (B^T d B)] A is the 2-D correlation of an
    (m+2)×(m+2) tile d with a 3×3 filter g, for random integer tiles and filters."""
    at, g_matrix, bt = winograd_matrices(m)
    n = m + 2
    assert (len(at), len(at[0]), len(g_matrix), len(bt)) == (m, n, n, n)
    rng = random.Random(m)
    for _ in range(3):
        g = [[Fraction(rng.randint(-9, 9)) for _ in range(3)] for _ in range(3)]
        d = [[Fraction(rng.randint(-9, 9)) for _ in range(n)] for _ in range(n)]
        u = matmul(matmul(g_matrix, g), transposed(g_matrix))
        v = matmul(matmul(bt, d), transposed(bt))
        product = [[u[i][j] * v[i][j] for j in range(n)] for i in range(n)]
        y = matmul(matmul(at, product), transposed(at))
        want = [[sum((g[k][c] * d[i + k][j + c] for k in range(3) for c in range(3)), Fraction(0))
                 for j in range(m)] for i in range(m)]
        assert y == want


def test_tiles_beyond_the_points_are_refused() -> None:
    with pytest.raises(ValueError, match=r"m = 1\.\.6, not 7"):
        winograd_matrices(7)


@pytest.mark.parametrize(("size", "rate", "m", "count"), [
    (65, 1, 6, 11),   # 66 outputs cover 65
    (65, 4, 6, 3),    # the longest of the 4 sub-grids holds 17 positions: 3 tiles of 6
    (65, 12, 6, 1),   # 6 positions: one tile
    (64, 4, 4, 4),    # 16 positions exactly
    (33, 2, 6, 3),
])
def test_tiles_cover_the_longest_sub_grid(size: int, rate: int, m: int, count: int) -> None:
    assert tiles(size, rate, m) == count


def test_saving_counts_the_rounded_up_tiles() -> None:
    # 65×65 at rate 1 with m = 6: 11 tiles of 8 per side against 9 multiplies per output
    assert saving((65, 65), (1, 1), 6) == pytest.approx(9 * 65 * 65 / 88 ** 2)
    # rate 4: four sub-grids a side, 3 tiles of 8 each
    assert saving((65, 65), (4, 4), 6) == pytest.approx(9 * 65 * 65 / 96 ** 2)
    # rates per axis
    assert saving((33, 65), (2, 4), 4) == pytest.approx(9 * 33 * 65 / ((5 * 6 * 2) * (5 * 6 * 4)))


@pytest.mark.parametrize(("in_channels", "out_channels", "size", "rate", "tile"), [
    (512, 512, 65, 4, 6),       # ResNet-50's layer4 at 513×513 (OS 8): 4.1× fewer multiplies
    (2048, 256, 65, 12, 6),     # the rate-12 ASPP branch at 513×513
    (128, 128, 65, 1, 6),       # layer2 at 513×513: 0.62 G multiply-adds
    (256, 256, 33, 2, 6),       # layer3 at 257×257
    (512, 512, 33, 4, 6),       # layer4 at 257×257: 2.4× fewer, but 2.6 G multiply-adds
    (512, 512, 65, 8, 6),       # 2.3× fewer, 10 G
    (256, 256, 33, 4, None),    # 2.4× fewer on 0.64 G: measured slower than direct
    (2048, 256, 33, 12, None),  # sub-grids of 3 in tiles of 6: 1.9× fewer, measured 2.4× slower
    (2048, 256, 65, 24, None),  # 1.8× fewer
    (128, 128, 33, 1, None),    # 0.16 G multiply-adds: too little to pay for the transforms
    (64, 64, 129, 1, None),     # too few channels
])
def test_a_tile_where_it_was_measured_to_pay(in_channels: int, out_channels: int, size: int,
                                            rate: int, tile: int | None) -> None:
    assert choose_tile(in_channels, out_channels, (size, size), (rate, rate)) == tile


@pytest.mark.parametrize(("in_channels", "out_channels", "size", "rate", "tile"), [
    (512, 512, 65, 4, 6),       # 4.1× fewer: measured 49.8 ms against the int8 kernel's 96.5
    (256, 256, 65, 2, 6),       # layer3 at 513×513: 17.2 against 26.0
    (512, 512, 33, 2, 6),       # layer4's first conv at 257×257: 4.3× fewer
    (2048, 256, 65, 12, None),  # 4.1× fewer, but 8 inputs per output: 202 against 173
    (512, 512, 33, 4, None),    # 2.4× fewer pays in fp32 from 2 G on, not against int8
    (512, 512, 65, 8, None),    # 2.3× fewer: 89.5 against 93.9
    (128, 128, 65, 1, None),    # too few channels: 8.7 against 7.9
])
def test_an_int8_conv_is_rewritten_only_where_it_beat_the_int8_kernel(
        in_channels: int, out_channels: int, size: int, rate: int, tile: int | None) -> None:
    assert choose_tile(in_channels, out_channels, (size, size), (rate, rate), int8=True) == tile
