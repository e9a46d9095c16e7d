"""Rewrites of an OpenVINO model reshaped to one input size, made before it is compiled.

An artifact's IR takes any height and width; :class:`specc.targets.OpenVinoRunner` compiles it
again for an input size that repeats. With every size known, an atrous conv whose rate reaches
past its feature map reads only zero padding with its outer taps: at a 257×257 input,
ResNet-50's rate-36 ASPP branch sees a 33×33 map, so of its 3×3 kernel only the centre ever
touches the map (DeepLabv3 §3.3: a rate near the map's size degenerates to a 1×1 conv). The
result is the same, but the kernels do not all know it: OpenVINO's AMX int8 kernel slows down as
the rate grows (that conv took 10 ms where its centre tap as a 1×1 conv takes well under one).
:func:`drop_padding_taps` cuts such kernels down to the taps that can reach the map.
"""

from __future__ import annotations

from typing import Any

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
        carrying = [v.get_node() for v in node.input_values()
                    if v.get_partial_shape().is_static
                    and len(v.get_partial_shape()) >= 4
                    and list(v.get_partial_shape().to_shape())[-2:] == kernel]
        if len(carrying) != 1:
            return None
        node = carrying[0]
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
    with a static input shape) down to the taps that can read its input map, with the padding
    and rate made to match: the same function, exactly (every dropped tap multiplied zeros).
    A kernel left with one tap along an axis becomes undilated there. Convs whose weights are
    not a constant (through the decompression of int8 weights at most) are left as they are,
    and so are depthwise ones (``GroupConvolution``): cheap already, and no faster cut down
    (MobileNetV2 v3+ at 257×257, whose rate-18 depthwise ASPP conv sees a 17×17 map:
    0.96–0.99× in int8, 0.995× in fp32). Returns how many convs were rewritten."""
    import openvino.opset13 as ops

    rewritten = 0
    for conv in model.get_ordered_ops():
        if conv.get_type_name() != "Convolution":
            continue
        data_shape, weight_shape = conv.get_input_partial_shape(0), conv.get_input_partial_shape(1)
        if data_shape.is_dynamic or weight_shape.is_dynamic or len(data_shape) != 4:
            continue
        attributes = conv.get_attributes()
        if (attributes["strides"] != [1, 1]
                or attributes.get("auto_pad", "explicit").lower() not in ("explicit", "notset")):
            continue
        size = list(data_shape.to_shape())[2:]
        kernel = list(weight_shape.to_shape())[-2:]
        rates, begin, end = attributes["dilations"], attributes["pads_begin"], attributes["pads_end"]
        reach = [reachable_taps(kernel[a], rates[a], (begin[a], end[a]), size[a]) for a in (0, 1)]
        if None in reach or reach == [k // 2 for k in kernel]:
            continue
        path = _weight_path(conv)
        if path is None:
            continue
        centre = [k // 2 for k in kernel]
        _cut_weights(path, *(slice(c - r, c + r + 1) for c, r in zip(centre, reach, strict=True)))
        pads = [r * rate for r, rate in zip(reach, rates, strict=True)]
        smaller = ops.convolution(conv.input_value(0), conv.input_value(1), [1, 1], pads, pads,
                                  [rate if r else 1 for r, rate in zip(reach, rates, strict=True)])
        smaller.set_friendly_name(conv.get_friendly_name())
        conv.output(0).replace(smaller.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten
