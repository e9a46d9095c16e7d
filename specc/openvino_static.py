"""Rewrites of an OpenVINO model reshaped to one input size, made before it is compiled.

An artifact's IR takes any height and width; :class:`specc.targets.OpenVinoRunner` compiles it
again for an input size that repeats, after :func:`optimize_static`. ``specc build --static``
makes them once instead, into the IR of one shape it writes, so that OpenVINO's own runtime runs
them too. The height and width must be known; the batch need not be. Each rewrite computes the
same function (up to rounding) faster at that size:

- :func:`split_int8_atrous`. On a CPU with AMX, OpenVINO's int8 kernel for a conv of a wide
  rate is several times slower than for the same arithmetic undilated (2 cores, ResNet-50 at
  513×513: the 2048 → 256 ASPP convs of rates 12, 24 and 36 on the 65×65 map took 19, 38 and
  50 ms of a 204 ms network, where a 512 → 512 3×3 conv of rate 4 on the same map, half their
  arithmetic, took 7). Such a conv becomes one int8 1×1 conv per tap, each output shifted into
  place and summed.
- :func:`drop_padding_taps`. With the size known, an atrous conv whose rate reaches past its map
  reads only zero padding with its outer taps: at a 257×257 input, ResNet-50's rate-36 branch
  sees a 33×33 map, so only the centre of its 3×3 kernel ever touches it (DeepLabv3 §3.3: a rate
  near the map's size degenerates to a 1×1 conv). Such kernels are cut down to the taps that can
  reach the map.
- :func:`winograd_convs`. In fp32 OpenVINO's direct 3×3 convs already run near the CPU's peak
  (2 AVX2 cores: about 95 G multiply-adds/s, as its 1×1 convs do), so only less arithmetic
  makes them faster. Winograd's F(6, 3) (:mod:`specc.winograd`) needs 4-5× fewer multiplies
  for the large ones. ResNet-50's 3×3 convs took 1086 of its 1725 ms at 513×513 on that CPU;
  with them rewritten it ran 1.29× faster (1.09× at 257×257; BENCHMARKS.md). On an AVX2 CPU
  without VNNI OpenVINO's int8 kernels are only 1.1–1.6× faster than its fp32 ones, so the
  large 3×3 convs of an int8 IR are computed so too, in f32 from their quantized input and
  decompressed weights (ResNet-50's int8 IR at 513×513: 1.14× faster).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from specc.hardware import CpuInfo, cpu_info
from specc.winograd import TilePlan, choose_tile, transformed_weights

#: The smallest atrous rate at which :func:`split_int8_atrous` computes an int8 conv tap by tap.
#: Below it OpenVINO's int8 kernel keeps its speed (ResNet-50's rate-4 convs run at the rate of
#: its 1×1 ones); at rate 12 on a 65×65 map splitting is level with the kernel, at 24 and 36
#: well ahead of it.
MIN_SPLIT_RATE = 8

#: Operations a conv's weights may pass through between their constant and the conv: the
#: decompression NNCF writes for int8 weights (int8 → f32, minus the zero point, times the scale).
WEIGHT_PATH_TYPES = frozenset({"Convert", "Multiply", "Subtract"})


def reachable_taps(kernel: int, rate: int, padding: tuple[int, int], size: int) -> int | None:
    """How many taps on each side of the centre of a "same" atrous kernel (``kernel`` taps apart
    by ``rate``, zero ``padding`` on both sides) can read a map ``size`` long: the tap at
    offset j·rate reaches the map from some output position only while j·rate < size. None when
    the kernel is not an odd "same" one (then nothing is dropped)."""
    half = kernel // 2
    if kernel % 2 == 0 or padding != (half * rate, half * rate):
        return None
    reach = half
    while reach > 0 and reach * rate >= size:
        reach -= 1
    return reach


@dataclass(frozen=True)
class AtrousGeometry:
    """A stride-1, zero-padded "same" conv on a map of known size: its kernel, its rates and
    how many taps on each side of the centre reach the map (:func:`reachable_taps`), per axis."""

    kernel: tuple[int, int]
    rates: tuple[int, int]
    reach: tuple[int, int]

    @property
    def centre(self) -> tuple[int, int]:
        """The kernel's centre tap (row, column)."""
        return self.kernel[0] // 2, self.kernel[1] // 2

    def reaches_all(self) -> bool:
        return self.reach == self.centre

    def reaching(self, axis: int) -> slice:
        """The taps along ``axis`` (0: rows, 1: columns) that reach the map."""
        return slice(self.centre[axis] - self.reach[axis], self.centre[axis] + self.reach[axis] + 1)

    def reaching_taps(self) -> list[tuple[int, int]]:
        """The (row, column) of every tap that reaches the map."""
        rows, cols = self.reaching(0), self.reaching(1)
        return [(row, col) for row in range(rows.start, rows.stop)
                for col in range(cols.start, cols.stop)]

    def offset(self, row: int, col: int) -> tuple[int, int]:
        """Where tap (row, column) reads, relative to the output position: rate × its distance
        from the centre."""
        return ((row - self.centre[0]) * self.rates[0], (col - self.centre[1]) * self.rates[1])


