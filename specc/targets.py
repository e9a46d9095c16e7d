"""Deployment artifacts of a compiled model, one writer per target, each checked at build time.

``specc build SPEC --target T[:PRECISION]`` writes, beside ``model.py``/``manifest.json``/
``model.pt`` (TorchScript, the trainable model, always written):

=============  ==============================  ============================================
target         file                            what it is
=============  ==============================  ============================================
``export``     ``model.pt2``                   ``torch.export`` ExportedProgram (fp32)
``aoti``       ``model-aoti-<precision>.pt2``  AOTInductor package compiled for this machine
                                               (``model-aoti-cuda-<p>.pt2`` for its GPU)
``onnx``       ``model.onnx``                  ONNX (the dynamo exporter), fp32
``openvino``   ``model-openvino-<p>.xml/.bin`` OpenVINO IR
=============  ==============================  ============================================

Every artifact is made from the *inference graph* of the model (:func:`inference_graph`:
dropout and the auxiliary head removed, batch norm folded into its conv), exported once with a
dynamic batch, height and width (:func:`export_program`). Each is then loaded back the way a
deployer loads it and run on the check images; its largest difference from the reference
module's logits and its argmax agreement go into ``artifacts.json`` with its precision, its
shape constraints, its file's sha256 and the versions of the libraries that made it.
``specc eval`` and ``specc predict`` open any of them through :func:`load_artifact`.

Precisions: ``fp32``; ``bf16`` (only where the CPU computes bf16 natively, see
:mod:`specc.hardware`; emulated bf16 is ~10× slower than fp32); ``int8`` (post-training static
quantization calibrated on images of the spec's data: torchao's pt2e X86 inductor quantizer for
``aoti``, NNCF for ``openvino``); ``auto`` picks bf16 where the CPU has it and fp32 elsewhere. It
never picks int8 by itself: int8 needs calibration images and changes the results, so it is
asked for by name and its agreement is measured.

``aoti`` packages are compiled for the CPU, or with ``--device cuda`` for the machine's GPU
(:data:`CUDA_PRECISIONS`: fp32, fp16, bf16 where the GPU has it; ``auto`` is fp16, whose tensor
cores every CUDA GPU of recent years has, with three more bits of mantissa than bf16). The
other targets run on the CPU (onnxruntime's and OpenVINO's CPU runtimes).

onnx, onnxruntime, openvino, nncf and torchao are the optional extra ``specc[deploy]``; a target
whose library is missing fails with a message that says how to install it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specc.errors import SpeccError, SpeccWarning
from specc.fsutil import file_sha256
from specc.hardware import CpuInfo, cpu_info
from specc.load import canonical_sha256
from specc.onnx_static import winograd_pays
from specc.openvino_static import deciding_features, optimize_static

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The build folder's list of its deployment artifacts.
ARTIFACTS = "artifacts.json"
#: Every target, in the order a build writes them.
TARGETS = ("torchscript", "export", "aoti", "onnx", "openvino")
#: Targets that take a precision; the others are fp32.
PRECISION_TARGETS = ("aoti", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: Where artifacts run: the CPU, or for ``aoti`` with ``--device cuda`` the GPU.
DEVICES = ("cpu", "cuda")
#: The precisions of an ``aoti`` package for CUDA (int8 is quantized for x86 CPUs only).
CUDA_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: The Python package each target needs, with the distribution that provides it.
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "onnx": (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")),
    "openvino": (("openvino", "openvino"),),
    "openvino:int8": (("openvino", "openvino"), ("nncf", "nncf")),
    "aoti:int8": (("torchao", "torchao"),),
}
#: The libraries whose versions an artifact records.
VERSIONED = ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "torchao")


@dataclass(frozen=True)
class Request:
    """One artifact to build: a target and, for :data:`PRECISION_TARGETS`, a precision; an
    ``aoti`` package also the device it is compiled for (one of :data:`DEVICES`)."""

    target: str
    precision: str = "fp32"
    device: str = "cpu"

    @property
    def label(self) -> str:
        label = f"{self.target}:{self.precision}" if self.target in PRECISION_TARGETS \
            else self.target
        return f"{label} on cuda" if self.device == "cuda" else label

    @property
    def file(self) -> str:
        """The artifact's file name in the build folder."""
        gpu = "cuda-" if self.device == "cuda" else ""
        return {"torchscript": "model.pt", "export": "model.pt2", "onnx": "model.onnx",
                "aoti": f"model-aoti-{gpu}{self.precision}.pt2",
                "openvino": f"model-openvino-{self.precision}.xml"}[self.target]


