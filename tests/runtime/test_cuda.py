"""The CUDA paths: TorchScript on the GPU, channels-last, mixed-precision training, evaluation,
AOTInductor packages compiled for the GPU, and DDP over NCCL. Skipped where torch sees no CUDA device (CI has none); on a GPU machine
``pytest -n 0 tests/runtime/test_cuda.py`` checks them in a few minutes.

Comparisons against the CPU turn TF32 off: with it on, cuDNN's convs round their inputs to 10-bit
mantissas and differ from the CPU by ~1e-3 of the logits' scale, which would hide a real error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import runkit
import torch

from runtime import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """fp32 convs and matmuls without TF32, for the duration of a test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def images(n: int = 2, size: int = 65) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_torchscript_model_runs_on_cuda_as_on_cpu(tmp_path: Path, exact_fp32: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``model.pt`` from ``specc build`` loads onto the GPU and gives the CPU's logits."""
    code, _, err = runkit.cli(["build", runkit.SPEC, "--out", tmp_path,
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    path = next(tmp_path.rglob("model.pt"))
    x = images()
    with torch.no_grad():
        on_cpu = torch.jit.load(str(path), map_location="cpu").eval()(x)["out"]
        on_gpu = torch.jit.load(str(path), map_location="cuda").eval()(x.cuda())["out"]
    assert on_gpu.device.type == "cuda"
    scale = on_cpu.abs().max().item()
    assert (on_gpu.cpu() - on_cpu).abs().max().item() <= 1e-4 * scale


def test_channels_last_on_cuda_gives_the_contiguous_result(exact_fp32: None) -> None:
    net = runkit.random_network().cuda()
    x = images().cuda()
    with torch.no_grad():
        plain = net(x)["out"]
        last = net.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))["out"]
    scale = plain.abs().max().item()
    assert (last - plain).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_training_on_cuda_saves_resumes_and_evaluates(precision: str, tmp_path: Path) -> None:
    """A few steps under each ``train.precision`` (fp16 with its loss scaler), a finite loss, a
    checkpoint that resumes on the GPU, and a final evaluation."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16 arithmetic")
    run = tmp_path / "run"
    extra = [f"train.precision={precision}", "train.save_every=3"]
    first = runkit.train_tiny(run, [*extra, "train.iters=3"], device="cuda")
    assert first.iteration == 3 and first.loss is not None and math.isfinite(first.loss)
    _, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 3
    resumed = runkit.train_tiny(run, [*extra, "train.iters=6"], device="cuda", resume=True)
    assert resumed.iteration == 6 and math.isfinite(resumed.loss)
    assert resumed.scores is not None and 0.0 <= resumed.scores["miou"] <= 1.0


def test_eval_on_cuda_scores_as_on_cpu(tmp_path_factory: pytest.TempPathFactory,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``specc eval --device cuda`` on a run trained on the CPU: the mIoU of the CPU's eval, up
    to pixels whose two best classes are within the GPU's rounding."""
    run = runkit.base_run(tmp_path_factory)
    reports = {}
    for device in ("cpu", "cuda"):
        code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", run, "--device",
                                     device, "--json", *runkit.sets(runkit.TINY)], capsys)
        assert code == 0, err
        reports[device] = json.loads(out)
    assert reports["cuda"]["miou"] == pytest.approx(reports["cpu"]["miou"], abs=0.005)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_aoti_package_for_cuda_is_checked_and_evaluates_as_model_pt(
        precision: str, tmp_path: Path, exact_fp32: None,
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """``specc build --target aoti --device cuda``: a package compiled for the GPU, listed as
    such with its check against the model; it takes images on either device and gives logits
    where they came from; ``specc eval`` runs it on the GPU with model.pt's mIoU."""
    from specc.targets import load_artifact

    run = runkit.base_run(tmp_path_factory)
    code, _, err = runkit.cli(["build", runkit.SPEC, "--out", tmp_path, "--weights", run,
                               "--target", f"aoti:{precision}", "--device", "cuda",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err
    folder = next(tmp_path.glob("*/artifacts.json")).parent
    entry = next(a for a in json.loads((folder / "artifacts.json").read_text())["artifacts"]
                 if a["target"] == "aoti")
    assert entry["file"] == f"model-aoti-cuda-{precision}.pt2" and entry["device"] == "cuda"
    assert entry["check"]["argmax_agreement"] >= (0.999 if precision == "fp32" else 0.98)
    artifact = load_artifact(folder / entry["file"])
    x = images()
    with torch.no_grad():
        want = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()(x)["out"]
    on_cpu, on_gpu = artifact(x)["out"], artifact(x.cuda())["out"]
    assert on_cpu.device.type == "cpu" and on_gpu.device.type == "cuda"
    agree = (on_cpu.argmax(1) == want.argmax(1)).float().mean().item()
    assert agree >= (0.999 if precision == "fp32" else 0.98)
    if precision == "fp32":
        assert (on_cpu - want).abs().max().item() <= 1e-3 * want.abs().max().item()
    scores = {}
    for name in ("model.pt", entry["file"]):
        code, out, err = runkit.cli(["eval", runkit.SPEC, "--checkpoint", folder / name,
                                     "--json", *runkit.sets(runkit.TINY)], capsys)
        assert code == 0, err
        scores[name] = json.loads(out)["miou"]
    assert scores[entry["file"]] == pytest.approx(scores["model.pt"], abs=0.01)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_torchrun_two_processes_nccl(tmp_path: Path) -> None:
    """DDP over NCCL with SyncBatchNorm: two processes, one checkpoint with both ranks' random
    states, rank 0 alone writes model.pt and reports."""
    run = tmp_path / "run"
    args = [runkit.python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "specc", "train", str(runkit.SPEC), "--out", str(run), "--iters", "4",
            "--save-every", "2", "--device", "cuda", *runkit.sets(runkit.TINY)]
    done = subprocess.run(args, env={**os.environ, **runkit.ENV_ONE_THREAD},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    _, state, _ = ckpt.load_checkpoint(run)
    assert state["iteration"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert (run / "model.pt").is_file()
    assert done.stderr.count("trained deeplabv3plus_mobilenetv2") == 1
