"""Winograd's minimal filtering F(m, 3) for the 3×3 convs of a network at a known input size.

A stride-1 3×3 conv computes each output from a 3×3 window: 9 multiply-adds per output and
pair of channels. F(m, 3) computes an m×m tile of outputs from the (m+2)×(m+2) tile of input
around it: the tile is transformed (``B^T d B``), multiplied element by element with the
weights transformed once at build time (``G g G^T``), and the (m+2)² products are turned back
into the m² outputs (``A^T · A``). That is (m+2)² multiplies per m² outputs instead of 9·m²:
5.06× fewer at m = 6. The products of one tile element over all channels are one matrix
product, so nearly all the arithmetic runs as GEMM.

An atrous conv of rate r is a plain 3×3 conv on each of the r×r interleaved sub-grids of its
map (the outputs at rows ≡ a mod r read only the inputs at rows ≡ a mod r): the computation
DeepLab's own code made by "space to batch". The same tiles serve any rate; each sub-grid is
rounded up to whole tiles, which on a small map costs more than the algorithm saves, so the
tile is chosen per conv from its channels, rate and map size (:func:`choose_tile`), by one rule
for fp32 convs and a stricter one for int8 ones, whose own kernels are faster.

This module holds the arithmetic and the layout of the tiles (:class:`TilePlan`);
:func:`specc.openvino_static.winograd_convs` rewrites an OpenVINO model with it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: The output tile sizes m tried for each conv: the one that saves most is taken. Larger tiles
#: do less arithmetic per output but round each sub-grid up further and lose precision (m = 6:
#: about 4e-5 of the largest output in fp32, m = 4: 2e-5).
TILES = (4, 6)

#: The interpolation points of F(m, 3), besides infinity: m + 1 of them are used, in this
#: order, which keeps the transforms' constants small.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2),
          Fraction(-1, 2))

@dataclass(frozen=True)
class TileRule:
    """When a conv is worth computing by Winograd: its fewest input and output channels, its
    fewest multiply-adds (direct), and the least reduction in multiply-adds (direct over
    Winograd on the rounded-up tiles). Large convs (``large_macs`` multiply-adds or more) may
    pay from ``min_saving_large``; ``max_fan_in`` bounds the input channels per output channel
    (the input transform moves every input channel of every tile, the products save per output
    channel)."""

    min_channels: int
    min_macs: int
    min_saving: float
    large_macs: int | None = None
    min_saving_large: float | None = None
    max_fan_in: float | None = None

    def needed_saving(self, macs: int) -> float:
        """The least saving that pays for a conv of ``macs`` multiply-adds."""
        large = self.large_macs is not None and macs >= self.large_macs
        return self.min_saving_large if large and self.min_saving_large else self.min_saving


#: The rule for fp32 convs, against OpenVINO's direct fp32 kernels (2 AVX2 cores,
#: ``benchmarks/winograd_convs.py``, three runs):
#:
#: - 128 channels: the transforms move every tile element through memory; with fewer channels
#:   that costs about what the products save (128 → 128 on a 65×65 map, 5.0–7.7 ms against
#:   7.3–9.0 direct; 64 → 64 on a 129×129 one, 9.0–10.8 against 9.8–10.6).
#: - 0.5 G multiply-adds: below them a conv takes a couple of milliseconds either way and which
#:   is faster changes from run to run (128 → 128 on a 33×33 map, 0.16 G: 1.5–2.7 ms against
#:   2.0–2.7).
#: - a 3-fold saving (256 → 256 of rate 2 on a 33×33 map, 4.3× fewer: 4.5–5.9 ms against
#:   7.3–7.8; of rate 4, 2.4× fewer: 7.3–9.2 ms against 7.1–7.9, no faster).
#: - large convs, 2 G multiply-adds on, pay from a 2.2-fold one (512 → 512 of rate 4 on a 33×33
#:   map, 2.6 G, 2.4× fewer: 20.5–24.3 ms against 25.7–26.6; of rate 8 on a 65×65 map, 2.3×
#:   fewer: 76.7–87.0 against 96.0–101.8). Below it the padded tiles cost more than they save
#:   (2048 → 256 of rate 12 on a 33×33 map, 1.9× fewer with F(4, 3): 95.4–110.1 ms against
#:   40.4–45.4).
FP32_RULE = TileRule(min_channels=128, min_macs=500_000_000, min_saving=3.0,
                     large_macs=2_000_000_000, min_saving_large=2.2)

#: The rule for int8 convs (computed in f32 from their quantized input and decompressed
#: weights), against OpenVINO's int8 kernels on an AVX2 CPU without VNNI, which run 1.1–1.6×
#: faster than its fp32 ones (2 cores, ``benchmarks/winograd_convs.py --precision int8``, two
#: runs):
#:
#: - a 3-fold saving, whatever the size: 512 → 512 of rate 4 on a 33×33 map (2.4× fewer)
#:   took 24.0–24.1 ms against 23.8–23.9 direct, of rate 8 on a 65×65 map (2.3× fewer)
#:   87.0–89.5 against 91.2–93.9; of rate 4 on 65×65 (4.1× fewer) 49.8–53.0 against 96.5–98.4.
#: - 256 channels: 128 → 128 on a 65×65 map took 8.4–8.7 ms against 7.7–7.9; 0.5 G
#:   multiply-adds as for fp32 (256 → 256 of rate 2 on a 33×33 map, 0.64 G: 6.6–6.9 ms against
#:   7.1–7.2).
#: - at most 2 input channels per output channel: the rate-12 ASPP branch, 2048 → 256 on a
#:   65×65 map (4.1× fewer), took 202–204 ms against 173–188, where 256 → 256 of rate 2 on the
#:   same map took 17.2–19.7 against 26.0–26.7.
INT8_RULE = TileRule(min_channels=256, min_macs=500_000_000, min_saving=3.0, max_fan_in=2.0)

Matrix = list[list[Fraction]]


def winograd_matrices(m: int) -> tuple[Matrix, Matrix, Matrix]:
    """The exact matrices ``(A^T, G, B^T)`` of F(m, 3), of m×(m+2), (m+2)×3 and (m+2)×(m+2):
    for a filter g of 3 taps and an input tile d of m + 2, ``A^T [(G g) ⊙ (B^T d)]`` is the m
    outputs ``y_i = Σ_k g_k d_(i+k)``. Built by Toom-Cook on :data:`POINTS` and infinity; ``B^T``
    is solved from that identity.

    Raises:
        ValueError: m outside 1..6.
    """
    n = m + 2
    if not 1 <= m <= len(POINTS) - 1:
        raise ValueError(f"F(m, 3) is built for m = 1..{len(POINTS) - 1}, not {m}")
    points = POINTS[:n - 1]
    at = [[p ** i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(points):
        scale = math.prod((p - q for k, q in enumerate(points) if k != j), start=Fraction(1))
        g.append([p ** k / scale for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    # Σ_a At[i][a] G[a][k] Bt[a][c] = [c == i + k] for every i, k, c: one system per c.
    system = [[at[i][a] * g[a][k] for a in range(n)] for i in range(m) for k in range(3)]
    columns = [_solve(system, [Fraction(int(col == i + k)) for i in range(m) for k in range(3)])
               for col in range(n)]
    bt = [[columns[col][a] for col in range(n)] for a in range(n)]
    return at, g, bt


def _solve(rows: Matrix, rhs: list[Fraction]) -> list[Fraction]:
    """The exact solution x of ``rows · x = rhs`` (more equations than unknowns, consistent, of
    full column rank), by Gauss-Jordan elimination."""
    width = len(rows[0])
    aug = [[*row, b] for row, b in zip(rows, rhs, strict=True)]
    for col in range(width):
        pivot = next(r for r in range(col, len(aug)) if aug[r][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        lead = aug[col][col]
        aug[col] = [v / lead for v in aug[col]]
        for r in range(len(aug)):
            if r != col and aug[r][col] != 0:
                factor = aug[r][col]
                aug[r] = [v - factor * w for v, w in zip(aug[r], aug[col], strict=True)]
    if any(row[-1] != 0 for row in aug[width:]):
        raise ArithmeticError("the Winograd identity has no solution for these points")
    return [aug[i][-1] for i in range(width)]


def tiles(size: int, rate: int, m: int) -> int:
    """How many m-wide tiles cover one sub-grid of a map ``size`` long at ``rate`` (the longest
    sub-grid holds ⌈size / rate⌉ positions)."""
    longest = math.ceil(size / rate)
    return math.ceil(longest / m)


def saving(size: tuple[int, int], rates: tuple[int, int], m: int) -> float:
    """How many times fewer multiplies F(m, 3) needs than the direct conv at ``rates`` on a map
    of ``size`` (height, width), its sub-grids rounded up to whole tiles."""
    tiled = [tiles(s, r, m) * (m + 2) * r for s, r in zip(size, rates, strict=True)]
    return 9 * size[0] * size[1] / (tiled[0] * tiled[1])


def choose_tile(in_channels: int, out_channels: int, size: tuple[int, int],
                rates: tuple[int, int], *, int8: bool = False) -> int | None:
    """The tile m (of :data:`TILES`) with which a stride-1 "same" 3×3 conv of ``rates`` on a map
    of ``size`` is computed, or None to keep it direct, by :data:`FP32_RULE`, or
    :data:`INT8_RULE` for a conv with ``int8`` weights. The rules were measured on 2 AVX2 cores
    in OpenVINO."""
    rule = INT8_RULE if int8 else FP32_RULE
    macs = 9 * in_channels * out_channels * size[0] * size[1]
    if min(in_channels, out_channels) < rule.min_channels or macs < rule.min_macs:
        return None
    if rule.max_fan_in is not None and in_channels > rule.max_fan_in * out_channels:
        return None
    best, m = max((saving(size, rates, m), m) for m in TILES)
    return m if best >= rule.needed_saving(macs) else None


@functools.cache
def float_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`winograd_matrices` as read-only float64 arrays, made once per m."""
    arrays = tuple(np.array(matrix, np.float64) for matrix in winograd_matrices(m))
    for array in arrays:
        array.flags.writeable = False
    return arrays  # type: ignore[return-value]


