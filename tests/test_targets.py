"""Deployment artifacts (``specc build --target``, :mod:`specc.targets`) and ``specc bench``.

One build of the demo spec at a small size writes the export, ONNX and OpenVINO (fp32 and int8)
artifacts; each is then opened the way eval and predict open it and compared with the compiled
module on new images, and with what the build recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.calibration import spec_images
from specc.api import build, load_spec
from specc.build import Deployment, build_to
from specc.errors import SpeccError
from specc.hardware import CpuInfo, cpu_info
from specc.targets import (
    ARTIFACTS,
    Request,
    check_libraries,
    load_artifact,
    openvino_core,
    parse_requests,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
SMALL = ["input.size=[65, 65]", "data.synthetic.val_length=8", "data.synthetic.train_length=8",
         "data.synthetic.size=72"]
AVX2 = CpuInfo("test CPU", frozenset({"avx2", "fma"}))
BF16 = CpuInfo("test CPU", frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}))


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with batch-norm statistics that are not the identity, so folding is tested."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The demo compiled with random statistics and built with four artifacts."""
    from runtime.calibration import labelled_images, mean_iou, spec_images

    comp = build(load_spec(DEMO, SMALL))
    randomized(comp.module)
    requests = parse_requests(["export", "onnx", "openvino:fp32", "openvino:int8"], cpu=AVX2)
    pairs = labelled_images(comp.spec, 3)
    deploy = Deployment(tuple(requests), tuple(image for image, _ in pairs), "val",
                        tuple(spec_images(comp.spec, 4, split="train")),
                        score=lambda logits: mean_iou(comp.spec, [lb for _, lb in pairs], logits))
    out = tmp_path_factory.mktemp("targets")
    build_to(comp, out, deploy=deploy)
    return comp, out / comp.spec.name


