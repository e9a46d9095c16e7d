"""specc.artifacts: every weights source opens the same way, one loader with one report, and the
one TorchScript format (built or trained) carries its spec, so `specc predict model.pt` normalizes
its input as the spec says."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from runtime import checkpoint as ckpt
from runtime.data import IMAGENET_MEAN, IMAGENET_STD
from runtime.predict import load_predictor, predict_files
from specc.api import build, load_spec
from specc.artifacts import (
    BACKBONE,
    EXTRA_SPEC,
    FULL,
    Weights,
    describe_mismatches,
    load_weights,
    mismatches,
    read_torchscript,
    read_weights,
    script_module,
    shown,
    spec_info,
    spec_info_of,
    write_torchscript,
)
from specc.errors import TrainingError, WeightsError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs/deeplabv3plus_mobilenetv2_demo.yaml"
# A spec whose input statistics are not ImageNet's (as deeplabv3plus_xception's), small and quick.
HALF = ["input.size=[65,65]", "input.mean=[0.5,0.5,0.5]", "input.std=[0.5,0.5,0.5]"]
IMAGE = np.random.default_rng(1).integers(0, 256, (41, 53, 3), dtype=np.uint8)


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def doc():
    return load_spec(DEMO, HALF)


@pytest.fixture(scope="module")
def trained(doc):
    """The demo model (eval mode) with its classifier's bias centred on IMAGE's mean logits, so
    that its prediction for IMAGE is not one class everywhere (as a fresh model's is)."""
    torch.manual_seed(0)
    module = build(doc).module.eval()
    x = (torch.from_numpy(IMAGE).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        module.classifier.bias -= module(x)["out"].mean(dim=(0, 2, 3))
    return module


def assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


# -- reading --------------------------------------------------------------------------------------


def test_every_source_opens_to_the_same_state_dict(doc, trained, tmp_path: Path) -> None:
    expected = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    info = spec_info(doc)
    run = tmp_path / "run"
    folder = ckpt.save_checkpoint(run, weights=expected, state={"iteration": 7}, spec_info=info)
    write_torchscript(trained, run / "model.pt", doc)
    save_file(expected, str(tmp_path / "foreign.safetensors"))
    save_file({k: v for k, v in expected.items() if k.startswith("backbone.")},
              str(tmp_path / "backbone.safetensors"),
              metadata={"specc.contents": BACKBONE, "specc.spec": doc.spec.name,
                        "specc.architecture_sha256": doc.architecture_sha256})
    torch.save(expected, tmp_path / "plain.pt")
    torch.save({"state_dict": expected, "epoch": 3}, tmp_path / "lightning.pth")
    torch.save({"model": expected}, tmp_path / "wrapped.pth")

    sources = {  # path → (file it resolves to, contents, spec info recorded)
        run: (folder / "model.safetensors", FULL, True),
        folder: (folder / "model.safetensors", FULL, True),
        folder / "model.safetensors": (folder / "model.safetensors", FULL, True),
        run / "model.pt": (run / "model.pt", FULL, True),
        tmp_path / "foreign.safetensors": (tmp_path / "foreign.safetensors", None, False),
        tmp_path / "plain.pt": (tmp_path / "plain.pt", None, False),
        tmp_path / "lightning.pth": (tmp_path / "lightning.pth", None, False),
        tmp_path / "wrapped.pth": (tmp_path / "wrapped.pth", None, False),
    }
    for path, (file, contents, recorded) in sources.items():
        weights = read_weights(path)
        assert isinstance(weights, Weights)
        assert (weights.file.resolve(), weights.contents) == (file.resolve(), contents), path
        assert_same(weights.state, expected)
        if recorded:
            assert weights.spec_info == info, path
        else:
            assert weights.spec_info is None, path

    backbone = read_weights(tmp_path / "backbone.safetensors")
    assert backbone.contents == BACKBONE
    assert backbone.spec_info == {"name": doc.spec.name,
                                  "architecture_sha256": doc.architecture_sha256}
    assert_same(backbone.state, {k: v for k, v in expected.items() if k.startswith("backbone.")})


def _write(name: str, payload: object):
    def make(folder: Path) -> Path:
        folder.mkdir()
        path = folder / name
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            torch.save(payload, path)
        return path
    return make


@pytest.mark.parametrize(("make", "message"), [
    (lambda folder: folder, "no such weights file or folder"),
    (lambda folder: folder.mkdir() or folder,
     "no weights found (expected checkpoint/model.safetensors or model.safetensors)"),
    (_write("w.safetensors", b"junk"), "not a readable safetensors file"),
    (_write("w.pt", b"junk"), "expected weights (a run or checkpoint folder, .safetensors, a "
     "state dict saved with torch.save as .pt/.pth, or a TorchScript model.pt), found a text "
     "file"),
    (_write("w.pt", [1, 2]), "expected a state dict (names → tensors), found list"),
    (_write("w.pth", {"state_dict": {"a": 1}}), "expected a state dict (names → tensors)"),
    (_write("w.pth", {"epoch": 3, "net": {"a": torch.zeros(1)}}), "found a dict with entries "
     "that are not tensors: 'epoch' (int), 'net' (dict)"),
], ids=["missing", "empty-folder", "bad-safetensors", "bad-pickle", "list", "not-tensors",
        "training-script-checkpoint"])
def test_unreadable_sources_raise_weights_error(make, message: str, tmp_path: Path) -> None:
    path = make(tmp_path / "src")
    with pytest.raises(WeightsError) as err:
        read_weights(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_checkpoint_training_state_points_to_its_folder(tmp_path: Path) -> None:
    """``state.pt`` of a checkpoint given where weights are expected: its folder is named."""
    folder = tmp_path / "checkpoint-0000004"
    folder.mkdir()
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    torch.save({"iteration": 4, "optimizer": {"state": {}}}, folder / "state.pt")
    with pytest.raises(WeightsError) as err:
        read_weights(folder / "state.pt")
    assert str(err.value).endswith(f"'iteration' (int), 'optimizer' (dict); this is the training "
                                   f"state of a checkpoint: pass its folder {folder} (or "
                                   f"{folder / 'model.safetensors'})")


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("name", "write"), [
    ("w.pt", lambda path, state: torch.save(state, path)),
    ("w.pth", lambda path, state: torch.save(state, path, _use_new_zipfile_serialization=False)),
    ("w.safetensors", lambda path, state: save_file(state, path)),
], ids=["torch-save", "torch-save-before-1.6", "safetensors"])
def test_weights_cut_short_say_so_whole(name: str, write, tmp_path: Path) -> None:
    """A file cut short (an interrupted copy, a full disk) is named as such in a message that
    ends with what to do, not in torch's unpickler words cut off mid-sentence."""
    path = tmp_path / name
    write(path, {"w": torch.arange(4096, dtype=torch.float32)})
    with pytest.raises(WeightsError) as err:
        read_weights(_cut_in_half(path))
    message = str(err.value)
    assert message.startswith(f"{path}: a ") and "cut short" in message, message
    assert message.endswith("copy it again from where it came from, or use another checkpoint")
    assert "miniz" not in message and "weights_only" not in message


def test_torchscript_cut_short_says_so(trained, doc, tmp_path: Path) -> None:
    path = _cut_in_half(write_torchscript(trained, tmp_path / "model.pt", doc))
    for read in (read_torchscript, read_weights):
        with pytest.raises(WeightsError, match=r"model\.pt: a PyTorch file that is cut short"):
            read(path)


def test_read_torchscript_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        read_torchscript(tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="expected a TorchScript model, found a text file"):
        read_torchscript(tmp_path / "model.pt")


# -- loading and its one report -------------------------------------------------------------------


def test_one_report_lists_missing_unexpected_and_reshaped(trained) -> None:
    state = dict(trained.state_dict())
    del state["classifier.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["classifier.weight"] = torch.zeros(2, 64, 1, 1)
    module = build(load_spec(DEMO, HALF)).module
    with pytest.raises(WeightsError) as err:
        load_weights(module, state, source="w.safetensors")
    text = str(err.value)
    assert text.splitlines() == [
        "w.safetensors: the weights do not fit this model:",
        "  1 missing: classifier.bias",
        "  1 unexpected: decoder.extra.weight",
        "  1 of the wrong shape: classifier.weight (2, 64, 1, 1), expected (8, 64, 1, 1)",
    ]
    # the same format for a partial load (missing tensors are allowed there)
    with pytest.raises(WeightsError) as err:
        load_weights(module, state, partial=True, source="bb.safetensors")
    assert str(err.value).splitlines() == [
        "bb.safetensors: the partial weights do not fit this model:",
        "  1 unexpected: decoder.extra.weight",
        "  1 of the wrong shape: classifier.weight (2, 64, 1, 1), expected (8, 64, 1, 1)",
    ]


def test_weights_that_differ_by_the_aux_head_alone_say_how_to_set_it() -> None:
    """Weights of a model made without an auxiliary head (or with one the spec lacks) name the
    spec's ``aux`` as the fix; the head is not part of inference, so nothing is lost."""
    with_aux = build(load_spec(DEMO, [*HALF, "aux={tap: backbone.layer5, channels: 16}"])).module
    plain = build(load_spec(DEMO, HALF)).module
    with pytest.raises(WeightsError) as err:
        load_weights(with_aux, plain.state_dict(), source="w.safetensors")
    assert str(err.value).splitlines()[-1] == (
        "  note: the weights have no auxiliary head (a model trained or saved without one); "
        "--set aux=null builds the spec without it")
    with pytest.raises(WeightsError) as err:
        load_weights(plain, with_aux.state_dict(), source="w.safetensors")
    assert "note: the weights hold an auxiliary head the spec has none of" in str(err.value)
    state = {k: v for k, v in plain.state_dict().items() if k != "classifier.bias"}
    with pytest.raises(WeightsError) as err:  # more than the head differs: no such note
        load_weights(with_aux, state, source="w.safetensors")
    assert "note:" not in str(err.value)


def test_long_lists_are_summarized_per_module(trained) -> None:
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith(("aspp.", "decoder."))}
    expected = {k: list(v.shape) for k, v in trained.state_dict().items()}
    m = mismatches(expected, {k: list(v.shape) for k, v in state.items()})
    report = describe_mismatches(m)
    aspp = sum(k.startswith("aspp.") for k in expected)
    decoder = sum(k.startswith("decoder.") for k in expected)
    assert report.startswith(f"  {aspp + decoder} missing: [aspp {aspp}, decoder {decoder}] ")
    assert report.endswith(f"… ({aspp + decoder - 20} more)")
    assert shown(["backbone.block1.0.w", "backbone.block2.0.w"] * 11).startswith(
        "[backbone.block1 11, backbone.block2 11] ")


def test_partial_load_fills_what_it_has(doc, trained, tmp_path: Path) -> None:
    backbone = {k: v for k, v in trained.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "bb.safetensors"
    save_file(backbone, str(path), metadata={"specc.contents": BACKBONE})
    weights = read_weights(path)
    module = build(doc).module
    left = load_weights(module, weights, partial=True)
    assert left == sorted(k for k in module.state_dict() if not k.startswith("backbone."))
    assert_same({k: v for k, v in module.state_dict().items() if k in backbone}, backbone)
    with pytest.raises(WeightsError, match="holds backbone weights only"):
        load_weights(module, weights)
    assert load_weights(module, read_weights(tmp_path / "bb.safetensors").state | {
        k: v for k, v in trained.state_dict().items() if not k.startswith("backbone.")}) == []


# -- model.pt: one writer, the spec inside ---------------------------------------------------------


def test_build_embeds_the_resolved_spec_and_its_hashes(cli, doc, tmp_path: Path) -> None:
    result = cli("build", DEMO, *sets(HALF), "--out", tmp_path)
    assert result.code == 0, result.err
    folder = tmp_path / doc.spec.name
    manifest = json.loads((folder / "manifest.json").read_text())
    module, info = read_torchscript(folder / "model.pt")
    assert not module.training
    assert info == {"name": doc.spec.name, "spec_sha256": doc.sha256,
                    "architecture_sha256": doc.architecture_sha256, "resolved": doc.resolved}
    assert info["resolved"]["input"]["mean"] == [0.5, 0.5, 0.5]
    # one name for each hash: manifest.json, model.pt and a checkpoint's spec.json agree
    assert (manifest["spec_sha256"], manifest["architecture_sha256"]) == (
        info["spec_sha256"], info["architecture_sha256"])
    assert spec_info(doc) == info


def _image(path: Path) -> Path:
    Image.fromarray(IMAGE).save(path)
    return path


def test_built_model_pt_predicts_like_the_spec(cli, doc, trained, tmp_path: Path) -> None:
    """`specc predict model.pt` and `specc predict SPEC --checkpoint model.pt` agree, with the
    spec's normalization (mean/std 0.5), not ImageNet's (which a built model.pt got before)."""
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    result = cli("build", DEMO, *sets(HALF), "--weights", weights, "--out", tmp_path / "gen")
    assert result.code == 0, result.err
    model = tmp_path / "gen" / doc.spec.name / "model.pt"
    image = _image(tmp_path / "img.png")

    alone = load_predictor(model)
    with_spec = load_predictor(DEMO, model, HALF)
    assert alone.mean == with_spec.mean == (0.5, 0.5, 0.5)
    assert alone.std == with_spec.std == (0.5, 0.5, 0.5)

    a = cli("predict", model, image, "--out", tmp_path / "a")
    b = cli("predict", DEMO, image, "--checkpoint", model, *sets(HALF), "--out", tmp_path / "b")
    assert a.code == 0 and b.code == 0, a.err + b.err
    masks = [np.asarray(Image.open(tmp_path / d / "img_mask.png")) for d in ("a", "b")]
    assert masks[0].shape == (41, 53) and len(np.unique(masks[0])) > 1
    assert np.array_equal(*masks)

    # ImageNet's statistics, what predicting with a built model.pt used before, segment otherwise
    imagenet = replace(alone, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))
    predict_files(imagenet, [image], tmp_path / "c", device=torch.device("cpu"))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "c" / "img_mask.png")), masks[0])