def parse_requests(texts: Sequence[str], precision: str = "auto",
                   cpu: CpuInfo | None = None, device: str = "cpu",
                   gpu_bf16: bool | None = None) -> list[Request]:
    """The requests of ``--target`` values (``T`` or ``T:PRECISION``; ``precision`` is the
    default of those without one), with ``auto`` resolved for this CPU, in build order and
    without repeats. With ``device`` ``cuda`` the ``aoti`` packages are for the GPU, whose
    precisions :func:`resolve_cuda_precision` resolves (``gpu_bf16``: whether it computes bf16,
    asked of torch when not given; the caller checks that CUDA is there).

    Raises:
        SpeccError: an unknown target, precision or device, a precision for a target that has
        none, bf16 on a CPU without native bf16, fp16 for the CPU, or ``cuda`` without an
        ``aoti`` target.
    """
    if device not in DEVICES:
        raise SpeccError(f"--device: expected {' or '.join(DEVICES)}, found {device!r}")
    cpu = cpu or cpu_info()
    found: list[Request] = []
    for text in texts:
        target, colon, given = text.partition(":")
        if colon and not given:
            raise SpeccError(f"--target {text}: expected a precision after ':' "
                             f"({', '.join(PRECISIONS)}), found none")
        if target not in TARGETS:
            raise SpeccError(f"--target {text}: unknown target {target!r}; expected one of "
                             f"{', '.join(TARGETS)}")
        if given and target not in PRECISION_TARGETS:
            raise SpeccError(f"--target {text}: {target} has no precision (it is fp32); "
                             f"precisions apply to {', '.join(PRECISION_TARGETS)}")
        chosen = (given or precision) if target in PRECISION_TARGETS else "fp32"
        if target == "aoti" and device == "cuda":
            request = Request(target, resolve_cuda_precision(chosen, text, gpu_bf16), device)
        else:
            request = Request(target, resolve_precision(chosen, cpu, text))
        if request not in found:
            found.append(request)
    if device == "cuda" and not any(r.device == "cuda" for r in found):
        raise SpeccError("--device cuda: only aoti packages are compiled for the GPU (the other "
                         "targets run on the CPU); give --target aoti")
    return sorted(found, key=lambda r: (TARGETS.index(r.target), PRECISIONS.index(r.precision)))