def test_int8_activations_are_seven_bits_without_vnni() -> None:
    """AVX2's u8·s8 multiply saturates with full-range activations: ``--int8-range auto`` gives
    0..127 there, 0..255 with VNNI (or AMX); ``half`` and ``full`` hold on any CPU; weights are
    int8 either way. An unknown range is refused."""
    from specc.targets import half_int8_range, int8_quantizer

    vnni = CpuInfo("test CPU", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
    for int8_range, cpu, top in (("auto", AVX2, 127), ("auto", vnni, 255), ("auto", BF16, 255),
                                 ("full", AVX2, 255), ("half", BF16, 127)):
        config = int8_quantizer(half_int8_range(int8_range, cpu)).global_config
        assert (config.input_activation.quant_min, config.input_activation.quant_max) == (0, top)
        assert (config.weight.quant_min, config.weight.quant_max) == (-128, 127)
    with pytest.raises(SpeccError, match=r"--int8-range: expected one of auto, full, half, "
                                         r"found 'wide'"):
        half_int8_range("wide", AVX2)


def plain_conv_weights(xml: Path) -> list[Any]:
    """The int8 weight constants of an IR's plain (not grouped) convolutions, each found by
    walking back from the conv's weight input to its constant."""
    import openvino as ov

    found = []
    for op in openvino_core().read_model(str(xml)).get_ops():
        if op.get_type_name() != "Convolution":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant":
            node = node.input_value(0).get_node()
        if node.get_element_type() == ov.Type.i8:
            found.append(node.get_data())
    return found


def test_openvino_int8_weights_are_half_range_for_cpus_without_vnni(tmp_path: Path) -> None:
    """``--int8-range half`` (the default on CPUs without VNNI) keeps every plain conv's int8
    weights of an ``openvino`` IR within half the range (|w| <= 64: NNCF's overflow fix for all
    layers), so OpenVINO's AVX2 products do not saturate; ``full`` (NNCF's default: only the
    first layer halved) lets most convs use the whole range. ``artifacts.json`` says which."""
    comp = build(load_spec(DEMO, SMALL))
    randomized(comp.module)
    calibration = tuple(spec_images(comp.spec, 4, split="train"))
    widest = {}
    for int8_range in ("half", "full"):
        deploy = Deployment(tuple(parse_requests(["openvino:int8"])),
                            tuple(spec_images(comp.spec, 1, split="val")), "val", calibration,
                            int8_range=int8_range)
        build_to(comp, tmp_path / int8_range, deploy=deploy)
        folder = tmp_path / int8_range / comp.spec.name
        weights = plain_conv_weights(folder / "model-openvino-int8.xml")
        assert len(weights) >= 10
        widest[int8_range] = [int(abs(w.astype("int32")).max()) for w in weights]
        assert listing(folder)["artifacts"][-1]["int8"] == {
            "quantizer": "nncf", "for_cpus_without_vnni": int8_range == "half",
            "overflow_fix": "enable" if int8_range == "half" else "first_layer_only"}
    assert max(widest["half"]) <= 64
    assert sum(w > 64 for w in widest["full"]) > len(widest["full"]) // 2


def test_an_int8_artifact_for_vnni_cpus_warns_on_a_cpu_without(
        built: tuple[Any, Path], cli: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened on a CPU without VNNI, an int8 artifact quantized for VNNI CPUs (full-range ints)
    warns that it may saturate; the command line prints one ``warning:`` line and goes on.
    Without the mismatch, nothing is said."""
    import warnings

    import specc.targets as targets
    from specc.errors import SpeccWarning

    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    info = listing(copy)

    def listed_for_cpus_without_vnni(safe: bool) -> None:
        for entry in info["artifacts"]:
            if entry["precision"] == "int8":
                entry["int8"] = {**entry["int8"], "for_cpus_without_vnni": safe}
        (copy / ARTIFACTS).write_text(json.dumps(info))

    listed_for_cpus_without_vnni(False)
    int8 = copy / "model-openvino-int8.xml"

    monkeypatch.setattr(targets, "cpu_info", lambda: AVX2)
    with pytest.warns(SpeccWarning, match="int8 sums may saturate"):
        load_artifact(int8)
    result = cli("eval", DEMO, *[a for s in SMALL for a in ("--set", s)], "--checkpoint", int8)
    assert result.code == 0, result.err
    assert [line for line in result.err.splitlines() if line.startswith("warning:")] == [
        f"warning: {int8}: " + targets.saturation_note(info["artifacts"][-1], AVX2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeccWarning)
        load_artifact(copy / "model-openvino-fp32.xml")  # not int8
        monkeypatch.setattr(targets, "cpu_info", lambda: BF16)
        load_artifact(int8)  # a CPU with VNNI
        monkeypatch.setattr(targets, "cpu_info", lambda: AVX2)
        listed_for_cpus_without_vnni(True)
        load_artifact(int8)  # half ranges, made for such a CPU


def listing(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ARTIFACTS).read_text())


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: [], "the top level: expected a mapping, found []"),
    (lambda d: {**d, "artifacts": [1, 2]}, "artifacts.0: expected a mapping, found 1"),
    (lambda d: {**d, "spec": None}, "spec: expected a mapping, found null"),
    (lambda d: {**d, "artifacts": [{**a, "input_bounds": {"height": [1]}}
                                   for a in d["artifacts"]]},
     "artifacts.0.input_bounds.height: expected a pair [least, most], found [1]"),
])
def test_an_artifact_list_of_another_shape_is_refused_by_key(
        edit: Any, expected: str, built: tuple[Any, Path], cli: Any, tmp_path: Path) -> None:
    """Valid JSON that is not what specc writes: exit 2 naming the key (was a traceback)."""
    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    (copy / ARTIFACTS).write_text(json.dumps(edit(listing(copy))))
    result = cli("predict", copy / "model.onnx", tmp_path / "none.png", "--out", tmp_path / "o")
    assert result.code == 2
    assert result.err.strip() == (f"error: {copy / ARTIFACTS}: not an artifact list as specc "
                                  f"writes it: {expected}; build the folder again")


def test_an_artifact_list_whose_spec_was_edited_is_refused(built: tuple[Any, Path], cli: Any,
                                                           tmp_path: Path) -> None:
    """predict takes the normalization from the listed spec: an edited mean would change every
    mask while eval, which reads the spec file, kept its score."""
    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    info = listing(copy)
    info["spec"]["resolved"]["input"]["mean"] = [0.0, 0.0, 0.0]
    (copy / ARTIFACTS).write_text(json.dumps(info))
    with pytest.raises(SpeccError, match=r"its spec \(spec.resolved\) differs from the one its "
                                         r"spec_sha256 names"):
        load_artifact(copy / "model.onnx")


@pytest.mark.skipif(not cpu_info().has_bf16, reason="bf16 artifacts need a CPU with native bf16")
def test_bf16_openvino_computes_the_wide_atrous_convs_as_taps(tmp_path: Path) -> None:
    """On a CPU with native bf16: a bf16 artifact of a network with wide ASPP rates is made from
    the graph with ``wide_atrous`` (so listed), and agrees with the fp32 reference at bf16's
    precision (random weights: logits close, classes nearly all the same)."""
    torch.manual_seed(0)  # the built module's initial weights
    comp = build(load_spec(DEMO, [*SMALL, "aspp.rates=[8, 12, 16]"]))
    randomized(comp.module)
    deploy = Deployment(tuple(parse_requests(["openvino:bf16"])),
                        tuple(spec_images(comp.spec, 2, split="val")), "val", ())
    build_to(comp, tmp_path, deploy=deploy)
    entry = listing(tmp_path / comp.spec.name)["artifacts"][-1]
    assert entry["precision"] == "bf16"
    assert entry["passes"] == ["inference_only", "fold_batchnorm", "wide_atrous"]
    # bf16's 8-bit mantissa on random weights: close logits, nearly the same classes
    check = entry["check"]
    assert check["max_abs_diff"] <= 0.05 * check["output_scale"]
    assert check["argmax_agreement"] >= 0.95


# -- requests and hardware ----------------------------------------------------------------------


def test_requests_resolve_auto_per_cpu_and_keep_build_order() -> None:
    assert parse_requests(["openvino", "export", "aoti"], cpu=AVX2) == [
        Request("export"), Request("aoti", "fp32"), Request("openvino", "fp32")]
    assert parse_requests(["aoti", "aoti:int8"], cpu=BF16) == [
        Request("aoti", "bf16"), Request("aoti", "int8")]
    assert parse_requests(["onnx", "onnx"], cpu=AVX2) == [Request("onnx")]


@pytest.mark.parametrize("texts, precision, message", [
    (["tflite"], "auto", "unknown target 'tflite'"),
    (["onnx:int8"], "auto", "onnx has no precision"),
    (["aoti:fp8"], "auto", "unknown precision 'fp8'"),
    (["aoti"], "bf16", "would emulate it, about 10× slower"),
    (["openvino:"], "auto", r"expected a precision after ':' \(auto, fp32, bf16, fp16, "
                            r"int8\), found none"),
    (["aoti:fp16"], "auto", "fp16 is for aoti packages compiled for a GPU"),
    (["openvino"], "fp16", "fp16 is for aoti packages compiled for a GPU"),
])
def test_bad_requests_are_refused(texts: list[str], precision: str, message: str) -> None:
    with pytest.raises(SpeccError, match=message):
        parse_requests(texts, precision, cpu=AVX2)


def test_cuda_requests_are_aoti_packages_for_the_gpu() -> None:
    """``--device cuda`` compiles the aoti packages for the GPU (``auto`` is fp16 there, and no
    bf16-only pass); the other targets stay the CPU's."""
    from specc.targets import artifact_passes

    requests = parse_requests(["onnx", "aoti", "aoti:bf16", "aoti:fp32"], cpu=AVX2,
                              device="cuda", gpu_bf16=True)
    assert requests == [Request("aoti", "fp32", "cuda"), Request("aoti", "bf16", "cuda"),
                        Request("aoti", "fp16", "cuda"), Request("onnx")]
    assert [r.file for r in requests] == ["model-aoti-cuda-fp32.pt2", "model-aoti-cuda-bf16.pt2",
                                          "model-aoti-cuda-fp16.pt2", "model.onnx"]
    assert requests[2].label == "aoti:fp16 on cuda"
    assert artifact_passes(requests[1]) == ("inference_only", "fold_batchnorm", "channels_last")
    assert "wide_atrous" in artifact_passes(Request("aoti", "bf16"))


@pytest.mark.parametrize("texts, precision, gpu_bf16, message", [
    (["aoti:int8"], "auto", True, "int8 packages are quantized for x86 CPUs; for --device cuda"),
    (["aoti"], "bf16", False, "this GPU has no bf16 arithmetic; use fp16 or fp32"),
    (["onnx", "export"], "auto", True, "only aoti packages are compiled for the GPU"),
])
def test_bad_cuda_requests_are_refused(texts: list[str], precision: str, gpu_bf16: bool,
                                       message: str) -> None:
    with pytest.raises(SpeccError, match=message):
        parse_requests(texts, precision, cpu=AVX2, device="cuda", gpu_bf16=gpu_bf16)
    with pytest.raises(SpeccError, match="--device: expected cpu or cuda, found 'gpu'"):
        parse_requests(texts, precision, cpu=AVX2, device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU says")
def test_a_cuda_package_is_refused_by_name_where_torch_sees_no_gpu(
        built: tuple[Any, Path], cli: Any, tmp_path: Path) -> None:
    """A package listed as compiled for CUDA: building one, opening it, evaluating it on the
    CPU are refused with what to do; bench times the folder's other artifacts."""
    result = cli("build", DEMO, "--target", "aoti", "--device", "cuda", "--out", tmp_path / "o")
    assert result.code == 2 and "--device cuda: CUDA is not available" in result.err
    assert not (tmp_path / "o").exists()
    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    info = listing(copy)
    next(a for a in info["artifacts"] if a["file"] == "model.pt2")["device"] = "cuda"
    (copy / ARTIFACTS).write_text(json.dumps(info))
    with pytest.raises(SpeccError, match=r"model.pt2: an aoti package compiled for CUDA, and "
                                         r"torch sees no GPU here; build one for the CPU"):
        load_artifact(copy / "model.pt2")
    sets = [a for s in SMALL for a in ("--set", s)]
    result = cli("eval", DEMO, *sets, "--checkpoint", copy / "model.pt2", "--device", "cpu")
    assert result.code == 2
    assert "compiled for CUDA runs on the GPU; for --device cpu build one for the CPU" \
        in result.err
    result = cli("eval", DEMO, *sets, "--checkpoint", copy / "model.pt2")
    assert result.code == 2 and "torch sees no GPU here" in result.err
    result = cli("bench", copy, "--target", "export", "--target", "onnx", "--repeats", "1",
                 "--warmup", "1", "--json")
    assert result.code == 0, result.err
    assert "model.pt2 compiled for CUDA, and torch sees no GPU here; not timed" in result.err
    assert [row["name"] for row in json.loads(result.out)["results"]][2:] == [
        "onnx (model.onnx)"]


def test_calibration_past_the_training_split_says_how_many_images_it_took() -> None:
    from runtime.calibration import check_images
    from specc.errors import SpeccWarning

    spec = load_spec(DEMO, [*SMALL, "data.synthetic.train_length=6"]).spec
    with pytest.warns(SpeccWarning, match=r"--calibration 20: the train split of synthetic has "
                                          r"6 images; int8 is calibrated on those 6"):
        images = check_images(spec, 2, 20, int8=True)
    assert len(images.calibration) == 6


def test_missing_library_is_named_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(SpeccError, match=r"needs nncf.*pip install 'specc\[deploy\]'"):
        check_libraries([Request("openvino", "int8")])
    check_libraries([Request("openvino", "fp32")])  # OpenVINO alone needs no NNCF


# -- the artifacts --------------------------------------------------------------------------------


def test_every_artifact_is_listed_with_its_check(built: tuple[Any, Path]) -> None:
    comp, folder = built
    info = listing(folder)
    assert info["spec_sha256"] == comp.doc.sha256
    by_file = {a["file"]: a for a in info["artifacts"]}
    assert set(by_file) == {"model.pt2", "model.onnx", "model-openvino-fp32.xml",
                            "model-openvino-int8.xml"}
    for entry in info["artifacts"]:
        for name in entry["files"]:
            assert (folder / name).is_file()
        assert entry["shape_constraints"]["batch"] == "dynamic"
        assert entry["passes"] == ["inference_only", "fold_batchnorm"]  # no wide_atrous: not bf16
        assert entry["versions"]["torch"] == torch.__version__.split("+")[0] or \
            entry["versions"]["torch"] in torch.__version__
    for name in ("model.pt2", "model.onnx", "model-openvino-fp32.xml"):
        check = by_file[name]["check"]
        assert check["max_abs_diff"] <= 1e-4 * check["output_scale"]
        assert check["argmax_agreement"] >= 0.999
    int8 = by_file["model-openvino-int8.xml"]["check"]
    assert int8["argmax_agreement"] >= 0.9
    assert by_file["model-openvino-int8.xml"]["int8"]["for_cpus_without_vnni"] == (
        not cpu_info().has_vnni)
    assert by_file["model.onnx"]["int8"] is None
    # The mIoU on the labelled check images: equal for fp32, measured for int8.
    assert by_file["model.onnx"]["check"]["miou"] == by_file["model.onnx"]["check"][
        "reference_miou"]
    assert 0 <= int8["miou"] <= 1 and int8["reference_miou"] == by_file["model.onnx"]["check"][
        "reference_miou"]
    assert by_file["model-openvino-int8.xml"]["files"] == ["model-openvino-int8.xml",
                                                         "model-openvino-int8.bin"]


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx", "model-openvino-fp32.xml"])
def test_fp32_artifacts_equal_the_model_at_other_sizes(built: tuple[Any, Path],
                                                       name: str) -> None:
    """Batch, height and width are dynamic: a batch of 3 at 49×81 (not the build's 2×65×65)."""
    comp, folder = built
    x = torch.randn(3, 3, 49, 81, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = comp.module(x)["out"]
    got = load_artifact(folder / name)(x)["out"]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_openvino_compiles_a_repeated_shape_statically(built: tuple[Any, Path]) -> None:
    """A shape seen once runs on the dynamic model; seen again, on one reshaped to it (the
    most recent few kept); every run equals the compiled module."""
    from specc.targets import OpenVinoRunner

    comp, folder = built
    artifact = load_artifact(folder / "model-openvino-fp32.xml")
    runner = artifact._run
    assert isinstance(runner, OpenVinoRunner)
    shapes = [(1, 3, 33 + 8 * i, 41) for i in range(OpenVinoRunner.STATIC_SHAPES + 1)]
    for shape in [shapes[0], shapes[0], shapes[0], *shapes[1:], *shapes[1:]]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[2]))
        was_static = shape in runner.static
        got = artifact(x)["out"]
        with torch.no_grad():
            want = comp.module(x)["out"]
        assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
        if was_static:
            static = runner.static[shape]
            assert [d.get_length() for d in static.input(0).get_partial_shape()] == list(shape)
    assert runner.dynamic.input(0).get_partial_shape().is_dynamic
    # the first shape was compiled on its second call, then pushed out by the later ones
    assert list(runner.static) == shapes[1:]


def test_aux_head_is_not_in_the_inference_graph(built: tuple[Any, Path]) -> None:
    import onnx

    graph = onnx.load(str(built[1] / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["out"]
    assert not any(t.name.startswith("aux") for t in graph.initializer)
    assert not any("batch_norm" in n.op_type.lower() for n in graph.node)  # folded


def test_a_changed_artifact_is_refused(built: tuple[Any, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(SpeccError, match="sha256 differs"):
        load_artifact(copy / "model.onnx")
    # an IR is two files: weights changed in place (same size) or gone are refused too
    weights = copy / "model-openvino-fp32.bin"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0x80 for b in data[-4:])  # four bytes changed, the size kept
    weights.write_bytes(bytes(data))
    with pytest.raises(SpeccError, match=r"model-openvino-fp32\.bin: its sha256 differs"):
        load_artifact(copy / "model-openvino-fp32.xml")
    weights.unlink()
    with pytest.raises(SpeccError, match=r"model-openvino-fp32\.bin: missing; the artifact "
                                         r"model-openvino-fp32\.xml is made of "
                                         r"model-openvino-fp32\.xml, model-openvino-fp32\.bin"):
        load_artifact(copy / "model-openvino-fp32.xml")
    lone = tmp_path / "lone.onnx"
    shutil.copy(built[1] / "model.onnx", lone)
    with pytest.raises(SpeccError, match=r"no artifacts\.json beside it"):
        load_artifact(lone)


def test_rebuild_replaces_a_folder_holding_artifacts(built: tuple[Any, Path],
                                                     tmp_path: Path) -> None:
    from specc.errors import SpeccWarning

    out = tmp_path / "out"
    shutil.copytree(built[1], out / built[1].name)
    with pytest.warns(SpeccWarning, match=r"replaced by this build, which has no "
                                          r"artifacts\.json, model-openvino-fp32\.bin"):
        build_to(build(load_spec(DEMO, SMALL)), out)
    assert not (out / built[1].name / ARTIFACTS).exists()
    assert (out / built[1].name / "model.pt").is_file()


def test_build_command_refuses_bad_targets_before_building(cli: Any, tmp_path: Path) -> None:
    result = cli("build", DEMO, "--target", "tflite", "--out", tmp_path / "o")
    assert result.code == 2 and "unknown target 'tflite'" in result.err
    assert not (tmp_path / "o").exists()
    result = cli("build", "--all", "--check", "--target", "export")
    assert result.code == 2 and "takes no --target" in result.err
    result = cli("build", DEMO, "--target", "openvino:int8", "--int8-range", "wide", "--out",
                 tmp_path / "o")
    assert result.code == 2 and "--int8-range: expected one of auto, full, half" in result.err
    assert not (tmp_path / "o").exists()


def test_bench_times_the_model_its_passes_and_the_build_artifacts(
        built: tuple[Any, Path], cli: Any) -> None:
    result = cli("bench", built[1], "--target", "export", "--target", "onnx", "--repeats", "2",
                 "--warmup", "1", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    names = [row["name"] for row in report["results"]]
    assert names == ["reference (eager)", "inference passes (eager)", "export (model.pt2)",
                     "onnx (model.onnx)"]
    assert report["cpu"]["model"] and report["size"] == [65, 65]
    for row in report["results"]:
        assert row["argmax_agreement"] >= 0.999
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["gmacs_per_s"] > 0 and row["speedup_vs_torchvision"] is None
    assert report["results"][0]["speedup"] == 1.0


def test_bench_with_more_threads_than_cores_warns(specc_proc: Any) -> None:
    """The figures of an oversubscribed machine compare nothing: said before they are shown."""
    from specc.hardware import usable_cores

    cores = usable_cores()
    done = specc_proc("bench", DEMO, "--size", "33", "33", "--repeats", "1", "--warmup", "1",
                      "--threads", str(cores + 1), "--json")
    assert done.returncode == 0, done.stderr
    assert (f"warning: --threads {cores + 1} on {cores} usable cores: the threads take turns"
            in done.stderr)
    assert json.loads(done.stdout)["threads"] == cores + 1


def test_aoti_package_compiles_for_this_cpu_and_equals_the_model(tmp_path: Path) -> None:
    """AOTInductor (frozen weights, C++ compiled for this machine): the slowest target to
    build, so one small case."""
    comp = build(load_spec(DEMO, ["input.size=[33, 33]"]))
    randomized(comp.module)
    x = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(3))
    deploy = Deployment((Request("aoti", "fp32"),), (x,), "random")
    build_to(comp, tmp_path, deploy=deploy)
    folder = tmp_path / comp.spec.name
    entry = listing(folder)["artifacts"][0]
    assert entry["file"] == "model-aoti-fp32.pt2" and entry["check"]["argmax_agreement"] == 1.0
    # compiled for channels-last images: the graph's layout is a pass, the input's is recorded
    assert entry["passes"] == ["inference_only", "fold_batchnorm", "channels_last"]
    assert entry["input_memory_format"] == "channels_last"
    y = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = comp.module(y)["out"]
    artifact = load_artifact(folder / "model-aoti-fp32.pt2")
    for image in (y, y.contiguous(memory_format=torch.channels_last)):  # either layout given
        got = artifact(image)["out"]
        assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    # loaded by hand, as a deployer would, the package takes contiguous images too
    raw = torch._inductor.aoti_load_package(str(folder / "model-aoti-fp32.pt2"))
    with torch.no_grad():
        got = raw(y)
    got = got["out"] if isinstance(got, dict) else got
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_aoti_int8_is_quantized_checked_and_loads(tmp_path: Path) -> None:
    """torchao's pt2e quantization for X86 inductor, calibrated, then AOTInductor: the package
    differs from the fp32 model by int8 rounding (0.8 % of the logits' range here), and its
    manifest entry records exactly that difference and agreement."""
    from runtime.calibration import spec_images

    comp = build(load_spec(DEMO, ["input.size=[33, 33]", "data.synthetic.size=40",
                                  "data.synthetic.train_length=8"]))
    randomized(comp.module)
    x = torch.randn(2, 3, 33, 33, generator=torch.Generator().manual_seed(3))
    calibration = tuple(spec_images(comp.spec, 4, split="train"))
    deploy = Deployment((Request("aoti", "int8"),), (x,), "random", calibration)
    build_to(comp, tmp_path, deploy=deploy)
    folder = tmp_path / comp.spec.name
    entry = listing(folder)["artifacts"][0]
    assert entry["file"] == "model-aoti-int8.pt2" and entry["precision"] == "int8"
    assert entry["input_memory_format"] == "contiguous"  # the layout the quantizer targets
    top = 255 if cpu_info().has_vnni else 127
    assert entry["int8"] == {"quantizer": "torchao X86InductorQuantizer",
                             "activation_range": [0, top], "for_cpus_without_vnni": top == 127}
    with torch.no_grad():
        want = comp.module(x)["out"]
    got = load_artifact(folder / "model-aoti-int8.pt2")(x)["out"]
    diff = (got - want).abs().max().item()
    assert diff == pytest.approx(entry["check"]["max_abs_diff"], rel=1e-3)
    assert 0 < diff < 0.5 * want.abs().max().item()  # quantized (not equal), yet close
    agreement = (got.argmax(1) == want.argmax(1)).float().mean().item()
    assert agreement == pytest.approx(entry["check"]["argmax_agreement"], abs=1e-6)
    assert agreement >= 0.8  # random weights: many near-ties between classes (87 % here)


def test_bench_gives_torchvisions_twin_the_specs_weights() -> None:
    """``specc bench`` compares a zoo spec with torchvision's model holding the same weights."""
    from specc.bench import torchvision_twin

    comp = build(load_spec(REPO / "specs/zoo/torchvision_deeplabv3_resnet50.yaml",
                           ["input.size=[33, 33]"]))
    module = randomized(comp.module)
    twin = torchvision_twin(comp, module)
    x = torch.randn(1, 3, 33, 41, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours, theirs = module(x), twin(x)
    assert torch.equal(ours["out"], theirs["out"]) and torch.equal(ours["aux"], theirs["aux"])
    assert torchvision_twin(build(load_spec(DEMO, SMALL)), module) is None


def test_eval_and_predict_run_an_artifact_like_the_model(built: tuple[Any, Path], cli: Any,
                                                         tmp_path: Path) -> None:
    """``specc eval --checkpoint model.onnx`` scores as ``model.pt`` does; predict writes the same
    masks; another network's spec, or a GPU, is refused."""
    from PIL import Image

    _, folder = built
    sets = [a for s in SMALL for a in ("--set", s)]
    scores = {}
    for name in ("model.pt", "model.onnx"):
        result = cli("eval", DEMO, *sets, "--checkpoint", folder / name, "--json")
        assert result.code == 0, result.err
        scores[name] = json.loads(result.out)
    assert scores["model.onnx"]["miou"] == pytest.approx(scores["model.pt"]["miou"], abs=1e-6)
    assert scores["model.onnx"]["checkpoint"] == str(folder / "model.onnx")

    image = tmp_path / "photo.png"
    Image.fromarray((torch.rand(70, 90, 3) * 255).byte().numpy()).save(image)
    masks = {}
    for name in ("model.pt", "model-openvino-fp32.xml"):
        out = tmp_path / name
        result = cli("predict", folder / name, image, "--out", out)
        assert result.code == 0, result.err
        masks[name] = torch.from_numpy(__import__("numpy").array(
            Image.open(out / "photo_mask.png")))
    assert (masks["model.pt"] == masks["model-openvino-fp32.xml"]).float().mean() >= 0.999

    other = cli("eval", REPO / "specs/deeplabv3plus_mobilenetv2.yaml", "--checkpoint",
                folder / "model.onnx")
    assert other.code == 2 and "built from another network" in other.err
    gpu = cli("predict", folder / "model.onnx", image, "--out", tmp_path / "g", "--device", "cuda")
    assert gpu.code == 2 and ("runs on the CPU" in gpu.err or "CUDA" in gpu.err)


def test_artifacts_take_images_smaller_than_their_least_size(built: tuple[Any, Path], cli: Any,
                                                            tmp_path: Path) -> None:
    """An exported graph takes heights and widths from 17 up (MobileNetV2's strides); eval and
    predict pad a smaller image up to that, as they pad for the training grid, and crop the
    prediction back: a 1×1 and a 1×40 image are segmented by every artifact, as by model.pt."""
    from PIL import Image

    from runtime.evaluate import alignment

    comp, folder = built
    artifact = load_artifact(folder / "model.onnx")
    assert artifact.input_bounds["height"][0] == 17
    assert alignment(comp.doc.resolved, artifact.input_bounds).padded((1, 40)) == (17, 49)
    images = []
    for height, width in ((1, 1), (1, 40)):
        images.append(tmp_path / f"tiny_{height}x{width}.png")
        Image.fromarray((torch.rand(height, width, 3) * 255).byte().numpy()).save(images[-1])
    for name in ("model.pt", "model.onnx", "model.pt2", "model-openvino-fp32.xml"):
        result = cli("predict", folder / name, *images, "--out", tmp_path / name)
        assert result.code == 0, result.err
        for image in images:
            mask = Image.open(tmp_path / name / f"{image.stem}_mask.png")
            assert mask.size == Image.open(image).size


def test_an_input_outside_the_exported_shapes_is_refused_by_name(tmp_path: Path) -> None:
    """A fixed image-pooling kernel builds the network for one size: the graph is exported at it
    (batch dynamic), artifacts.json says so in words and numbers, and another size is refused
    with a message rather than the exported graph's own assertion."""
    from specc.targets import check_input, shape_constraints

    comp = build(load_spec(DEMO, [*SMALL, "aspp.image_pooling.kernel=fixed"]))
    randomized(comp.module)
    requests = parse_requests(["export"], cpu=AVX2)
    checks = tuple(torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(i))
                   for i in range(2))
    build_to(comp, tmp_path, deploy=Deployment(tuple(requests), checks, "random"))
    folder = tmp_path / comp.spec.name
    entry = next(a for a in listing(folder)["artifacts"] if a["file"] == "model.pt2")
    assert entry["input_bounds"] == {"batch": [1, None], "height": [65, 65], "width": [65, 65]}
    assert entry["shape_constraints"] == {"batch": "dynamic", "height": "fixed at 65",
                                          "width": "fixed at 65"}
    artifact = load_artifact(folder / "model.pt2")
    x = torch.randn(3, 3, 65, 65)
    with torch.no_grad():
        want = comp.module(x)["out"]
    assert torch.allclose(artifact(x)["out"], want, atol=1e-4 * want.abs().max().item())
    for height, width in ((49, 65), (65, 81)):
        with pytest.raises(SpeccError, match=r"model\.pt2: this artifact takes an input "
                                             r"(height|width) of 65 .*found (49|81)"):
            artifact(torch.randn(1, 3, height, width))
    # the words come from the numbers, for every kind of bound
    assert shape_constraints({"batch": [1, None], "height": [33, None], "width": [17, 512]}) == {
        "batch": "dynamic", "height": "dynamic, ≥ 33", "width": "dynamic, 17..512"}
    check_input(folder / "model.pt2", None, (1, 3, 5, 5))  # older listings: nothing to check