def test_a_model_pt_without_spec_falls_back_to_imagenet(trained, tmp_path: Path) -> None:
    """What `specc build` wrote before its model.pt carried the spec: ImageNet's statistics."""
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(script_module(trained), str(path))
    assert read_torchscript(path)[1] is None
    assert read_weights(path).spec_info is None
    predictor = load_predictor(path)
    assert (predictor.mean, predictor.std) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


# -- files written before the key names were unified -----------------------------------------------


def _old_info(doc) -> dict:
    return {"name": doc.spec.name, "sha256": doc.sha256, "arch_sha256": doc.architecture_sha256,
            "resolved": doc.resolved}


def test_old_key_names_still_read(doc, trained, tmp_path: Path) -> None:
    old = _old_info(doc)
    assert spec_info_of(old) == spec_info(doc)
    assert spec_info_of(spec_info(doc)) == spec_info(doc)
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(script_module(trained), str(path), _extra_files={EXTRA_SPEC: json.dumps(old)})
    assert read_torchscript(path)[1] == spec_info(doc)
    assert load_predictor(path).mean == (0.5, 0.5, 0.5)


def test_old_checkpoint_still_resumes(doc, trained, tmp_path: Path) -> None:
    """A checkpoint whose spec.json says ``arch_sha256`` passes the resume check."""
    state = {k: v.detach() for k, v in trained.state_dict().items()}
    folder = ckpt.save_checkpoint(tmp_path, weights=state, state={"iteration": 5},
                                  spec_info=_old_info(doc))
    assert "arch_sha256" in json.loads((folder / "spec.json").read_text())
    _, _, info = ckpt.load_checkpoint(tmp_path)
    assert info == spec_info(doc)
    ckpt.check_same_architecture(_old_info(doc), doc.resolved, folder)  # no error
    ckpt.check_same_architecture(info, doc.resolved, folder)
    assert read_weights(tmp_path).spec_info == spec_info(doc)
    other = load_spec(DEMO, [*HALF, "aspp.channels=32"])
    with pytest.raises(TrainingError, match=r"different architecture(.|\n)*aspp\.channels"):
        ckpt.check_same_architecture(_old_info(doc), other.resolved, folder)
