"""Artifacts for one input shape (``specc build --static``): every target exported for
1×3×H×W, the OpenVINO IRs rewritten for that shape and the build machine's CPU when they are
written (so OpenVINO's own runtime runs what specc's runner would), and eval and predict
feeding them that shape.

One build of the demo spec at 65×65, with plain (not separable) 3×3 convs in its ASPP and
decoder so that there are convs for Winograd's F(m, 3) to take; the CPU is taken to be an AVX2
one without VNNI, where the fp32 and int8 rewrites of OpenVINO IRs and the ONNX one apply, and
the tile rule takes every eligible conv (the real rule wants far larger convs than a test can
afford).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_targets import randomized

from runtime.evaluate import alignment
from specc.api import build, load_spec
from specc.build import Deployment, build_to
from specc.errors import SpeccWarning
from specc.hardware import CpuInfo
from specc.targets import ARTIFACTS, load_artifact, openvino_core, parse_requests

ov = pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
PLAIN = ["input.size=[65, 65]", "data.synthetic.val_length=8", "data.synthetic.train_length=8",
         "data.synthetic.size=72", "aspp.style.conv=plain", "decoder.style.conv=plain"]
AVX2 = CpuInfo("test AVX2 CPU", frozenset({"avx2", "fma"}))
AVX512 = CpuInfo("test AVX-512 CPU", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
TARGETS = ["torchscript", "export", "onnx", "openvino:fp32", "openvino:int8"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The demo with plain 3×3 convs, built ``--static`` with four artifacts on an AVX2 CPU."""
    from runtime.calibration import spec_images

    comp = build(load_spec(DEMO, PLAIN))
    randomized(comp.module)
    checks = tuple(torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(i))
                   for i in range(2))
    deploy = Deployment(tuple(parse_requests(TARGETS, cpu=AVX2)), checks, "random",
                        tuple(spec_images(comp.spec, 4, split="train")), static=True)
    out = tmp_path_factory.mktemp("static")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("specc.targets.cpu_info", lambda: AVX2)
        mp.setattr("specc.openvino_static.choose_tile", lambda *args, int8=False: 4)
        mp.setattr("specc.onnx_static.choose_tile", lambda *args, int8=False: 4)
        build_to(comp, out, deploy=deploy)
    return comp, out / comp.spec.name


def listing(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ARTIFACTS).read_text())


def entry(folder: Path, name: str) -> dict[str, Any]:
    return next(a for a in listing(folder)["artifacts"] if a["file"] == name)


def winograd_nodes(xml: Path) -> int:
    model = openvino_core().read_model(str(xml))
    return sum("/winograd_4" in op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_type_name() == "Transpose")