def resolve_precision(precision: str, cpu: CpuInfo, where: str = "--precision") -> str:
    """``precision`` with ``auto`` made concrete for ``cpu``; bf16 refused without hardware."""
    if precision not in PRECISIONS:
        raise SpeccError(f"{where}: unknown precision {precision!r}; expected one of "
                         f"{', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if cpu.has_bf16 else "fp32"
    if precision == "fp16":
        raise SpeccError(f"{where}: fp16 is for aoti packages compiled for a GPU (--device "
                         "cuda); on the CPU use fp32, or bf16 where the CPU has it")
    if precision == "bf16" and not cpu.has_bf16:
        raise SpeccError(f"{where}: bf16 needs a CPU with native bf16 (AVX-512 bf16 or AMX); "
                         f"this one ({cpu.summary()}) would emulate it, about 10× slower than "
                         "fp32. Use fp32 or auto")
    return precision


def resolve_cuda_precision(precision: str, where: str = "--precision",
                           bf16: bool | None = None) -> str:
    """``precision`` of an ``aoti`` package for CUDA, ``auto`` made fp16; bf16 refused where the
    GPU has no bf16 arithmetic (``bf16``, asked of torch when not given), int8 refused (torchao's
    quantizer that specc calibrates with makes x86 CPU kernels).

    Raises:
        SpeccError: a precision a CUDA package cannot have, and what to use instead.
    """
    if precision not in PRECISIONS:
        raise SpeccError(f"{where}: unknown precision {precision!r}; expected one of "
                         f"{', '.join(CUDA_PRECISIONS)} for --device cuda")
    if precision == "int8":
        raise SpeccError(f"{where}: int8 packages are quantized for x86 CPUs; for --device cuda "
                         "use fp16, bf16 or fp32")
    if precision == "auto":
        return "fp16"
    if precision == "bf16":
        if bf16 is None:
            import torch

            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if not bf16:
            raise SpeccError(f"{where}: this GPU has no bf16 arithmetic; use fp16 or fp32")
    return precision


def check_libraries(requests: Sequence[Request]) -> None:
    """Refuse, before anything is built, requests whose libraries are not installed."""
    missing: list[str] = []
    for request in requests:
        for key in (request.target, request.label):
            for module, dist in NEEDS.get(key, ()):
                if importlib.util.find_spec(module) is None and dist not in missing:
                    missing.append(dist)
    if missing:
        raise SpeccError(f"--target: {', '.join(r.label for r in requests)} needs "
                         f"{', '.join(missing)}, which is not installed; install the deploy "
                         "extra: pip install 'specc[deploy]'")


# -- the inference graph ------------------------------------------------------------------------


#: The inference passes (:mod:`specc.passes`) every artifact's graph is made with.
GRAPH_PASSES = ("inference_only", "fold_batchnorm")


def inference_graph(module: nn.Module) -> nn.Module:
    """What every artifact is made from: an eval-mode copy without dropout and training-only
    heads, its batch norms folded (:mod:`specc.passes`). Memory layout is left to each backend."""
    from specc.passes import optimize_for_inference

    return optimize_for_inference(module, GRAPH_PASSES)


def artifact_passes(request: Request) -> tuple[str, ...]:
    """The passes the graph of ``request``'s artifact goes through: :data:`GRAPH_PASSES`; for
    bf16 also ``wide_atrous`` (plain convs of a wide rate as one 1×1 conv and shifted sums,
    depthwise ones padded first: oneDNN's bf16 kernels slow down with the rate;
    :data:`specc.passes.MIN_TAP_RATE`); for ``aoti`` fp32 also ``channels_last``
    (:func:`channels_last_input`)."""
    wide = ("wide_atrous",) if request.precision == "bf16" and request.device == "cpu" else ()
    return GRAPH_PASSES + wide + (("channels_last",) if channels_last_input(request) else ())


def channels_last_input(request: Request) -> bool:
    """Whether ``request``'s artifact is compiled for channels-last images (its graph and its
    example input in that layout; the loader hands it images so, and ``artifacts.json`` says
    it). Inductor does not choose that layout by itself for a graph of dynamic size; so
    compiled, the ``aoti`` fp32 artifact ran 1.27× faster for MobileNetV2 and 1.08× for
    ResNet-50 at 257×257 (BENCHMARKS.md). bf16 gained nothing from it, and int8 graphs keep
    the layout torchao's quantizer was made for. A CUDA package is channels-last at every
    precision: cuDNN's tensor-core convs (fp16, bf16, TF32) take that layout natively."""
    return request.target == "aoti" and (request.precision == "fp32" or request.device == "cuda")


def _source_graph(job: Job, request: Request) -> nn.Module:
    """The fp32 graph ``request``'s artifact is made from: the job's graph after the passes that
    :func:`artifact_passes` adds to :data:`GRAPH_PASSES`."""
    from specc.passes import optimize_for_inference

    extra = artifact_passes(request)[len(GRAPH_PASSES):]
    return optimize_for_inference(job.graph, extra) if extra else job.graph


def example_input(size: Sequence[int], batch: int = 2, channels_last: bool = False,
                  device: str = "cpu") -> torch.Tensor:
    """The example a graph is exported with: by default a batch of 2 (so that a dynamic batch is
    not specialized to 1), in the channels-last layout when asked, on ``device``."""
    import torch

    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def fixed_geometry(model: nn.Module) -> bool:
    """Whether ``model`` is built for one input size: an image pooling with a fixed kernel
    (``aspp.image_pooling.kernel: fixed``, clamped on smaller maps and sliding on larger ones),
    whose exported graph would be tied to a narrow band of sizes by guards that its range
    constraints do not show."""
    return any(type(m).__name__ == "ImagePooling" and len(getattr(m, "kernel", ())) > 0
               for m in model.modules())


def export_program(model: nn.Module, size: Sequence[int], channels_last: bool = False,
                   static: bool = False, device: str = "cpu") -> Any:
    """``torch.export`` of ``model`` (an inference graph) with a dynamic batch, height and width
    (``Dim.AUTO``: a dimension the graph ties to a value or a range stays so, and
    :func:`shape_bounds` reports it). A model of :func:`fixed_geometry` is exported at ``size``
    with a dynamic batch only, as DeepLab's own exported graphs take 513×513; evaluation pads
    smaller images up to it (:class:`runtime.evaluate.Alignment`). ``static`` exports one shape,
    1×3×``size`` (``specc build --static``). With ``channels_last`` the example input is
    channels-last (the graph's weights should be too: the ``channels_last`` pass). The example
    input is on ``device``, where ``model`` must be."""
    import torch
    from torch.export import Dim

    dims = {0: Dim.AUTO} if fixed_geometry(model) else {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    example = example_input(size, batch=1 if static else 2, channels_last=channels_last,
                            device=device)
    with torch.no_grad(), _quiet():
        return torch.export.export(model, (example,), dynamic_shapes=None if static else (dims,),
                                   strict=False)


def shape_bounds(program: Any) -> dict[str, list[int | None]]:
    """The input dimensions an exported program takes: ``batch``, ``height`` and ``width`` each
    as ``[lowest, highest]`` (``highest`` None: unbounded; both equal: a fixed size)."""
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                       and n.name not in program.graph_signature.inputs_to_parameters
                       and n.name not in program.graph_signature.inputs_to_buffers)
    shape = placeholder.meta["val"].shape
    out: dict[str, list[int | None]] = {}
    for name, dim in zip(("batch", "channels", "height", "width"), shape, strict=True):
        if name == "channels":
            continue
        if isinstance(dim, int):
            out[name] = [dim, dim]
            continue
        ranges = program.range_constraints.get(dim.node.expr)
        low, high = (ranges.lower, ranges.upper) if ranges is not None else (0, None)
        bounded = high is not None and str(high).lstrip("-").isdigit()
        # export reports dynamic dimensions from 2 (it traces sizes 0 and 1 apart), yet the graph
        # runs at 1: a lower bound of 2 is no bound
        out[name] = [1 if int(low) <= 2 else int(low), int(high) if bounded else None]
    return out


def shape_constraints(bounds: dict[str, list[int | None]]) -> dict[str, str]:
    """:func:`shape_bounds` as text: each ``"dynamic"``, ``"dynamic, ≥ 17"``, a range, or a fixed
    size."""
    out: dict[str, str] = {}
    for name, (low, high) in bounds.items():
        if low == high:
            out[name] = f"fixed at {low}"
        elif high is None:
            out[name] = "dynamic" if low is None or low <= 1 else f"dynamic, ≥ {low}"
        else:
            out[name] = f"dynamic, {low}..{high}"
    return out


def check_input(path: Path, bounds: dict[str, list[int | None]] | None, shape: Sequence[int],
                ) -> None:
    """Refuse an input ``shape`` (N, C, H, W) outside an artifact's ``bounds``.

    Raises:
        SpeccError: naming the dimension, what the artifact takes and what was found.
    """
    for name, value in zip(("batch", "height", "width"), (shape[0], shape[-2], shape[-1]),
                           strict=True):
        low, high = (bounds or {}).get(name, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            takes = (f"of {low}" if low == high else f"of at least {low}" if high is None
                     else f"of at most {high}" if low is None else f"from {low} to {high}")
            hint = ("; eval and predict take larger images window by window with --tile auto"
                    if high is not None and value > high and name != "batch" else "")
            raise SpeccError(f"{path}: this artifact takes an input {name} {takes} (its graph "
                             f"was exported so, see artifacts.json), found {value}{hint}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' advisory warnings (specialization notes, deprecations)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch.onnx",
                                              "torch._dynamo", "torch.fx.experimental",
                                              "torch.utils.cpp_extension",
                                              "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- writers -------------------------------------------------------------------------------------


@dataclass
class Job:
    """What every writer gets: the inference graph, its export, the spec's input size, the
    calibration images (for int8) and the folder to write into."""

    graph: nn.Module
    program: Any
    size: tuple[int, int]
    folder: Path
    calibration: Sequence[torch.Tensor]
    #: int8 with the ranges that do not saturate without VNNI (:func:`half_int8_range`).
    half_int8: bool = False
    #: One input shape, 1×3×``size`` (:func:`export_program`), for every artifact.
    static: bool = False
    #: What writers did beyond exporting, per artifact file, for its ``artifacts.json`` entry.
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _write_export(job: Job, request: Request) -> None:
    import torch

    with _quiet():
        torch.export.save(job.program, job.folder / request.file)


def _device_graph(graph: nn.Module, request: Request) -> nn.Module:
    """A copy of ``graph`` on ``request``'s device computing in its precision (bf16 or fp16)
    between an fp32 input and fp32 logits; ``graph`` itself for fp32 on the CPU."""
    import copy

    import torch
    from torch import nn

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(request.precision)
    if dtype is None and request.device == "cpu":
        return graph

    class LowPrecision(nn.Module):
        def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
            super().__init__()
            self.inner, self.dtype = inner.to(dtype), dtype

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.inner(x.to(self.dtype))["out"].float()}

    moved = copy.deepcopy(graph).to(request.device)
    return (moved if dtype is None else LowPrecision(moved, dtype)).eval()


def int8_quantizer(half: bool) -> Any:
    """torchao's X86 inductor quantizer with its default static config (per-channel symmetric
    int8 weights, uint8 per-tensor activations from histograms), with ``half`` the activations
    reduced to 7 bits (0..127), for a CPU without int8 dot-product instructions (VNNI,
    :func:`half_int8_range`). There oneDNN multiplies uint8 by int8 with AVX2's
    ``vpmaddubsw``, whose int16 sums saturate at full range: the trained demo's int8 artifact
    scored 94.3 % mIoU on AMX and 86.8 % when the same package ran oneDNN's AVX2 kernels
    (``ONEDNN_MAX_CPU_ISA=AVX2``); with 7-bit activations 94.3 % on both (torchao's
    documentation advises reduce_range for such CPUs). On an AVX2-only CPU, the demo trained
    there lost 0.28 point so (93.50 % against 93.78 % in fp32)."""
    with _quiet():  # importing torchao logs a deprecation note from torch's pytree
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        reduce_range=half))
    return quantizer


