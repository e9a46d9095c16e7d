"""Rewrites of an ONNX model of one input shape (``specc build --static --target onnx``).

:func:`winograd_convs` computes the large 3×3 convs by Winograd's F(m, 3), as
:func:`specc.openvino_static.winograd_convs` does for OpenVINO, in ONNX operations that
onnxruntime runs with its GEMM: on 2 AVX2 cores torchvision's ResNet-50 DeepLabV3 at 513×513
runs 1.24× faster than from the dynamic ONNX file (1.09× at 257×257; BENCHMARKS.md). The same
CPUs are chosen as for OpenVINO
(:func:`winograd_pays`): AVX2 without AVX-512, where the direct convs already run near the
CPU's peak and only less arithmetic helps.
"""

from __future__ import annotations

from typing import Any

from specc.hardware import CpuInfo
from specc.winograd import TilePlan, choose_tile, transformed_weights


def winograd_pays(cpu: CpuInfo) -> bool:
    """Whether fp32 3×3 convs are rewritten for ``cpu``: AVX2 without AVX-512, the CPUs the
    rule was measured on."""
    return cpu.has_avx2 and not cpu.has_avx512


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_3x3(node: Any, weights: dict[str, Any], shapes: dict[str, list[int]]
               ) -> tuple[int, int] | None:
    """The rates of ``node`` when it is a plain (not grouped) stride-1 "same" 3×3 conv with
    constant weights on a map of known size that all its taps reach; None otherwise."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    attributes = _attributes(node)
    rates = tuple(attributes.get("dilations", [1, 1]))
    shape = shapes.get(node.input[0])
    if (list(attributes.get("kernel_shape", weights[node.input[1]].dims[2:])) != [3, 3]
            or attributes.get("group", 1) != 1
            or list(attributes.get("strides", [1, 1])) != [1, 1]
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or list(attributes.get("pads", [0, 0, 0, 0])) != [*rates, *rates]
            or shape is None or len(shape) != 4 or min(shape) <= 0):
        return None
    if rates[0] >= shape[2] or rates[1] >= shape[3]:  # outer taps on padding only
        return None
    return rates[0], rates[1]


def winograd_convs(model: Any, choose: Any = None) -> int:
    """Compute each plain stride-1 "same" 3×3 conv of ``model`` (an ``onnx.ModelProto`` whose
    input shape is fixed) with constant weights, all of whose taps reach its map, and for which
    ``choose`` (by default :func:`specc.winograd.choose_tile`) picks a tile m, by F(m, 3) in
    f32: the same function to about 4e-5 of its largest output. The weights transformed at
    build time are (m+2)²/9 times the conv's (the file grows by as much). ``model`` is changed
    in place; returns how many convs were rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    choose = choose or choose_tile
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*inferred.graph.value_info, *inferred.graph.input]}
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes: list[Any] = []
    rewritten = 0

    for node in graph.node:
        rates = _plain_3x3(node, weights, shapes)
        w = numpy_helper.to_array(weights[node.input[1]]) if rates else None
        m = choose(w.shape[1], w.shape[0], tuple(shapes[node.input[0]][2:]), rates) \
            if rates else None
        if m is None:
            nodes.append(node)
            continue
        rewritten += 1
        prefix = f"{node.name or node.output[0]}/winograd_{m}"
        made = iter(range(1_000))

        def constant(array: Any, prefix: str = prefix, made: Any = made) -> str:
            name = f"{prefix}/const_{next(made)}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            return name

        def op(kind: str, inputs: list[str], prefix: str = prefix, made: Any = made,
               **attrs: Any) -> str:
            out = f"{prefix}/{kind}_{next(made)}"
            nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
            return out

        def i64(*values: int) -> str:
            return constant(np.array(values, np.int64))

        channels, height, width = shapes[node.input[0]][1:]
        plan = TilePlan(m, (height, width), rates)
        n, count, out = plan.n, plan.tile_count, w.shape[0]
        top, left, bottom, right = plan.padding
        bt, at = plan.transforms()
        x = op("Pad", [node.input[0], i64(0, 0, top, left, 0, 0, bottom, right)])
        x = op("Transpose", [x], perm=[0, 2, 3, 1])
        x = op("Reshape", [x, i64(0, plan.padded[0] * plan.padded[1], channels)])
        x = op("Gather", [x, constant(plan.input_rows())], axis=1)
        x = op("Reshape", [x, i64(0, n * n, count * channels)])
        v = op("MatMul", [constant(bt), x])  # B^T d B for every tile and channel
        v = op("Reshape", [v, i64(0, n * n, count, channels)])
        # one batched product with the (in × out) matrix of each tile element: onnxruntime runs
        # it faster than (m+2)² separate ones (ResNet-50 at 513×513, 2 AVX2 cores: 1392
        # against 1476 ms)
        u = transformed_weights(w, m).transpose(0, 2, 1)
        y = op("MatMul", [v, constant(u)])
        y = op("Reshape", [y, i64(0, n * n, count * out)])
        y = op("MatMul", [constant(at), y])
        y = op("Reshape", [y, i64(0, m * m * count, out)])
        y = op("Gather", [y, constant(plan.output_rows())], axis=1)  # each pixel from its tile
        if len(node.input) > 2 and node.input[2]:
            y = op("Add", [y, node.input[2]])  # the bias, along the channels-last axis
        nodes.append(helper.make_node("Transpose", [y], list(node.output), name=f"{prefix}/out",
                                      perm=[0, 3, 1, 2]))
    if rewritten:
        used = {name for n in nodes for name in n.input}
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        values = [v for v in graph.value_info if v.name in used]  # those of removed tensors go
        del graph.value_info[:]
        graph.value_info.extend(values)
    return rewritten