def transformed_weights(weights: np.ndarray, m: int) -> np.ndarray:
    """``G w G^T`` of 3×3 ``weights`` (out, in, 3, 3): one (out × in) f32 matrix per tile
    element, (m+2)² of them. Made by two matrix products on the taps-first weights, which leave
    each element's matrix contiguous (an einsum took 1.6 s of the 2.5 a rewrite of ResNet-50
    took)."""
    _, g, _ = float_matrices(m)
    n, out = m + 2, weights.shape[0]
    taps = weights.astype(np.float64).transpose(2, 3, 0, 1).reshape(3, 3, -1)
    u = (g @ (g @ taps.reshape(3, -1)).reshape(n, 3, -1)).astype(np.float32)
    return u.reshape(n * n, out, -1)


def _place(position: np.ndarray, rate: int, m: int) -> tuple[np.ndarray, ...]:
    """For each output ``position`` along one axis: the tile, the place in the tile and the
    sub-grid that compute it."""
    sub_grid, along = position % rate, position // rate
    return along // m, along % m, sub_grid


@dataclass(frozen=True)
class TilePlan:
    """How F(m, 3) covers one image's map of ``size`` at ``rates``, for a graph builder: the map
    padded to whole tiles of every sub-grid, the gather of every tile's elements from it, the
    transforms, and the gather of every output pixel from the tiles' results. Tiles are counted
    per image (``tile_count``): a batch repeats the plan image by image."""

    m: int
    size: tuple[int, int]
    rates: tuple[int, int]

    @property
    def n(self) -> int:
        """The input tile's side, m + 2."""
        return self.m + 2

    @property
    def tiles(self) -> tuple[int, int]:
        return (tiles(self.size[0], self.rates[0], self.m),
                tiles(self.size[1], self.rates[1], self.m))

    @property
    def tile_count(self) -> int:
        """Tiles of one image, over all sub-grids."""
        return self.rates[0] * self.rates[1] * self.tiles[0] * self.tiles[1]

    @property
    def padded(self) -> tuple[int, int]:
        """The padded map's height and width: each sub-grid whole tiles, plus the kernel's
        reach on both sides."""
        return tuple(r * (t * self.m + 2)  # type: ignore[return-value]
                     for r, t in zip(self.rates, self.tiles, strict=True))

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """Zeros added (top, left, bottom, right): the "same" conv's rate on top and left, the
        rest of the padded map below and right."""
        (rh, rw), (ph, pw) = self.rates, self.padded
        return rh, rw, ph - self.size[0] - rh, pw - self.size[1] - rw

    def input_rows(self) -> np.ndarray:
        """For tile element (i, j) of sub-grid (ah, aw)'s tile (ty, tx), the position of its
        input in the padded map flattened row by row: an array (n, n, rh, rw, th, tw)."""
        (rh, rw), (th, tw), pw = self.rates, self.tiles, self.padded[1]
        i, j, ah, aw, ty, tx = np.ogrid[:self.n, :self.n, :rh, :rw, :th, :tw]
        rows, cols = (ty * self.m + i) * rh + ah, (tx * self.m + j) * rw + aw
        return (rows * pw + cols).astype(np.int64)

    def output_rows(self) -> np.ndarray:
        """For each output pixel (H, W), its row among the tiles' results ordered (i, j, ah,
        aw, ty, tx), i and j its place in the m×m output tile."""
        (rh, rw), (th, tw), m = self.rates, self.tiles, self.m
        r, c = np.ogrid[:self.size[0], :self.size[1]]
        (ty, i, ah), (tx, j, aw) = _place(r, rh, m), _place(c, rw, m)
        return (((((i * m + j) * rh + ah) * rw + aw) * th + ty) * tw + tx).astype(np.int64)

    def transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """``B^T ⊗ B^T`` ((m+2)² × (m+2)²) and ``A^T ⊗ A^T`` (m² × (m+2)²) in f32: one matrix
        product each transforms every tile, input or output."""
        at, _, bt = float_matrices(self.m)
        return np.kron(bt, bt).astype(np.float32), np.kron(at, at).astype(np.float32)