#: ``--int8-range``: ``half`` keeps int8 products from saturating on CPUs without VNNI, ``full``
#: uses the whole range (for CPUs with VNNI or AMX only), ``auto`` picks for the building CPU.
INT8_RANGES = ("auto", "full", "half")


def half_int8_range(int8_range: str, cpu: CpuInfo | None = None) -> bool:
    """Whether int8 artifacts are quantized with the ranges that do not saturate on a CPU
    without VNNI: ``int8_range`` (one of :data:`INT8_RANGES`), ``auto`` meaning ``half`` where
    ``cpu`` (this machine's by default) has no VNNI.

    Raises:
        SpeccError: an unknown value.
    """
    if int8_range not in INT8_RANGES:
        raise SpeccError(f"--int8-range: expected one of {', '.join(INT8_RANGES)}, found "
                         f"{int8_range!r}")
    if int8_range == "auto":
        return not (cpu or cpu_info()).has_vnni
    return int8_range == "half"


def nncf_overflow_fix(half: bool) -> str:
    """NNCF's ``OverflowFix`` for an ``openvino`` int8 IR: with ``half`` (for CPUs without
    VNNI, :func:`half_int8_range`) the weights of every plain conv and matmul (not the
    depthwise convs) in half the int8 range (``enable``), since OpenVINO's int8 kernels there
    multiply with AVX2's saturating ``vpmaddubsw`` as oneDNN's do (see :func:`int8_quantizer`);
    otherwise NNCF's default, only the first conv's (``first_layer_only``). The demo trained on
    an AVX2-only CPU scored 93.8 % mIoU in fp32 there, 93.3 % as int8 with ``enable`` and
    89.3 % with NNCF's default."""
    return "enable" if half else "first_layer_only"


def int8_scheme(request: Request, half: bool) -> dict[str, Any] | None:
    """What ``artifacts.json`` records of an int8 artifact's quantization (None for other
    precisions): the ranges, which decide whether it saturates on a CPU without VNNI."""
    if request.precision != "int8":
        return None
    if request.target == "openvino":
        return {"quantizer": "nncf", "overflow_fix": nncf_overflow_fix(half),
                "for_cpus_without_vnni": half}
    activations = int8_quantizer(half).global_config.input_activation
    return {"quantizer": "torchao X86InductorQuantizer",
            "activation_range": [activations.quant_min, activations.quant_max],
            "for_cpus_without_vnni": half}


def _int8_program(job: Job) -> Any:
    """The inference graph quantized to int8 with torchao's pt2e flow for X86 inductor
    (:func:`int8_quantizer` with the job's ranges; the package is compiled for this machine):
    prepared, calibrated on ``job.calibration``, converted, and exported again (as
    :func:`export_program` exports the fp32 graph)."""
    import torch

    quantizer = int8_quantizer(job.half_int8)
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    with torch.no_grad(), _quiet():
        prepared = prepare_pt2e(job.program.module(), quantizer)
        for image in job.calibration:
            prepared(image)
        converted = convert_pt2e(prepared)
    return export_program(converted, job.size, static=job.static)


def _write_aoti(job: Job, request: Request) -> None:
    import torch

    if request.precision == "int8":
        program = _int8_program(job)
    else:
        program = export_program(_device_graph(_source_graph(job, request), request), job.size,
                                 channels_last=channels_last_input(request), static=job.static,
                                 device=request.device)
    with torch.no_grad(), _quiet():
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(job.folder / request.file),
            inductor_configs={"freezing": True})