def _same_atrous(conv: Any) -> AtrousGeometry | None:
    """``conv``'s geometry when it is a plain (not grouped) stride-1 "same" conv with odd
    kernels and an input of static channels, height and width (the batch may be dynamic);
    None otherwise."""
    if conv.get_type_name() != "Convolution":
        return None
    data_shape, weight_shape = conv.get_input_partial_shape(0), conv.get_input_partial_shape(1)
    if (weight_shape.is_dynamic or len(data_shape) != 4
            or any(data_shape[a].is_dynamic for a in (1, 2, 3))):
        return None
    attributes = conv.get_attributes()
    if (attributes["strides"] != [1, 1]
            or attributes.get("auto_pad", "explicit").lower() not in ("explicit", "notset")):
        return None
    size = [data_shape[a].get_length() for a in (2, 3)]
    kernel = list(weight_shape.to_shape())[-2:]
    rates, begin, end = attributes["dilations"], attributes["pads_begin"], attributes["pads_end"]
    reach = [reachable_taps(kernel[a], rates[a], (begin[a], end[a]), size[a]) for a in (0, 1)]
    if reach[0] is None or reach[1] is None:
        return None
    return AtrousGeometry((kernel[0], kernel[1]), (rates[0], rates[1]), (reach[0], reach[1]))


def _carrying(node: Any, kernel: list[int]) -> list[int]:
    """Which inputs of ``node`` are shaped like a conv's weights: static, at least 4-D, with
    the ``kernel``'s height and width last."""
    return [i for i, value in enumerate(node.input_values())
            if value.get_partial_shape().is_static and len(value.get_partial_shape()) >= 4
            and list(value.get_partial_shape().to_shape())[-2:] == kernel]


def _weight_path(conv: Any) -> list[Any] | None:
    """The nodes from ``conv``'s weight constant to the conv, the constant first; None when the
    weights are not a constant reached through :data:`WEIGHT_PATH_TYPES` with the kernel's two
    spatial dimensions last all the way, or when any of those nodes feeds something else too."""
    kernel = list(conv.get_input_partial_shape(1).to_shape())[-2:]
    node = conv.input_value(1).get_node()
    path = [node]
    while node.get_type_name() != "Constant":
        if len(node.output(0).get_target_inputs()) != 1:
            return None
        if node.get_type_name() not in WEIGHT_PATH_TYPES:
            return None
        carrying = _carrying(node, kernel)
        if len(carrying) != 1:
            return None
        node = node.input_value(carrying[0]).get_node()
        path.append(node)
    if len(node.output(0).get_target_inputs()) != 1:
        return None
    return path[::-1]


def _cut_weights(path: list[Any], rows: slice, cols: slice) -> None:
    """Replace the weight constant at the head of ``path`` by its taps ``rows``×``cols``; the
    nodes after it take the smaller shape."""
    import numpy as np
    import openvino.opset13 as ops

    constant = path[0]
    data = np.ascontiguousarray(constant.get_data()[..., rows, cols])
    constant.output(0).replace(ops.constant(data, dtype=constant.get_element_type()).output(0))
    for node in path[1:]:
        node.validate_and_infer_types()