def test_every_artifact_takes_one_shape_and_says_so(built: tuple[Any, Path]) -> None:
    """artifacts.json gives batch, height and width fixed for every deployment artifact; the
    ONNX and OpenVINO files themselves declare 1×3×65×65 (a runtime needs no reshape)."""
    import onnx

    _, folder = built
    for name in ("model.pt2", "model.onnx", "model-openvino-fp32.xml", "model-openvino-int8.xml"):
        found = entry(folder, name)
        assert found["input_bounds"] == {"batch": [1, 1], "height": [65, 65], "width": [65, 65]}
        assert found["shape_constraints"] == {"batch": "fixed at 1", "height": "fixed at 65",
                                              "width": "fixed at 65"}
    dims = onnx.load(str(folder / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 65, 65]
    for precision in ("fp32", "int8"):
        model = openvino_core().read_model(str(folder / f"model-openvino-{precision}.xml"))
        assert model.input(0).get_partial_shape().to_shape() == [1, 3, 65, 65]
    # model.pt is the trainable TorchScript module, not made from the export: any shape
    assert entry(folder, "model.pt")["input_bounds"] == {
        name: [1, None] for name in ("batch", "height", "width")}


def test_onnx_and_openvino_are_rewritten_when_built_and_record_for_which_cpu(
        built: tuple[Any, Path]) -> None:
    """The 3×3 convs of the ASPP and decoder are computed by F(4, 3) in the saved IRs, fp32 and
    int8 (no VNNI), and in the ONNX file; the listing records how many and the CPU features
    that chose them."""
    import onnx

    _, folder = built
    for precision in ("fp32", "int8"):
        name = f"model-openvino-{precision}.xml"
        found = entry(folder, name)
        rewritten = found["static_rewrites"]["winograd_convs"]
        assert rewritten >= 4  # three ASPP branches and the decoder's two convs, at least
        assert winograd_nodes(folder / name) == rewritten
        assert found["rewritten_for"] == {"cpu": "test AVX2 CPU", "avx2": True, "avx512": False,
                                          "vnni": False, "amx": False}
    found = entry(folder, "model.onnx")
    assert found["static_rewrites"]["winograd_convs"] == rewritten
    assert found["rewritten_for"] == {"cpu": "test AVX2 CPU", "avx2": True, "avx512": False}
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert sum(n.name.endswith("/winograd_4/out") for n in graph.node) == rewritten
    assert "static_rewrites" not in entry(folder, "model.pt2")


def test_static_artifacts_compute_the_model(built: tuple[Any, Path]) -> None:
    """Every artifact equals the model on new images (int8: its argmax), a batch of three runs
    image by image, and the OpenVINO IR compiled from its file by OpenVINO alone gives what
    specc's runner gives, compiled once for its one shape."""
    comp, folder = built
    x = torch.randn(3, 3, 65, 65, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = comp.module(x)["out"]
    scale = want.abs().max().item()
    for name in ("model.pt2", "model.onnx", "model-openvino-fp32.xml"):
        got = load_artifact(folder / name)(x)["out"]
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-4 * scale, name
    int8 = load_artifact(folder / "model-openvino-int8.xml")
    assert (int8(x)["out"].argmax(1) == want.argmax(1)).float().mean() >= 0.9

    artifact = load_artifact(folder / "model-openvino-fp32.xml")
    plain = openvino_core().compile_model(str(folder / "model-openvino-fp32.xml"), "CPU")
    for image in x:
        alone = torch.from_numpy(plain(image[None].numpy())[0])
        assert torch.allclose(artifact(image[None])["out"], alone, atol=1e-6 * scale)
    runner = artifact._run
    assert runner.one_shape and runner.static == {}


def test_loading_on_a_cpu_with_other_features_warns(built: tuple[Any, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An IR rewritten for an AVX2 CPU, opened on one with AVX-512, says that another build
    may be faster there; on a CPU like the one it was built for it says nothing."""
    _, folder = built
    monkeypatch.setattr("specc.targets.cpu_info", lambda: AVX512)
    with pytest.warns(SpeccWarning, match=r"rewritten for the CPU it was built on \(test AVX2 "
                                          r"CPU: avx2 yes, avx512 no, vnni no, amx no\); this "
                                          r"one differs \(avx2 yes, avx512 yes, vnni yes"):
        load_artifact(folder / "model-openvino-fp32.xml")
    with pytest.warns(SpeccWarning, match=r"\(test AVX2 CPU: avx2 yes, avx512 no\); this one "
                                          r"differs \(avx2 yes, avx512 yes\)"):
        load_artifact(folder / "model.onnx")
    monkeypatch.setattr("specc.targets.cpu_info", lambda: AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeccWarning)
        load_artifact(folder / "model-openvino-fp32.xml")
        load_artifact(folder / "model.onnx")


def test_eval_and_predict_pad_images_up_to_the_one_shape(built: tuple[Any, Path], cli: Any,
                                                         tmp_path: Path) -> None:
    """Smaller images are padded up to exactly 65×65 (whatever the training grid) and their
    masks keep their own size; eval over the synthetic val split (72-pixel images, so larger)
    runs window by window with --tile; a larger image without it is refused by name."""
    from PIL import Image

    comp, folder = built
    bounds = load_artifact(folder / "model.onnx").input_bounds
    assert alignment(comp.doc.resolved, bounds).padded((40, 65)) == (65, 65)
    assert alignment(comp.doc.resolved, bounds).padded((70, 30)) == (70, 65)
    small = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(0).random((50, 40, 3)) * 255).astype("uint8")
                    ).save(small)
    result = cli("predict", folder / "model-openvino-fp32.xml", small, "--out", tmp_path / "p")
    assert result.code == 0, result.err
    assert Image.open(tmp_path / "p" / "small_mask.png").size == (40, 50)

    large = tmp_path / "large.png"
    Image.fromarray((np.random.default_rng(1).random((90, 80, 3)) * 255).astype("uint8")
                    ).save(large)
    refused = cli("predict", folder / "model.onnx", large, "--out", tmp_path / "q")
    assert refused.code == 2
    assert "takes an input height of 65 " in refused.err and "--tile" in refused.err
    tiled = cli("predict", folder / "model.onnx", large, "--out", tmp_path / "q", "--tile",
                "auto")
    assert tiled.code == 0, tiled.err

    sets = [a for s in PLAIN for a in ("--set", s)]
    scored = cli("eval", DEMO, *sets, "--checkpoint", folder / "model.onnx", "--tile", "auto",
                 "--json")
    assert scored.code == 0, scored.err
    assert json.loads(scored.out)["images"] == 8


def test_static_needs_a_target(cli: Any, tmp_path: Path) -> None:
    result = cli("build", DEMO, "--static", "--out", tmp_path)
    assert result.code == 2
    assert "--static makes deployment artifacts for one input shape" in result.err
    assert not any(tmp_path.iterdir())


def test_scales_above_one_are_refused_for_a_one_size_artifact(built: tuple[Any, Path],
                                                               cli: Any, tmp_path: Path) -> None:
    """Every window is padded up to 65×65; enlarged by 1.5 none fits: refused up front by the
    option that causes it, not at the first image with a hint to add --tile."""
    from PIL import Image

    _, folder = built
    image = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(2).random((50, 40, 3)) * 255).astype("uint8")
                    ).save(image)
    expected = ("error: --scales 1.5: this artifact takes images of at most 65×65 pixels (it was "
                "exported for that size, see artifacts.json), and a scale above 1 enlarges every "
                "image or window past it; give scales of at most 1, or evaluate the spec with "
                "its weights")
    sets = [a for s in PLAIN for a in ("--set", s)]
    scored = cli("eval", DEMO, *sets, "--checkpoint", folder / "model.onnx", "--tile", "auto",
                 "--scales", "1.0,1.5")
    assert scored.code == 2 and scored.err.strip() == expected
    result = cli("predict", folder / "model.onnx", image, "--scales", "1.5", "--out", tmp_path / "o")
    assert result.code == 2 and result.err.strip() == expected
    assert not (tmp_path / "o").exists()
    smaller = cli("predict", folder / "model.onnx", image, "--scales", "0.5,1", "--out",
                  tmp_path / "o")
    assert smaller.code == 0, smaller.err