def _write_onnx(job: Job, request: Request) -> None:
    import torch

    # The exported program carries its shapes (dynamic, or --static's one); the ONNX exporter
    # takes it as is.
    path = job.folder / request.file
    with torch.no_grad(), _quiet(), contextlib.redirect_stdout(None):
        program = torch.onnx.export(job.program, dynamo=True, input_names=["image"],
                                    output_names=["out"], verbose=False)
        program.save(str(path))
    cpu = cpu_info()
    if job.static and winograd_pays(cpu):
        import onnx

        from specc.onnx_static import winograd_convs

        model = onnx.load(str(path))
        rewritten = winograd_convs(model)
        onnx.save(model, str(path))
        job.notes[request.file] = {"static_rewrites": {"winograd_convs": rewritten},
                                   "rewritten_for": {"cpu": cpu.model, "avx2": cpu.has_avx2,
                                                     "avx512": cpu.has_avx512}}


def _write_openvino(job: Job, request: Request) -> None:
    import openvino as ov

    graph = _source_graph(job, request)
    program = (job.program if graph is job.graph
               else export_program(graph, job.size, static=job.static))
    with _quiet():
        model = ov.convert_model(program)
    if job.static:  # the converter leaves the input's dimensions open
        model.reshape([1, 3, *job.size])
    if request.precision == "int8":
        import nncf

        data = nncf.Dataset([image.numpy() for image in job.calibration])
        advanced = nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix(nncf_overflow_fix(job.half_int8)))
        with _quiet():
            model = nncf.quantize(model, data, subset_size=max(1, len(job.calibration)),
                                  advanced_parameters=advanced)
    # The precision travels with the IR: OpenVINO applies runtime_options when it compiles.
    hint = "bf16" if request.precision == "bf16" else "f32"
    if job.static:
        # one shape: the rewrites the runner makes per size are made here, for this CPU
        cpu = cpu_info()
        job.notes[request.file] = {"static_rewrites": optimize_static(model, cpu, hint),
                                   "rewritten_for": {"cpu": cpu.model,
                                                     **deciding_features(cpu)}}
    model.set_rt_info(hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(model, str(job.folder / request.file), compress_to_fp16=False)


WRITERS: dict[str, Callable[[Job, Request], None]] = {
    "export": _write_export, "aoti": _write_aoti, "onnx": _write_onnx,
    "openvino": _write_openvino,
}


# -- loading -------------------------------------------------------------------------------------


def _output(result: Any) -> Any:
    return result["out"] if isinstance(result, dict) else result


def _runner(path: Path, target: str, precision: str, threads: int | None = None,
            channels_last: bool = False, device: str = "cpu",
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from an fp32 image batch to fp32 logits, running the artifact at ``path``
    (onnxruntime and OpenVINO on ``threads`` threads when given; torch's own setting rules the
    others), handing it channels-last images when it was compiled for them. A CUDA package
    takes the images onto its GPU and leaves its logits there."""
    import numpy as np
    import torch

    if target == "export":
        with _quiet():
            module = torch.export.load(str(path)).module()
        return lambda x: _output(module(x))
    if target == "aoti":
        with _quiet():
            compiled = torch._inductor.aoti_load_package(str(path))
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return lambda x: _output(compiled(x.to(device, memory_format=layout)))
    if target == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's workers otherwise spin for a while after each run, taking the cores
        # from whatever runs next in the process: MobileNetV2's OpenVINO artifact timed right
        # after it took 33 ms instead of 21 (onnxruntime itself: 22.0 ms without, 23.8 with)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(
            session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])
    if target == "openvino":
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return OpenVinoRunner(path, config)
    raise SpeccError(f"{path}: not a deployment artifact")


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, its CPU plugin loaded; every OpenVINO model specc
    compiles goes through it.

    OpenVINO's CPU plugin gives the thread that loads it an alternate signal stack of its own
    and, when the plugin is released, puts back the stack that was there before. Each Core
    loads its own plugin, so two Cores released in the order they were made leave the thread
    pointing at the first plugin's freed stack. Python's signal handlers run on that stack: the
    next one to run (a DataLoader's SIGCHLD when a worker exits) then kills the process with a
    segmentation fault, and no traceback. One Core that lives as long as the process, its
    plugin loaded before any other library's (NNCF opens Cores of its own while quantizing),
    releases nothing out of order."""
    import openvino as ov

    core = ov.Core()
    core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
    return core


class OpenVinoRunner:
    """An OpenVINO IR compiled for the CPU, and again for each input shape that comes twice.

    The IR takes a dynamic batch, height and width; OpenVINO plans its kernels better for a
    static shape (MobileNetV2 v3+ at 257×257: 1.2× faster so; BENCHMARKS.md). A shape seen the
    first time runs on the dynamic model; from its second time on, on a model reshaped to it.
    The :data:`STATIC_SHAPES` most recent such models are kept, so evaluating images of many
    sizes compiles only the sizes that repeat. With the size known, convs are rewritten first
    (:func:`specc.openvino_static.optimize_static`: int8 atrous ones tap by tap on AMX CPUs,
    the large 3×3 ones by Winograd on AVX2 CPUs, the taps that read only padding dropped).
    Compiling a size takes a fraction of a second, a few seconds with Winograd's transformed
    weights (ResNet-50 on 2 AVX2 cores: 0.3 → 2.4 s at 513×513 in fp32, 0.4 → 2.1 s in int8).
    An IR of one shape (``specc build --static``, rewritten when it was built) is compiled once,
    as it is."""

    #: How many static-shape compilations are kept.
    STATIC_SHAPES = 4

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path, self.config = path, config
        self.core = openvino_core()
        self.dynamic = self.core.compile_model(str(path), "CPU", config)
        self.one_shape = self.dynamic.input(0).get_partial_shape().is_static
        self.seen: set[tuple[int, ...]] = set()
        self.static: dict[tuple[int, ...], Any] = {}

    def compiled_for(self, shape: tuple[int, ...]) -> Any:
        """The compiled model that runs inputs of ``shape``."""
        if self.one_shape:
            return self.dynamic
        if shape in self.static:
            self.static[shape] = self.static.pop(shape)  # the most recent goes last
            return self.static[shape]
        if shape not in self.seen:
            self.seen.add(shape)
            return self.dynamic
        model = self.core.read_model(str(self.path))
        model.reshape(list(shape))
        optimize_static(model, precision=self.config.get("INFERENCE_PRECISION_HINT", "f32"))
        if len(self.static) >= self.STATIC_SHAPES:
            del self.static[next(iter(self.static))]
        self.static[shape] = self.core.compile_model(model, "CPU", self.config)
        return self.static[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        compiled = self.compiled_for(tuple(x.shape))
        return torch.from_numpy(compiled(x.numpy())[0].copy())


class ArtifactModule:
    """A deployment artifact behind the calling convention of a generated model:
    ``module(images)["out"]``, in eval mode, with its spec information."""

    def __init__(self, path: Path, entry: dict[str, Any], info: dict[str, Any],
                 threads: int | None = None) -> None:
        self.path, self.entry, self.info = path, entry, info
        self.training = False
        self._channels_last = entry.get("input_memory_format") == "channels_last"
        #: Where it runs: the CPU, or the GPU of an ``aoti`` package built for CUDA.
        self.device = entry.get("device", "cpu")
        self._run = _runner(path, entry["target"], entry["precision"], threads,
                            self._channels_last, self.device)

    @property
    def input_bounds(self) -> dict[str, list[int | None]]:
        """The batch, heights and widths the artifact takes (:func:`shape_bounds`); empty for
        listings that predate them."""
        return self.entry.get("input_bounds") or {}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        bounds = self.input_bounds
        if bounds.get("batch") == [1, 1] and images.shape[0] > 1:  # --static: image by image
            return {"out": torch.cat([self(image[None])["out"] for image in images])}
        check_input(self.path, bounds, images.shape)
        # one copy at most, onto its device and into the layout it was compiled for; the
        # logits come back where the images were
        layout = torch.channels_last if self._channels_last else torch.contiguous_format
        with torch.inference_mode():
            x = images.to(self.device, torch.float32, memory_format=layout)
            return {"out": self._run(x).to(images.device)}

    def eval(self) -> ArtifactModule:
        return self

    def train(self, mode: bool = True) -> ArtifactModule:
        if mode:
            raise SpeccError(f"{self.path}: a deployment artifact cannot be trained")
        return self

    def to(self, *args: Any, **kwargs: Any) -> ArtifactModule:
        return self  # artifacts run where they were compiled for (:attr:`device`)


DEPLOYED_SUFFIXES = (".pt2", ".onnx", ".xml")


class _ListedArtifact(BaseModel):
    """What the readers of an ``artifacts.json`` entry rely on; the rest is information."""

    model_config = ConfigDict(extra="allow")
    file: str
    target: Literal[TARGETS]  # one of TARGETS
    precision: str
    device: Literal[DEVICES] = "cpu"  # one of DEVICES
    sha256: str | None = None
    file_sha256: dict[str, str] | None = None
    files: list[str] | None = None
    input_bounds: dict[str, Annotated[list[int | None], Field(min_length=2, max_length=2)]
                       ] | None = None


class _ListedSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    resolved: dict[str, Any]
    spec_sha256: str


class _Listing(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: _ListedSpec
    artifacts: list[_ListedArtifact]


def read_listing(listing: Path) -> dict[str, Any]:
    """``artifacts.json`` read and checked: the shape its readers rely on, and the resolved
    spec still the one its sha256 names (eval, predict and bench take the normalization and
    the input size from it, so an edited spec would change every result silently).

    Raises:
        SpeccError: the file cannot be read, is not JSON of that shape (the key and what was
            found), or its spec was changed after the build.
    """
    try:
        info = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpeccError(f"{listing}: cannot read the artifact list ({err})") from None
    try:
        _Listing.model_validate(info)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        found = "nothing" if first["type"] == "missing" else _found(first.get("input"))
        raise SpeccError(f"{listing}: not an artifact list as specc writes it: {where}: "
                         f"expected {_expected(first)}, found {found}; "
                         "build the folder again") from None
    spec = info["spec"]
    if canonical_sha256(spec["resolved"]) != spec["spec_sha256"]:
        raise SpeccError(f"{listing}: its spec (spec.resolved) differs from the one its "
                         "spec_sha256 names; the file was changed after the build")
    return info


#: What a pydantic error type asks for, in a message's words.
_EXPECTED = {"model_type": "a mapping", "dict_type": "a mapping", "list_type": "a list",
             "string_type": "a string", "int_type": "a whole number", "missing": "this key",
             "too_short": "a pair [least, most]", "too_long": "a pair [least, most]"}


def _expected(error: Any) -> str:
    """What a pydantic error asks for, in a message's words (``one of 'onnx' or ...``)."""
    return _EXPECTED.get(error["type"]) or error["msg"].removeprefix("Input should be ")


def _found(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def load_artifact(path: str | Path, threads: int | None = None) -> ArtifactModule:
    """A deployment artifact of a build folder, checked against the folder's ``artifacts.json``
    (its sha256 and the spec it was built from).

    Raises:
        SpeccError: no ``artifacts.json`` beside it, the file is not listed or was changed, or its
        library is missing.
    """
    path = Path(path)
    listing = path.parent / ARTIFACTS
    if not listing.is_file():
        raise SpeccError(f"{path}: no {ARTIFACTS} beside it; deployment artifacts are opened "
                         "from the build folder specc wrote them into")
    info = read_listing(listing)
    entry = next((a for a in info["artifacts"] if a["file"] == path.name), None)
    if entry is None:
        raise SpeccError(f"{path}: not listed in {listing}")
    # every file of the artifact (an IR's .bin too); older listings hash the first file only
    hashes = entry.get("file_sha256") or {path.name: entry.get("sha256")}
    for name, digest in hashes.items():
        part = path.parent / name
        if not part.is_file():
            raise SpeccError(f"{part}: missing; the artifact {path.name} is made of "
                             f"{', '.join(entry.get('files') or hashes)} (see {listing}); "
                             "build it again")
        if file_sha256(part) != digest:
            raise SpeccError(f"{part}: its sha256 differs from the one in {listing}; the file "
                             "was changed after the build")
    check_libraries([Request(entry["target"], entry["precision"])])
    if entry.get("device") == "cuda":
        check_cuda_artifact(path)
    for note in (saturation_note(entry, cpu_info()), rewrite_note(entry, cpu_info())):
        if note is not None:
            warnings.warn(f"{path}: {note}", SpeccWarning, stacklevel=2)
    try:
        return ArtifactModule(path, entry, info, threads)
    except SpeccError:
        raise
    except Exception as err:  # the runtime's own refusal of a file it cannot open
        last = ([line for line in str(err).splitlines() if line.strip()] or [""])[-1]
        raise SpeccError(f"{path}: {entry['target']} cannot open it: {type(err).__name__}: "
                         f"{last.strip()[:300]}") from None


def check_cuda_artifact(path: Path) -> None:
    """Refuse to open an ``aoti`` package compiled for CUDA where torch sees no GPU.

    Raises:
        SpeccError: naming the file and what runs here instead.
    """
    import torch

    if not torch.cuda.is_available():
        raise SpeccError(f"{path}: an aoti package compiled for CUDA, and torch sees no GPU "
                         "here; build one for the CPU (specc build --target aoti) to run it on "
                         "this machine")


def listed_device(path: Path) -> str:
    """Where the artifact at ``path`` runs by its build folder's ``artifacts.json``: ``cuda``
    for an ``aoti`` package built for the GPU, else ``cpu`` (also when the file is not listed:
    :func:`load_artifact` then says why it cannot be opened)."""
    listing = path.parent / ARTIFACTS
    if not listing.is_file():
        return "cpu"
    entry = next((a for a in read_listing(listing)["artifacts"] if a["file"] == path.name), {})
    return entry.get("device", "cpu")


def saturation_note(entry: dict[str, Any], cpu: CpuInfo) -> str | None:
    """Why an int8 artifact (its ``artifacts.json`` entry) may lose accuracy on ``cpu``: it was
    quantized with full-range ints (for CPUs with VNNI) and this CPU has none, so its int8
    products saturate (:func:`int8_quantizer`, :func:`nncf_overflow_fix`). None when it fits."""
    if entry.get("precision") != "int8" or cpu.has_vnni:
        return None
    scheme = entry.get("int8") or {}
    if scheme.get("for_cpus_without_vnni"):
        return None
    return ("int8 artifact quantized for CPUs with VNNI (int8 dot products); this CPU has "
            "none, so its int8 sums may saturate and accuracy drop by points. Build it with "
            "--int8-range half (the default on a CPU without VNNI)")


def rewrite_note(entry: dict[str, Any], cpu: CpuInfo) -> str | None:
    """Why an artifact rewritten for one shape at build time (its ``artifacts.json`` entry) may
    not be the fastest on ``cpu``: the rewrites were chosen for a CPU with other features, of
    those that decide them (:func:`specc.openvino_static.deciding_features`; for ONNX, AVX2 and
    AVX-512). None when they fit."""
    made_for = entry.get("rewritten_for")
    if not made_for:
        return None
    here = {name: value for name, value in deciding_features(cpu).items() if name in made_for}
    if all(made_for[name] == value for name, value in here.items()):
        return None

    def listing(features: dict[str, Any]) -> str:
        return ", ".join(f"{name} {'yes' if features.get(name) else 'no'}" for name in here)

    return (f"its convs were rewritten for the CPU it was built on ({made_for.get('cpu')}: "
            f"{listing(made_for)}); this one differs ({listing(here)}), and other rewrites may "
            "run faster here: build it again on this machine")


def _artifact_files(path: Path) -> list[Path]:
    """The files an artifact consists of (OpenVINO's IR is an .xml and its .bin)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


# -- build ---------------------------------------------------------------------------------------


def agreement(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference, the output's scale, and the fraction of pixels with the same
    argmax."""
    return {"max_abs_diff": float((got.float() - want).abs().max()),
            "output_scale": float(want.abs().max()),
            "argmax_agreement": float((got.argmax(1) == want.argmax(1)).float().mean())}


def versions() -> dict[str, str]:
    """The installed versions of :data:`VERSIONED`."""
    found = {}
    for dist in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def write_targets(module: nn.Module, size: Sequence[int], requests: Sequence[Request],
                  folder: Path, *, check_images: Sequence[torch.Tensor],
                  calibration: Sequence[torch.Tensor] = (),
                  progress: Callable[[str], None] = lambda _: None,
                  score: Callable[[list[torch.Tensor]], float] | None = None,
                  int8_range: str = "auto", static: bool = False) -> list[dict[str, Any]]:
    """Write every requested artifact except ``torchscript`` (the build writes that) into
    ``folder``, load each back and check it against ``module`` on ``check_images``; with
    ``score`` (the check images have labels), each check also gives the artifact's mIoU beside
    the reference's, so the cost of bf16 or int8 is measured. int8 artifacts are quantized with
    ``int8_range`` (:func:`half_int8_range`). ``static`` makes every deployment artifact for
    one input shape, 1×3×``size``, and rewrites the ``openvino`` IRs for it and this CPU
    (:func:`specc.openvino_static.optimize_static`, as the runner otherwise does per size) and
    the ``onnx`` file (:func:`specc.onnx_static.winograd_convs`, where it pays): for
    deployments that serve one size, with OpenVINO's own runtime or onnxruntime.

    Returns one entry per artifact (including ``torchscript``, checked too) for
    ``artifacts.json``.

    Raises:
        SpeccError: an int8 request without calibration images, an unknown ``int8_range``, or
        an exporter's failure (naming the target and what it said).
    """
    import torch

    half = half_int8_range(int8_range)
    needs_export = [r for r in requests if r.target != "torchscript"]
    if any(r.precision == "int8" for r in requests) and not calibration:
        raise SpeccError("int8 targets need calibration images: give --calibration N with "
                         "N > 0")
    reference = module.eval()
    with torch.no_grad():
        wants = [reference(x)["out"] for x in check_images]
    entries = []
    job = None
    if needs_export:
        shapes = shape_words(size) if static else "dynamic batch, height and width"
        progress(f"inference graph: export ({shapes})")
        graph = inference_graph(module)
        job = Job(graph, _exported(graph, size, static), tuple(size), folder, calibration, half,
                  static)
    for request in requests:
        start = time.perf_counter()
        if request.target != "torchscript":
            progress(f"{request.label}: writing {request.file}")
            try:
                WRITERS[request.target](job, request)
            except SpeccError:
                raise
            except Exception as err:  # an exporter's own failure, with its message
                raise SpeccError(f"--target {request.label}: the {request.target} writer "
                                 f"failed: {type(err).__name__}: {_first_line(err)}") from None
        seconds = time.perf_counter() - start
        progress(f"{request.label}: checking against the reference")
        entries.append(_checked(folder / request.file, request, check_images, wants, job,
                                seconds, score))
    return entries


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def shape_words(size: Sequence[int]) -> str:
    return f"one shape, 1×3×{size[0]}×{size[1]}"


def _exported(graph: nn.Module, size: Sequence[int], static: bool = False) -> Any:
    try:
        return export_program(graph, size, static=static)
    except Exception as err:
        raise SpeccError(f"--target: torch.export cannot trace this network: "
                         f"{type(err).__name__}: {_first_line(err)}") from None


def _checked(path: Path, request: Request, check_images: Sequence[torch.Tensor],
             wants: Sequence[torch.Tensor], job: Job | None, seconds: float,
             score: Callable[[list[torch.Tensor]], float] | None) -> dict[str, Any]:
    """The ``artifacts.json`` entry of the artifact at ``path``: loaded back, run on the check
    images, compared with the reference's logits ``wants``."""
    import torch

    if request.target == "torchscript":
        from specc.artifacts import read_torchscript

        scripted, _ = read_torchscript(path)
        run = lambda x: scripted.eval()(x)["out"]  # noqa: E731
    else:
        run = _runner(path, request.target, request.precision,
                      channels_last=channels_last_input(request), device=request.device)
    with torch.no_grad():
        gots = [run(x).cpu() for x in check_images]
    # model.pt is not made from the export: --static's one shape is not its own
    bounds = shape_bounds(job.program) if job and not (
        job.static and request.target == "torchscript") else {
        name: [1, None] for name in ("batch", "height", "width")}
    got, want = torch.cat([g.float() for g in gots]), torch.cat(list(wants))
    check = {**agreement(got, want), "images": int(got.shape[0]), "size": list(got.shape[-2:])}
    if score is not None:
        check["miou"], check["reference_miou"] = score(gots), score(list(wants))
    return {
        "target": request.target,
        "precision": request.precision,
        "device": request.device,
        "passes": list(artifact_passes(request)) if request.target != "torchscript" else [],
        "file": path.name,
        "files": [p.name for p in _artifact_files(path)],
        "sha256": file_sha256(path),
        "file_sha256": {p.name: file_sha256(p) for p in _artifact_files(path)},
        "bytes": sum(p.stat().st_size for p in _artifact_files(path)),
        **(job.notes.get(path.name, {}) if job else {}),
        "check": check,
        "shape_constraints": shape_constraints(bounds),
        "input_memory_format": "channels_last" if channels_last_input(request) else "contiguous",
        "int8": int8_scheme(request, job.half_int8 if job else False),
        "input_bounds": bounds,
        "seconds": round(seconds, 1),
        "versions": versions(),
    }


def artifacts_json(spec_info: dict[str, Any], entries: Sequence[dict[str, Any]],
                   check_source: str) -> str:
    """The text of ``artifacts.json``: the spec, the machine, and every artifact's check."""
    return json.dumps({"spec_sha256": spec_info["spec_sha256"], "spec": spec_info,
                       "cpu": cpu_info().as_dict(), "check_images": check_source,
                       "artifacts": list(entries)}, indent=2, sort_keys=True) + "\n"
