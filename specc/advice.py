"""Compile-time analysis of atrous designs, and warnings for legal but suspicious specs.

``specc info`` shows :func:`atrous_branches` (the valid-weight analysis of DeepLabv3 §3.3, Fig. 4)
and :func:`stage_receptive_fields`; ``specc validate`` and ``specc build`` print :func:`advise`'s
warnings (errors with ``--strict``). Everything is read off the graph and the schedule: feature
sizes, dilation rates and strides travel with the graph's nodes.

The warnings:

* an ASPP branch whose 3×3 filter degenerates toward a 1×1 at the spec's input size (DeepLabv3 §3.3);
* ASPP rates that look written for another output stride (``(12, 24, 36)`` at output stride 16,
  the confusion users report most about DeepLab ports);
* an ASPP without atrous branches, or with two branches at one rate;
* bilinear upsampling with ``align_corners: true`` on an input size that is not of the form k·OS+1,
  the only sizes on which that mode puts feature i at input pixel OS·i.

A decoder tap at the wrong stride is not a warning but an error (:func:`specc.lower_heads.resolve_tap`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specc.graph import ordered_nodes

if TYPE_CHECKING:
    from specc.api import Compilation, Document
    from specc.derive import Schedule

#: The paper's ASPP rates at output stride 16 (DeepLabv3 §3.3); doubled at 8.
PAPER_RATES = (6, 12, 18)
PAPER_RATES_OUTPUT_STRIDE = 16

#: Fewer valid taps than this (of 9, on average over the feature map) and a 3×3 atrous filter is
#: called degenerate. Why 2: the paper's own settings stay above 3.5 at the largest rate (rate 18
#: on the 33×33 map of a 513 input at output stride 16 keeps 3.64 taps; rate 36 on 65×65 at output
#: stride 8 keeps 3.58), while below 2 more than seven of the nine weights multiply padding
#: everywhere but in a thin band, and the filter is a 1×1 plus noise — Fig. 4's right-hand end.
MIN_VALID_TAPS = 2.0


# ------------------------------------------------------------------------------------------------
# The valid-weight analysis (DeepLabv3 §3.3, Fig. 4)


def valid_taps_1d(n: int, rate: int, kernel: int = 3) -> float:
    """Mean number of a 1-D kernel's taps that land inside a length-``n`` axis.

    The kernel is centred ("same" padding); tap ``j`` (offset ``j·rate``, |j| ≤ kernel//2) is valid
    at output position ``i`` when ``0 ≤ i + j·rate < n``, which holds for ``max(0, n − |j|·rate)``
    of the ``n`` positions. Padding does not count.
    """
    if n <= 0 or rate <= 0:
        raise ValueError(f"expected a positive size and rate, found n={n}, rate={rate}")
    half = kernel // 2
    return sum(max(0, n - abs(j) * rate) for j in range(-half, half + 1)) / n


def tap_counts_1d(n: int, rate: int) -> dict[int, int]:
    """For a 3-tap kernel at ``rate`` on ``n`` positions: how many positions see 1, 2, 3 taps."""
    left = right = max(0, n - rate)  # positions i ≥ rate, and i < n − rate
    both = max(0, n - 2 * rate)  # rate ≤ i < n − rate
    one_side = left + right - 2 * both
    return {1: n - both - one_side, 2: one_side, 3: both}


def valid_taps(size: tuple[int, int] | list[int], rate: int) -> dict[str, Any]:
    """The valid-weight figures of a 3×3 filter at ``rate`` on an h×w feature map.

    The count at (y, x) is the product of the two axes' counts, so its mean over the map is the
    product of the axes' means, and its distribution is the product of theirs.

    Returns:
        ``valid_taps`` (mean of 9), ``all_taps`` (fraction of positions where all 9 are valid),
        ``center_only`` (fraction where only the centre tap is), ``histogram`` (valid count →
        fraction of positions, counts 1, 2, 3, 4, 6, 9) and ``effective_kernel`` ("3×3", "1×3",
        "3×1" or "1×1": the extent of the filter that ever sees the map).
    """
    h, w = int(size[0]), int(size[1])
    ch, cw = tap_counts_1d(h, rate), tap_counts_1d(w, rate)
    hist: dict[int, float] = {}
    for a, na in ch.items():
        for b, nb in cw.items():
            if na and nb:
                hist[a * b] = hist.get(a * b, 0.0) + na * nb / (h * w)
    kh = "1" if rate >= h else "3"
    kw = "1" if rate >= w else "3"
    return {
        "valid_taps": valid_taps_1d(h, rate) * valid_taps_1d(w, rate),
        "all_taps": hist.get(9, 0.0),
        "center_only": hist.get(1, 0.0),
        "histogram": {str(k): hist[k] for k in sorted(hist)},
        "effective_kernel": f"{kh}×{kw}",
    }


def atrous_branches(comp: Compilation) -> list[dict[str, Any]]:
    """The valid-weight analysis of each ASPP atrous branch at the spec's input size.

    Each entry: ``node``, ``spec_key``, ``rate``, ``feature_size`` [h, w] (the map the branch
    reads), ``valid_taps`` (of 9, on average over output positions), ``all_taps``,
    ``center_only``, ``histogram``, ``effective_kernel`` and ``degenerate``.
    """
    aspp = comp.network.head("aspp")
    out = []
    for conv in aspp.atrous if aspp is not None else ():
        size = list(conv.feature_size)
        figures = valid_taps(size, conv.rate)
        out.append({"node": conv.node, "spec_key": conv.spec_key, "rate": conv.rate,
                    "feature_size": size, **figures,
                    "degenerate": _degenerate(size, conv.rate, figures["valid_taps"])})
    return out


def _degenerate(size: list[int], rate: int, taps: float) -> bool:
    return taps < MIN_VALID_TAPS or rate >= min(size)


# ------------------------------------------------------------------------------------------------
# Receptive field per stage


def stage_receptive_fields(comp: Compilation) -> list[dict[str, Any]]:
    """Per backbone stage (stem first): output stride, feature size at the input size, the
    dilation rates its units run at, and the receptive field (input pixels) of its output."""
    net = comp.network
    g = net.graph

    def row(stage: str, node: str, rates: list[int]) -> dict[str, Any]:
        d = g.nodes[node]
        return {"stage": stage, "reduction": d["reduction"],
                "feature_size": list(d["shape"][1:]), "rates": rates,
                "receptive_field": d["receptive_field"]}

    rows = [row("stem", net.stem.out.node, [1])]
    for stage in net.stages:
        rates = sorted({conv.rate for u in stage.units for conv in u.atrous})
        rows.append(row(stage.name, net.aliases[f"backbone.{stage.name}"], rates))
    return rows


# ------------------------------------------------------------------------------------------------
# Warnings


def advise(comp: Compilation) -> list[str]:
    """Warnings for legal but suspicious choices, each ``file:line:col: warning: key: message``."""
    notes: list[tuple[str, str]] = []
    notes += _rates_for_another_output_stride(comp.doc, comp.schedule)
    notes += _repeated_or_no_rates(comp.doc, comp.schedule)
    notes += _degenerate_branches(comp)
    notes += _misaligned_input_size(comp)
    notes = _without_accepted(notes, comp.doc.spec.accepted_warnings)
    src = comp.doc.raw.sources
    return [str(d) for d in comp.doc.raw.deprecations] + [
        f"{src.locate(key)}: warning: {key}: {message}" for key, message in notes]


def _without_accepted(notes: list[tuple[str, str]], accepted: list[str]) -> list[tuple[str, str]]:
    """The notes whose key the spec does not list in ``accepted_warnings``, and one note for
    each listed key that drew no warning (an acceptance that no longer applies)."""
    keys = {key for key, _ in notes}
    kept = [(key, message) for key, message in notes if key not in accepted]
    for i, key in enumerate(accepted):
        if key not in keys:
            kept.append((f"accepted_warnings[{i}]",
                         f"{key!r} draws no warning; remove it from accepted_warnings"))
    return kept


def _fmt(rates: tuple[int, ...] | list[int]) -> str:
    return "(" + ", ".join(str(r) for r in rates) + ")"


def paper_rates(output_stride: int) -> tuple[int, ...] | None:
    """The paper's ASPP rates at ``output_stride`` ((6, 12, 18) at 16, scaled), if whole."""
    scaled = [r * PAPER_RATES_OUTPUT_STRIDE / output_stride for r in PAPER_RATES]
    if any(s != int(s) or s < 1 for s in scaled):
        return None
    return tuple(int(s) for s in scaled)


def implied_output_stride(rates: tuple[int, ...] | list[int]) -> int | None:
    """The output stride a rate set was written for, when it is the paper's (6, 12, 18) scaled by
    a power of two (e.g. (12, 24, 36) → 8); None for any other set."""
    rates = tuple(rates)
    if len(rates) != len(PAPER_RATES) or rates[0] <= 0:
        return None
    if any(r * PAPER_RATES[0] != rates[0] * p for r, p in zip(rates, PAPER_RATES, strict=True)):
        return None
    num = PAPER_RATES[0] * PAPER_RATES_OUTPUT_STRIDE
    if num % rates[0]:
        return None
    os_ = num // rates[0]
    return os_ if os_ & (os_ - 1) == 0 else None


def _rates_for_another_output_stride(doc: Document, schedule: Schedule) -> list[tuple[str, str]]:
    aspp = doc.spec.aspp
    if aspp is None:
        return []
    written_for = aspp.rates_output_stride or schedule.output_stride
    implied = implied_output_stride(aspp.rates)
    if implied is None or implied == written_for:
        return []
    rates = _fmt(aspp.rates)
    actual = schedule.output_stride
    expected = paper_rates(actual)
    paper = f"; the paper uses {_fmt(expected)} at output stride {actual}" if expected else ""
    if aspp.rates_output_stride is None:
        how = (f"they are taken as absolute (aspp.rates_output_stride: null), so at output stride "
               f"{actual} they run as {rates}{paper}")
    else:
        how = (f"aspp.rates_output_stride declares them for output stride {written_for}, so at "
               f"output stride {actual} they run as {_fmt(schedule.aspp_rates)}{paper}")
    return [("aspp.rates",
             f"{rates} look written for output stride {implied} (the paper's "
             f"{_fmt(PAPER_RATES)} at {PAPER_RATES_OUTPUT_STRIDE}, scaled by "
             f"{PAPER_RATES_OUTPUT_STRIDE}/{implied}); {how}. Write the rates for the output "
             f"stride they are meant for, or set aspp.rates_output_stride: {implied} to have them "
             "scaled")]


def _repeated_or_no_rates(doc: Document, schedule: Schedule) -> list[tuple[str, str]]:
    """An ASPP without atrous branches (the 1×1 branch and image pooling alone), or with two
    branches at one rate: the same filter shape twice, its cost paid twice for nothing a single
    branch could not learn."""
    aspp = doc.spec.aspp
    if aspp is None:
        return []
    if not aspp.rates:
        return [("aspp.rates", "no atrous branches: the ASPP is its 1×1 branch and image pooling "
                               "alone (the paper's rates at output stride 16 are (6, 12, 18))")]
    actual = list(schedule.aspp_rates)
    repeated = sorted({r for r in actual if actual.count(r) > 1})
    if not repeated:
        return []
    counts = ", ".join(f"{r} ×{actual.count(r)}" for r in repeated)
    return [("aspp.rates", f"branches at the same rate ({counts}, as run at output stride "
                           f"{schedule.output_stride}): each repeats another's filter shape at "
                           "its full cost; give each branch its own rate")]


def _degenerate_branches(comp: Compilation) -> list[tuple[str, str]]:
    notes = []
    size = "×".join(map(str, comp.network.input.size))
    schedule = comp.schedule
    for b in atrous_branches(comp):
        if not b["degenerate"]:
            continue
        h, w = b["feature_size"]
        acts = {"1×1": "acts as a 1×1 convolution",
                "3×3": "is close to a 1×1 convolution"}.get(
                    b["effective_kernel"], f"acts as a {b['effective_kernel']} filter")
        notes.append((b["spec_key"],
                      f"rate {b['rate']} on the {h}×{w} feature map (input size {size}, output stride "
                      f"{schedule.output_stride}): on average only {b['valid_taps']:.2f} of the 9 "
                      f"taps land inside the map and {b['center_only']:.0%} of positions see only "
                      f"the centre tap, so the 3×3 filter {acts} (DeepLabv3 §3.3, Fig. 4). "
                      f"Use a rate below {max(1, min(h, w) // 2)} here, a larger input.size, or rely on "
                      "image pooling for global context"))
    return notes


def _aligned_sizes(size: int, os_: int) -> str:
    lo = (size - 1) // os_ * os_ + 1
    hi = lo + os_
    return f"{lo} or {hi}" if lo >= os_ + 1 else f"{hi}"


def _misaligned_input_size(comp: Compilation) -> list[tuple[str, str]]:
    """Bilinear align_corners=True upsampling maps corner to corner; feature i lands on input
    pixel OS·i only when (out − 1) = ratio·(in − 1) on both axes, i.e. input sizes of the form k·OS+1."""
    notes: list[tuple[str, str]] = []
    keys_done: set[str] = set()
    g = comp.graph
    h, w = comp.network.input.size
    os_ = comp.schedule.output_stride
    for n in ordered_nodes(g):
        d = g.nodes[n]
        if d["op"] != "upsample" or d.get("mode") != "bilinear" or not d.get("align_corners"):
            continue
        src = g.nodes[next(iter(g.predecessors(n)))]
        (hi, wi), (ho, wo) = src["shape"][1:], d["shape"][1:]
        if hi == 1 and wi == 1:  # image pooling: a constant map, alignment is moot
            continue
        ratio = src["reduction"] // d["reduction"]
        if (ho - 1) == ratio * (hi - 1) and (wo - 1) == ratio * (wi - 1):
            continue
        key = {"decoder.upsample": "decoder.upsample.align_corners",
               "aspp.image_pooling": "aspp.image_pooling.align_corners"}.get(
                   d["spec_key"], "output.upsample.align_corners")
        if key in keys_done:
            continue
        keys_done.add(key)
        scale = (ho - 1) / (hi - 1) if hi > 1 else float("inf")
        fix = " × ".join(dict.fromkeys([_aligned_sizes(h, os_), _aligned_sizes(w, os_)]))
        notes.append((key,
                      f"bilinear upsampling with align_corners: true stretches the {hi}×{wi} map "
                      f"(1/{src['reduction']} of the input) corner to corner onto {ho}×{wo}, putting "
                      f"feature i at pixel {scale:.2f}·i instead of {ratio}·i; the input size "
                      f"{h}×{w} is not of the form k·{os_}+1 that this mode assumes (the TF "
                      f"code's 513 = 32·16+1). Use input.size {fix}, or align_corners: false"))
    return notes
