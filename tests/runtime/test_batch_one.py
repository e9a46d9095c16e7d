"""One image per process: the image-pooling norm choice (batch | group | none), the up-front check
that refuses a BatchNorm that cannot train, and operating-system errors while training."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import runkit
import torch
import torch.nn.functional as F

from runtime import checkpoint as ckpt
from runtime import train as train_mod
from specc.api import build, load_spec
from specc.errors import WeightsError
from specc.lower_heads import group_count

DEMO = runkit.REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
SMALL = ["input.size=[33,33]"]


# ---------------------------------------------------------------------------------------------
# The generated model


@pytest.mark.parametrize("norm", ["group", "none"])
def test_image_pooling_norm_trains_at_batch_one_and_matches_a_hand_check(norm: str) -> None:
    comp = build(load_spec(DEMO, [*SMALL, f"aspp.image_pooling.norm={norm}"]))
    assert f'norm="{norm}"' in comp.source and "class ConvNormAct" in comp.source
    model = comp.module.train()
    out = model(torch.randn(1, 3, 33, 33))["out"]  # BatchNorm here would raise
    assert out.shape == (1, comp.spec.num_classes, 33, 33)
    out.sum().backward()

    branch = model.aspp.convs[-1]  # the image pooling: pool → 1×1 conv → norm → ReLU → upsample
    layer = branch.conv
    x = torch.randn(2, layer.conv.in_channels, 5, 7)
    pooled = x.mean(dim=(2, 3), keepdim=True)  # the demo pools globally
    y = F.conv2d(pooled, layer.conv.weight, layer.conv.bias)
    if norm == "group":
        g = layer.norm.num_groups
        assert g == group_count(y.shape[1]) and y.shape[1] // g >= 8
        grouped = y.reshape(2, g, -1)
        mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
        y = ((grouped - mean) / torch.sqrt(var + layer.norm.eps)).reshape_as(y)
        y = y * layer.norm.weight.view(1, -1, 1, 1) + layer.norm.bias.view(1, -1, 1, 1)
        assert not any(k.endswith("running_mean") for k in layer.state_dict())
    else:
        assert layer.conv.bias is not None and isinstance(layer.norm, torch.nn.Identity)
    expected = torch.relu(y).expand(-1, -1, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(branch(x), expected)
        scripted = torch.jit.script(model.eval())
        torch.testing.assert_close(scripted(torch.ones(1, 3, 33, 33))["out"],
                                   model(torch.ones(1, 3, 33, 33))["out"])


def test_group_count_keeps_groups_wide_enough() -> None:
    assert [group_count(c) for c in (256, 64, 32, 48, 7, 1)] == [32, 8, 4, 6, 1, 1]


def test_batch_norm_default_leaves_the_resolved_spec_alone() -> None:
    plain = load_spec(DEMO, SMALL)
    explicit = load_spec(DEMO, [*SMALL, "aspp.image_pooling.norm=batch"])
    assert "norm" not in plain.resolved["aspp"]["image_pooling"]
    assert plain.sha256 == explicit.sha256  # hashes of existing specs and runs are unchanged
    assert "pool_norm=" not in build(plain).source  # the default is not spelled out
    group = load_spec(DEMO, [*SMALL, "aspp.image_pooling.norm=group"])
    assert 'pool_norm="group"' in build(group).source


def test_torchvision_weights_into_a_group_norm_pooling_say_what_is_missing() -> None:
    from torchvision.models.segmentation import deeplabv3_resnet50

    from specc.importers import import_state

    source = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).state_dict()
    spec = runkit.REPO / "specs" / "zoo" / "torchvision_deeplabv3_resnet50.yaml"
    comp = build(load_spec(spec, ["input.size=[65,65]", "aspp.image_pooling.norm=group"]))
    with pytest.raises(WeightsError) as err:
        import_state(comp, source, "torchvision")
    message = str(err.value)
    assert "aspp.image_pooling.norm is 'group'" in message and "--backbone-only" in message
    backbone = import_state(comp, source, "torchvision", backbone_only=True)
    assert backbone.state and all(k.startswith("backbone.") for k in backbone.state)


# ---------------------------------------------------------------------------------------------
# Training at one image per process


def test_batch_one_with_batch_norm_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "one"
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--batch-size", "1",
                               "--iters", "2", *runkit.sets(runkit.TINY)], capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "aspp.image_pooling.norm" in text and "group or none" in text
    assert "train.batch_size=1" in text
    assert not (tmp_path / "runs").exists()  # no folder, not even the parent


def test_batch_one_per_process_under_torchrun_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_mod.distributed, "setup",
                        lambda device=None: train_mod.distributed.Context(rank=0, world_size=2))
    monkeypatch.setattr(train_mod.distributed, "cleanup", lambda ctx: None)
    with pytest.raises(train_mod.TrainingError, match="over 2 processes gives 1 image"):
        runkit.train_tiny(tmp_path / "run", ["train.batch_size=2"])
    assert not (tmp_path / "run").exists()


def test_batch_one_trains_with_group_norm(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runkit.train_tiny(run, ["train.batch_size=1", "aspp.image_pooling.norm=group",
                                     "train.iters=3", "train.save_every=3"])
    assert result.iteration == 3 and result.loss is not None and result.loss == result.loss
    weights, state, info = ckpt.load_checkpoint(run)
    assert state["iteration"] == 3
    assert info["resolved"]["aspp"]["image_pooling"]["norm"] == "group"
    assert any(".norm.weight" in k for k in weights)


# ---------------------------------------------------------------------------------------------
# Operating-system errors


def test_full_disk_while_saving_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch) -> None:
    run = tmp_path / "run"

    def full(run_dir: Path, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "checkpoint-0000002"))

    monkeypatch.setattr(train_mod.ckpt, "save_checkpoint", full)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--iters", "2",
                               *runkit.sets(runkit.TINY)], capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert f"{run / 'checkpoint-0000002'}: No space left on device" in text
    assert "another disk" in text


def test_out_below_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    run = tmp_path / "notes.txt" / "run"
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--iters", "2",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err and "notes.txt is a file" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_out_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    run.chmod(0o555)
    try:
        code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--iters", "2",
                                   *runkit.sets(runkit.TINY)], capsys)
    finally:
        run.chmod(0o755)
    assert code == 2 and "Traceback" not in err
    assert f"--out {run}: cannot write into {run} (permission denied)" in err
