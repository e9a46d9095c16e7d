"""Fine-tuning to another label set: torchvision's 21-class DeepLabV3 into a 2-class spec trains
and evaluates, the backbone keeps the file's weights, the classifier layers start fresh, anything
else that does not fit is refused; learning-rate multipliers and a frozen backbone."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import runkit
import torch
from torch import nn

from runtime import checkpoint as ckpt
from runtime import finetune
from runtime import train as train_mod
from specc.api import compile_spec, load_spec
from specc.artifacts import read_weights
from specc.errors import TrainingError, WeightsError

ZOO = runkit.REPO / "specs" / "zoo" / "torchvision_deeplabv3_resnet50.yaml"
CLASSIFIERS = ["aux.classifier.bias", "aux.classifier.weight", "classifier.bias",
               "classifier.weight"]
# ResNet-50 at a 65-pixel crop, two images per step, two steps: seconds on a CPU
SMALL = ["num_classes=2", "data.synthetic.size=64", "data.synthetic.train_length=4",
         "data.synthetic.val_length=2", "train.workers=0", "train.log_every=1"]


@pytest.fixture(scope="session")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's deeplabv3_resnet50 for 21 classes, random weights, as a state-dict file."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = tmp_path_factory.mktemp("torchvision") / "deeplabv3_resnet50_21.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def finetuned(torchvision_file: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, str]:
    """A 2-iteration fine-tuning run of the zoo spec for 2 classes from the 21-class file, with
    the backbone frozen for both iterations and the heads at 10× the learning rate."""
    from specc.cli import main

    run = tmp_path_factory.mktemp("finetune") / "run"

    args = ["train", str(ZOO), "--init", str(torchvision_file), "--out", str(run),
            "--iters", "2", "--batch-size", "2", "--crop", "65", "--save-every", "2",
            *runkit.sets([*SMALL, "train.freeze_backbone_iters=2",
                          "train.lr_mult={backbone: 1, heads: 10}"])]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None), err.getvalue()
    return run, err.getvalue()


def test_torchvision_21_classes_finetunes_to_2(torchvision_file: Path,
                                                finetuned: tuple[Path, str]) -> None:
    run, said = finetuned
    source = torch.load(torchvision_file, weights_only=True)
    after, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 2
    # the backbone is the file's, tensor for tensor (frozen for both iterations)
    stem = next(v for k, v in after.items() if k.startswith("backbone.stem") and v.ndim == 4)
    assert torch.equal(stem, source["backbone.conv1.weight"])
    comp = compile_spec(load_spec(ZOO, SMALL))
    renamed, kind, _ = finetune.in_our_names(read_weights(torchvision_file), comp, set(after))
    assert kind == "torchvision DeepLabV3"
    backbone = [k for k in renamed if k.startswith("backbone.") and "running_" not in k
                and "num_batches" not in k]
    assert len(backbone) > 150
    assert all(torch.equal(after[k], renamed[k]) for k in backbone)
    # the classifier layers are new: two classes, not the file's 21
    assert list(after["classifier.weight"].shape) == [2, 256, 1, 1]
    assert list(after["aux.classifier.weight"].shape) == [2, 256, 1, 1]
    # the rest of the heads started from the file and trained
    aspp = [k for k in renamed if k.startswith("aspp.") and k.endswith("weight")]
    assert aspp and any(not torch.equal(after[k], renamed[k]) for k in aspp)
    # the run says which tensors start fresh, and records it with the groups
    assert "freshly initialized for 2 classes instead of 21: " + ", ".join(CLASSIFIERS) in said
    record = json.loads((run / train_mod.RUN_RECORD).read_text())
    assert record["init"]["fresh_classifier"] == CLASSIFIERS
    assert record["init"]["source_classes"] == 21
    assert {g["lr_mult"] for g in record["param_groups"]} == {1.0, 10.0}
    assert record["freeze_backbone_iters"] == 2


def test_finetuned_model_evaluates(finetuned: tuple[Path, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = finetuned
    code, out, err = runkit.cli(["eval", ZOO, "--checkpoint", run, "--json",
                                 *runkit.sets(SMALL)], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert len(report["per_class_iou"]) == 2 and 0.0 <= report["pixel_accuracy"] <= 1.0


def test_other_misfits_are_refused(torchvision_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Only the classifier layers may differ: another ASPP width is an error naming tensors."""
    code, _, err = runkit.cli(["train", ZOO, "--init", torchvision_file, "--out", tmp_path / "r",
                               "--iters", "1", *runkit.sets([*SMALL, "aspp.channels=128"])],
                              capsys)
    assert code == 2 and "Traceback" not in err
    assert "do not fit this model" in err and "aspp." in err
    assert "only the classifier layers may differ" in err
    assert not (tmp_path / "r").exists()


