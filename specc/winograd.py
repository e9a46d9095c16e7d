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
tile is chosen per conv from its channels, rate and map size (:func:`choose_tile`).

This module holds the arithmetic; :func:`specc.openvino_static.winograd_convs` rewrites an
OpenVINO model with it.
"""

from __future__ import annotations

import math
from fractions import Fraction

#: The output tile sizes m tried for each conv: the one that saves most is taken. Larger tiles
#: do less arithmetic per output but round each sub-grid up further and lose precision (m = 6:
#: about 4e-5 of the largest output in fp32, m = 4: 2e-5).
TILES = (4, 6)

#: The interpolation points of F(m, 3), besides infinity: m + 1 of them are used, in this
#: order, which keeps the transforms' constants small.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2),
          Fraction(-1, 2))

#: The fewest input and output channels of a rewritten conv. The transforms move every tile
#: element through memory; with fewer channels that costs about what the products save (2 AVX2
#: cores, OpenVINO, ``benchmarks/winograd_convs.py``, three runs: 128 → 128 on a 65×65 map,
#: 5.0–7.7 ms against 7.3–9.0 direct; 64 → 64 on a 129×129 one, 9.0–10.8 against 9.8–10.6).
MIN_CHANNELS = 128

#: The fewest multiply-adds (direct) of a rewritten conv: below them a conv takes a couple of
#: milliseconds either way and which is faster changes from run to run (128 → 128 on a 33×33
#: map, 0.16 G: 1.5–2.7 ms against 2.0–2.7).
MIN_MACS = 500_000_000

#: The least reduction in multiply-adds (direct over Winograd on the rounded-up tiles) for which
#: a conv is rewritten (256 → 256 of rate 2 on a 33×33 map, 4.3× fewer: 4.5–5.9 ms against
#: 7.3–7.8; of rate 4, 2.4× fewer: 7.3–9.2 ms against 7.1–7.9, no faster).
MIN_SAVING = 3.0

#: Large convs pay from a smaller saving: with :data:`LARGE_MACS` multiply-adds or more, one of
#: :data:`MIN_SAVING_LARGE` will do (512 → 512 of rate 4 on a 33×33 map, 2.6 G, 2.4× fewer:
#: 20.5–24.3 ms against 25.7–26.6; of rate 8 on a 65×65 map, 2.3× fewer: 76.7–87.0 against
#: 96.0–101.8). Below it the padded tiles cost more than they save (2048 → 256 of rate 12 on a
#: 33×33 map, 1.9× fewer with F(4, 3): 95.4–110.1 ms against 40.4–45.4).
LARGE_MACS = 2_000_000_000
MIN_SAVING_LARGE = 2.2

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
                rates: tuple[int, int]) -> int | None:
    """The tile m (of :data:`TILES`) with which a stride-1 "same" 3×3 conv of ``rates`` on a map
    of ``size`` is computed, or None to keep it direct: it needs :data:`MIN_CHANNELS`,
    :data:`MIN_MACS` and a :data:`MIN_SAVING`-fold saving (:data:`MIN_SAVING_LARGE` from
    :data:`LARGE_MACS` on). The constants were measured on 2 AVX2 cores in OpenVINO."""
    macs = 9 * in_channels * out_channels * size[0] * size[1]
    if min(in_channels, out_channels) < MIN_CHANNELS or macs < MIN_MACS:
        return None
    best, m = max((saving(size, rates, m), m) for m in TILES)
    return m if best >= (MIN_SAVING_LARGE if macs >= LARGE_MACS else MIN_SAVING) else None