def drop_padding_taps(model: Any) -> int:
    """Cut every stride-1, zero-padded "same" atrous conv of ``model`` (an ``openvino.Model``
    with a static input height and width) down to the taps that can read its input map, with
    the padding and rate made to match: the same function, exactly (every dropped tap
    multiplied zeros).
    A kernel left with one tap along an axis becomes undilated there. Convs whose weights are
    not a constant (through the decompression of int8 weights at most) are left as they are,
    and so are depthwise ones (``GroupConvolution``): cheap already, and no faster cut down
    (MobileNetV2 v3+ at 257×257, whose rate-18 depthwise ASPP conv sees a 17×17 map:
    0.96–0.99× in int8, 0.995× in fp32). Returns how many convs were rewritten."""
    import openvino.opset13 as ops

    rewritten = 0
    for conv in model.get_ordered_ops():
        geometry = _same_atrous(conv)
        if geometry is None or geometry.reaches_all():
            continue
        path = _weight_path(conv)
        if path is None:
            continue
        _cut_weights(path, geometry.reaching(0), geometry.reaching(1))
        pads = [r * rate for r, rate in zip(geometry.reach, geometry.rates, strict=True)]
        smaller = ops.convolution(
            conv.input_value(0), conv.input_value(1), [1, 1], pads, pads,
            [rate if r else 1 for r, rate in zip(geometry.reach, geometry.rates, strict=True)])
        smaller.set_friendly_name(conv.get_friendly_name())
        conv.output(0).replace(smaller.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def _is_int8_weight(constant: Any) -> bool:
    return constant.get_element_type().get_type_name() in ("i8", "u8")


def _tap_weights(path: list[Any], row: int, col: int) -> Any:
    """The output of a copy of ``path`` (weight constant to conv) carrying only the tap at
    ``row``, ``col`` of the kernel: the constant's slice, then the same decompression."""
    import numpy as np
    import openvino.opset13 as ops

    make = {"Convert": lambda inputs, node: ops.convert(inputs[0], node.get_output_element_type(0)),
            "Subtract": lambda inputs, node: ops.subtract(*inputs),
            "Multiply": lambda inputs, node: ops.multiply(*inputs)}
    constant = path[0]
    kernel = list(constant.get_output_partial_shape(0).to_shape())[-2:]
    taps = np.ascontiguousarray(constant.get_data()[..., row:row + 1, col:col + 1])
    output = ops.constant(taps, dtype=constant.get_element_type()).output(0)
    for node in path[1:]:
        inputs = list(node.input_values())
        inputs[_carrying(node, kernel)[0]] = output
        output = make[node.get_type_name()](inputs, node).output(0)
    return output


def _shifted(t: Any, dy: int, dx: int) -> Any:
    """``t`` moved so that position p holds what was at p + (dy, dx), zeros where that lies
    outside: one Pad, cropping on one side what it adds on the other."""
    import numpy as np
    import openvino.opset13 as ops

    if dy == 0 and dx == 0:
        return t
    return ops.pad(t, np.array([0, 0, -dy, -dx], np.int64), np.array([0, 0, dy, dx], np.int64),
                   "constant", np.array(0, np.float32)).output(0)


def split_int8_atrous(model: Any) -> int:
    """Compute every stride-1, zero-padded "same" conv of rate >= :data:`MIN_SPLIT_RATE` whose
    weights are stored as int8 (an NNCF int8 IR) as one 1×1 conv per tap that reaches the map
    (its int8 weights sliced from the stored ones, decompressed the same way), each output
    shifted by the tap's offset and summed in f32. The input's quantization is untouched, so
    each tap's conv is an int8 one; only the sum of the taps' dequantized outputs is rounded
    differently. ``model`` has a static input height and width. Returns how many convs were
    rewritten."""
    import openvino.opset13 as ops

    rewritten = 0
    for conv in model.get_ordered_ops():
        geometry = _same_atrous(conv)
        if geometry is None or max(geometry.rates) < MIN_SPLIT_RATE:
            continue
        path = _weight_path(conv)
        if path is None or not _is_int8_weight(path[0]):
            continue
        total = None
        for row, col in geometry.reaching_taps():
            node = ops.convolution(conv.input_value(0), _tap_weights(path, row, col),
                                   [1, 1], [0, 0], [0, 0], [1, 1])
            node.set_friendly_name(f"{conv.get_friendly_name()}/tap_{row}_{col}")
            tap = _shifted(node.output(0), *geometry.offset(row, col))
            total = tap if total is None else ops.add(total, tap).output(0)
        conv.output(0).replace(total)
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def _constant_value(value: Any) -> Any:
    """The array ``value`` (an output) holds when it is a constant, or a constant through
    :data:`WEIGHT_PATH_TYPES` (an int8 IR's decompression: i8 → f32, minus the zero point,
    times the scale), computed in numpy; None when anything else feeds it."""
    import numpy as np

    node = value.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data()
    if kind not in WEIGHT_PATH_TYPES:
        return None
    inputs = [_constant_value(v) for v in node.input_values()]
    if any(v is None for v in inputs):
        return None
    if kind == "Convert":
        return inputs[0].astype(node.get_output_element_type(0).to_dtype())
    return (np.subtract if kind == "Subtract" else np.multiply)(*inputs)


def _winograd(x: Any, weights: Any, rates: tuple[int, int], m: int) -> Any:
    """The stride-1 "same" 3×3 conv of ``rates`` with fp32 ``weights`` (out, in, 3, 3) on ``x``
    (an N×C×H×W output, static but for the batch), computed by F(m, 3) over the rates'
    sub-grids (:class:`specc.winograd.TilePlan`). The map goes channels-last, so that the two
    gathers (every tile's elements in, every output pixel out) move whole rows of channels;
    between them the input transform, one GEMM per tile element with the transformed weights
    (nearly all the arithmetic) and the output transform. Each image's tiles stay together,
    element first, so nothing but the leading dimension depends on the batch."""
    import numpy as np
    import openvino.opset13 as ops

    def i64(*values: int) -> Any:
        return np.array(values, np.int64)

    shape = x.get_partial_shape()
    channels, height, width = (shape[a].get_length() for a in (1, 2, 3))
    plan = TilePlan(m, (height, width), rates)
    n, count, out = plan.n, plan.tile_count, weights.shape[0]
    top, left, bottom, right = plan.padding
    bt, at = plan.transforms()
    # padded first, then channels last: OpenVINO keeps the map channels-last already, so the
    # transpose costs nothing (the other way round it copied the map twice, 50 ms in all)
    x = ops.pad(x, i64(0, 0, top, left), i64(0, 0, bottom, right), "constant",
                np.array(0, np.float32))
    x = ops.transpose(x, i64(0, 2, 3, 1))
    x = ops.reshape(x, i64(0, plan.padded[0] * plan.padded[1], channels), True)  # 0: the batch
    x = ops.gather(x, plan.input_rows(), np.array(1, np.int64))
    x = ops.reshape(x, i64(0, n * n, count * channels), True)
    v = ops.matmul(ops.constant(bt), x, False, False)  # B^T d B for every tile and channel
    # one product per tile element with its (out × in) matrix: OpenVINO runs those with its
    # GEMM, a batched product with a 3-D constant with a slower kernel (ResNet-50 at 513×513,
    # 2 AVX2 cores: 1336 against 1369 ms)
    u = transformed_weights(weights, m)
    parts = ops.split(v, np.array(1, np.int64), n * n)
    products = ops.concat([
        ops.reshape(ops.matmul(ops.reshape(parts.output(e), i64(-1, channels), False),
                               ops.constant(u[e]), False, True),
                    i64(-1, 1, count * out), False)
        for e in range(n * n)], 1)
    y = ops.matmul(ops.constant(at), products, False, False)
    y = ops.reshape(y, i64(0, m * m * count, out), True)
    y = ops.gather(y, plan.output_rows(), np.array(1, np.int64))  # each pixel from its tile
    return ops.transpose(y, i64(0, 3, 1, 2)).output(0)


def winograd_convs(model: Any, choose: Callable[..., int | None] | None = None,
                   int8: bool = True) -> int:
    """Compute each plain stride-1 "same" 3×3 conv of ``model`` (static input height and width, any
    batch) whose weights are a constant (through an int8 IR's decompression at most), all of whose
    taps reach its map, and for which ``choose`` (by default :func:`specc.winograd.choose_tile`:
    enough channels, arithmetic and saving) picks a tile m, by Winograd's F(m, 3) in f32: the same
    function to about 4e-5 of its largest output. ``choose`` is called with the conv's input and
    output channels, map size and rates, and ``int8=True`` for a conv with int8 weights: such a
    conv's quantized input is kept and its weights decompressed, so it computes what the int8 kernel
    computes, in f32 and with less arithmetic, where the int8 kernel is not fast enough to win (an
    AVX2 CPU without VNNI); ``int8=False`` leaves those convs to the int8 kernels. It trades memory
    for speed: the transformed weights are (m+2)²/9 times the conv's in f32 (ResNet-50 compiled for
    513×513: 1.5 GB resident instead of 0.5 in fp32, 0.9 instead of 0.26 in int8). Returns how many
    were rewritten."""
    choose = choose or choose_tile
    rewritten = 0
    for conv in model.get_ordered_ops():
        geometry = _same_atrous(conv)
        if (geometry is None or geometry.kernel != (3, 3) or not geometry.reaches_all()
                or conv.get_input_element_type(0).get_type_name() != "f32"):
            continue
        path = _weight_path(conv)
        weights = _constant_value(conv.input_value(1)) if path is not None else None
        quantized = path is not None and _is_int8_weight(path[0])
        if weights is None or (quantized and not int8):
            continue
        shape = conv.get_input_partial_shape(0)
        size = (shape[2].get_length(), shape[3].get_length())
        m = choose(weights.shape[1], weights.shape[0], size, geometry.rates, int8=quantized)
        if m is None:
            continue
        result = _winograd(conv.input_value(0), weights, geometry.rates, m)
        result.get_node().set_friendly_name(f"{conv.get_friendly_name()}/winograd_{m}")
        conv.output(0).replace(result)
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def deciding_features(cpu: CpuInfo) -> dict[str, bool]:
    """What of ``cpu`` decides which rewrites :func:`optimize_static` makes."""
    return {"avx2": cpu.has_avx2, "avx512": cpu.has_avx512, "vnni": cpu.has_vnni,
            "amx": cpu.has_amx}


def optimize_static(model: Any, cpu: CpuInfo | None = None,
                    precision: str = "f32") -> dict[str, int]:
    """The rewrites for ``model`` (static input height and width; the batch may be dynamic) compiled
    at OpenVINO's inference ``precision`` (``f32`` or ``bf16``) on ``cpu`` (this machine's by
    default); how many convs each rewrote. :func:`split_int8_atrous` only where the CPU has AMX, and
    :func:`winograd_convs` only at f32 on an AVX2 CPU without AVX-512, and for int8 convs only where
    it has no VNNI either: each is made only on the kind of CPU it was measured on (elsewhere
    OpenVINO's kernels run at other speeds relative to the GEMM and copies they are replaced by; in
    bf16 the transforms would lose precision). The int8 split runs first, leaving out the taps that
    read only padding itself, then Winograd on the convs all of whose taps reach their map;
    :func:`drop_padding_taps` takes the rest. All change ``model`` in place and free the weight
    constants they replace: compile it afterwards, never before (a compiled model may keep using
    those constants)."""
    cpu = cpu or cpu_info()
    split = split_int8_atrous(model) if cpu.has_amx else 0
    winograd = (winograd_convs(model, int8=not cpu.has_vnni)
                if precision == "f32" and cpu.has_avx2 and not cpu.has_avx512 else 0)
    return {"split_int8_atrous": split, "winograd_convs": winograd,
            "drop_padding_taps": drop_padding_taps(model)}