def _onnx_model(path: Path) -> None:
    """A real (one-node) ONNX model, written as PyTorch's exporter writes its header."""
    import onnx
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(path))


def _exported_program(path: Path) -> None:
    torch.export.save(torch.export.export(nn.Conv2d(1, 1, 1), (torch.zeros(1, 1, 2, 2),)), path)


@pytest.mark.parametrize(("name", "write", "found"), [
    ("model.onnx", _onnx_model, "found an ONNX model; pass the weights it was exported from"),
    ("onnx_renamed.pt", _onnx_model, "found an ONNX model; pass the weights it was exported from"),
    ("model.pt2", _exported_program,
     "found a torch.export or AOTInductor archive (.pt2); pass the weights it was exported from"),
    ("whole.pt", lambda path: torch.save(nn.Conv2d(1, 1, 1), path),
     "found a PyTorch file that holds Python objects besides tensors, such as "
     "torch.nn.modules.conv.Conv2d (a whole model saved with torch.save(model)?); save "
     "model.state_dict() instead"),
    ("spec.yaml", lambda path: path.write_text(runkit.SPEC.read_text()), "found a text file"),
], ids=["onnx", "onnx-renamed", "pt2", "whole-model", "spec"])
def test_init_from_a_file_that_is_not_weights_says_what_it_is(
        name: str, write, found: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Not PyTorch's weights_only notice: what --init takes, and what the file is."""
    source = tmp_path / name
    write(source)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--init", source, "--out", tmp_path / "r",
                               "--iters", "1", *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err and "weights_only" not in err
    assert err.strip() == (
        f"error: --init {source}: expected weights (a run or checkpoint folder, .safetensors, a "
        "state dict saved with torch.save as .pt/.pth, or a TorchScript model.pt), " + found)
    assert not (tmp_path / "r").exists()


def test_source_tensors_without_a_place_are_refused(torchvision_file: Path) -> None:
    comp = compile_spec(load_spec(ZOO, ["num_classes=2", "aux=null"]))
    with pytest.raises(WeightsError, match=r"aux_classifier\.0\.weight"):
        finetune.fit_weights(comp.module, comp, read_weights(torchvision_file))


@pytest.mark.parametrize("prefix", ["module.", "model.", "module._orig_mod."])
def test_weights_saved_from_a_wrapper_load_without_its_prefix(
        prefix: str, torchvision_file: Path, tmp_path: Path) -> None:
    """A state dict saved from DistributedDataParallel (``module.``), torch.compile
    (``_orig_mod.``) or a Lightning module (``model.``) gives the tensors of the model inside."""
    plain = torch.load(torchvision_file, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({prefix + k: v for k, v in plain.items()}, wrapped)
    state = read_weights(wrapped).state
    assert state.keys() == plain.keys()
    assert all(torch.equal(state[k], plain[k]) for k in plain)
    comp = compile_spec(load_spec(ZOO, SMALL))
    started = finetune.fit_weights(comp.module, comp, read_weights(wrapped))
    assert started.kind.startswith("torchvision") and started.loaded > 300


def test_weights_without_batch_counters_load(torchvision_file: Path, tmp_path: Path) -> None:
    """Batch norms' num_batches_tracked left out (some exporters do): --init and load_weights
    take the file, every other tensor loaded as it is."""
    from specc.artifacts import load_weights

    plain = torch.load(torchvision_file, weights_only=True)
    trimmed = tmp_path / "no_counters.pth"
    torch.save({k: v for k, v in plain.items() if not k.endswith("num_batches_tracked")},
               trimmed)
    comp = compile_spec(load_spec(ZOO, SMALL))
    started = finetune.fit_weights(comp.module, comp, read_weights(trimmed))
    assert started.loaded > 300
    ours = {k: v for k, v in comp.module.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    other = compile_spec(load_spec(ZOO, SMALL)).module
    assert load_weights(other, ours) == []
    assert all(torch.equal(other.state_dict()[k], v) for k, v in ours.items())


def test_a_model_saved_without_its_aux_head_starts_the_head_fresh(
        torchvision_file: Path, tmp_path: Path) -> None:
    """torchvision's aux_loss=False saves no aux_classifier: --init loads every other tensor
    and the auxiliary head, a training-only head, starts from its initialization, said so."""
    plain = torch.load(torchvision_file, weights_only=True)
    path = tmp_path / "no_aux.pth"
    torch.save({k: v for k, v in plain.items() if not k.startswith("aux_classifier.")}, path)
    comp = compile_spec(load_spec(ZOO, SMALL))
    started = finetune.fit_weights(comp.module, comp, read_weights(path))
    aux = sorted(k for k in comp.module.state_dict() if k.startswith("aux."))
    assert started.fresh_heads == aux and len(aux) >= 8
    assert any(line.startswith(f"  not in the file, starting fresh: {len(aux)} head tensors")
               for line in started.lines(2))
    # specc's own weights with the aux head, onto the spec without one: named as the fix
    ours = tmp_path / "ours.pth"
    torch.save(comp.module.state_dict(), ours)
    without = compile_spec(load_spec(ZOO, [*SMALL, "aux=null"]))
    with pytest.raises(WeightsError, match="note: the weights hold an auxiliary head the spec "
                                           "has none of"):
        finetune.fit_weights(without.module, without, read_weights(ours))


def test_a_prefix_on_some_names_only_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert set(read_weights(path).state) == {"module.a", "b"}


def test_names_of_no_known_model_are_refused_in_plain_words(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.conv.weight": torch.zeros(1)}, path)
    comp = compile_spec(load_spec(ZOO, SMALL))
    with pytest.raises(WeightsError, match=rf"^{path}: not this model's tensor names, and not a "
                                           r"torchvision ResNet"):
        finetune.fit_weights(comp.module, comp, read_weights(path))


def test_class_tensors_are_the_classifier_convs() -> None:
    assert finetune.class_tensors(compile_spec(load_spec(ZOO, SMALL))) == set(CLASSIFIERS)


def test_specc_run_into_another_class_count(tmp_path_factory: pytest.TempPathFactory,
                                            tmp_path: Path) -> None:
    """A specc run of 5 classes starts a 3-class run: only the classifier is new."""
    base = runkit.base_run(tmp_path_factory)
    before, _, _ = ckpt.load_checkpoint(base)
    run = tmp_path / "run"
    runkit.train_tiny(run, ["num_classes=3", "train.iters=1", "train.save_every=1",
                            "train.freeze_backbone_iters=1"], init=base)
    after, _, _ = ckpt.load_checkpoint(run)
    record = json.loads((run / train_mod.RUN_RECORD).read_text())["init"]
    assert record["kind"] == "specc" and record["fresh_classifier"] == ["classifier.bias",
                                                                        "classifier.weight"]
    assert after["classifier.weight"].shape[0] == 3 and before["classifier.weight"].shape[0] == 5
    weights = [k for k in before if k.startswith("backbone.") and k.endswith("conv.weight")]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)


# ---------------------------------------------------------------------------------------------
# Learning-rate multipliers


class Net(nn.Module):
    """A backbone and two heads, named like a generated model's modules."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.aspp = nn.Conv2d(4, 4, 1)
        self.classifier = nn.Conv2d(4, 2, 1)


@pytest.mark.parametrize(("name", "mults", "expected"), [
    ("backbone.0.weight", {}, 1.0),
    ("backbone.0.weight", {"backbone": 0.5, "heads": 10}, 0.5),
    ("aspp.weight", {"backbone": 0.5, "heads": 10}, 10.0),
    ("classifier.bias", {"heads": 10, "classifier": 20}, 20.0),
    ("backbone.block4.0.conv.weight", {"backbone": 0.1, "backbone.block4": 2}, 2.0),
    ("backbone.block3.0.conv.weight", {"backbone": 0.1, "backbone.block4": 2}, 0.1),
])
def test_lr_multiplier_most_specific_key_wins(name: str, mults: dict[str, float],
                                              expected: float) -> None:
    assert finetune.lr_multiplier(name, mults) == expected


def test_lr_groups_split_by_decay_and_multiplier() -> None:
    net = Net()
    plain = finetune.lr_groups(net, 1e-4, {})
    assert [len(g["params"]) for g in plain.groups] == [3, 5] and plain.multipliers == [1, 1]
    tuned = finetune.lr_groups(net, 1e-4, {"heads": 10})
    assert tuned.multipliers == [1.0, 10.0, 1.0, 10.0]
    assert [g["weight_decay"] for g in tuned.groups] == [1e-4, 1e-4, 0.0, 0.0]
    assert tuned.record[1]["modules"] == ["aspp", "classifier"]
    assert len(tuned.backbone) == 4  # conv weight and bias, BN scale and shift
    with pytest.raises(TrainingError, match=r"train.lr_mult.decoder: expected a module"):
        finetune.lr_groups(net, 1e-4, {"decoder": 2})


def test_step_scales_lr_and_holds_a_frozen_backbone() -> None:
    """Momentum 0, no decay: each parameter moves by lr × its multiplier × its gradient; during
    freeze_backbone_iters the backbone does not move."""
    from runtime import distributed
    from specc.spec_train import TrainSpec

    torch.manual_seed(0)
    net = Net()

    class Seg(nn.Module):
        def __init__(self, inner: Net) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.inner.classifier(self.inner.aspp(self.inner.backbone(x)))
            return {"out": nn.functional.interpolate(y, size=x.shape[-2:])}

    model = Seg(net).eval()
    groups = finetune.lr_groups(net, 0.0, {"heads": 10, "backbone": 0.5})
    optimizer = torch.optim.SGD(groups.groups, lr=1.0, momentum=0.0)
    tr = TrainSpec(freeze_backbone_iters=1, accumulate=1)
    images, labels = torch.randn(2, 3, 9, 9), torch.randint(0, 2, (2, 9, 9))
    ctx = distributed.Context(rank=0, world_size=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    tuning = train_mod.Tuning(groups)

    def step(it: int) -> dict[str, torch.Tensor]:
        before = {k: v.detach().clone() for k, v in net.named_parameters()}
        train_mod._step(model, optimizer, scaler, [(images, labels)], 0.1, tr, ctx, None, False,
                        tuning, Path("unused"), it)
        return before

    before = step(0)  # frozen backbone
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters()
               if k.startswith("backbone"))
    assert torch.allclose(net.aspp.weight, before["aspp.weight"] - 1.0 * net.aspp.weight.grad)
    before = step(1)  # now the backbone moves, at half the lr
    conv = net.backbone[0].weight
    assert torch.allclose(conv, before["backbone.0.weight"] - 0.05 * conv.grad)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 1.0, 0.05, 1.0])


def test_imagenet_resnet_starts_the_backbone_only(tmp_path: Path) -> None:
    """An ImageNet ResNet-50 state dict (torchvision's names) loads into the backbone, its fc
    classifier is left out and every head starts fresh."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    source = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)
    comp = compile_spec(load_spec(ZOO, SMALL))
    model = comp.module
    started = finetune.fit_weights(model, comp, read_weights(path))
    assert started.kind == "torchvision ResNet (ImageNet)" and not started.fresh_classes
    assert started.fresh_heads and all(not k.startswith("backbone.") for k in started.fresh_heads)
    stem = next(v for k, v in model.state_dict().items()
                if k.startswith("backbone.stem") and v.ndim == 4)
    assert torch.equal(stem, source["conv1.weight"])
