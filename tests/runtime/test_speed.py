"""What makes training fast keeps it correct: the synthetic set's cache serves the very samples
it generates; channels-last and compiled steps train as the plain ones do; a precision the
hardware lacks is refused up front, one it has runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import runkit
import torch
from torch import nn

from runtime import checkpoint as ckpt
from runtime import devices
from runtime import train as train_mod
from runtime.data import synthetic
from runtime.data.synthetic import SyntheticSegmentation
from specc.api import load_spec
from specc.hardware import CpuInfo


def test_cached_samples_are_the_generated_ones_and_read_only() -> None:
    data = SyntheticSegmentation("train", num_classes=4, image_size=32, length=5, seed=3)
    first = [np.asarray(data[i][0]).copy() for i in range(5)]
    again = [data[i] for i in range(5)]
    for index, (image, label) in enumerate(again):
        fresh_image, fresh_label = data.generate(index)
        np.testing.assert_array_equal(np.asarray(image), fresh_image)
        np.testing.assert_array_equal(first[index], fresh_image)
        np.testing.assert_array_equal(label, fresh_label)
        with pytest.raises(ValueError, match="read-only"):
            label[0, 0] = 1
    assert data.load_label(2) is again[2][1]  # kept, not generated again


def test_a_set_too_large_for_the_cache_is_generated_on_every_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(synthetic, "CACHE_BYTES", 32 * 32 * 4 * 4)
    data = SyntheticSegmentation("val", num_classes=3, image_size=32, length=5)
    assert data.load_label(1) is not data.load_label(1)
    np.testing.assert_array_equal(data.load_label(1), data.generate(1)[1])


# ---------------------------------------------------------------------------------------------
# train.precision, train.channels_last and train.compile


#: One step of the tiny spec at a small crop, without dropout (whose random mask follows the
#: memory order: channels-last would drop other elements).
ONE_STEP = ["train.iters=1", "data.crop=[33,33]", "aspp.projection.dropout=0"]
#: A small DeepLabv3+ for the compiled step: a stem and three one-unit residual stages with batch
#: norm, an atrous stage, ASPP and decoder. Compiling the tiny MobileNetV2's 17 blocks forward
#: and backward took 2 to 4.5 minutes on two AVX2 cores under the suite's load, this network 34 to
#: 42 s: inductor's time grows with the number of layers, not their width.
COMPILE_SPEC = """\
name: compile_check
num_classes: 5
input: {size: [33, 33]}
backbone:
  stem: {convs: [{channels: 8, stride: 2}]}
  output_stride: 8
  stages:
    - {name: s1, units: [{type: basic, channels: 8, stride: 2}]}
    - {name: s2, units: [{type: basic, channels: 16, stride: 2}]}
    - {name: s3, units: [{type: basic, channels: 16, stride: 2}]}
aspp: {channels: 16, rates: [1], rates_output_stride: 8, projection: {channels: 16, dropout: 0}}
decoder: {low_level: backbone.s1, projection: 8, channels: 16}
data:
  source: synthetic
  crop: [33, 33]
  synthetic: {size: 32, train_length: 8, val_length: 2}
train: {iters: 1, batch_size: 4, workers: 0, log_every: 1, lr: 0.02}
"""
NO_BF16 = CpuInfo(model="Test CPU", features=frozenset({"avx2", "fma"}))
WITH_BF16 = CpuInfo(model="Test CPU", features=frozenset({"avx2", "avx512f", "avx512_bf16"}))


@pytest.mark.parametrize(("precision", "says"), [("bf16", "no native bf16"),
                                                 ("fp16", "needs a CUDA GPU")])
def test_a_precision_the_cpu_lacks_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    precision: str, says: str,
) -> None:
    monkeypatch.setattr(devices, "cpu_info", lambda: NO_BF16)
    run = tmp_path / "runs" / "one"
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--iters", "2", "--device",
                               "cpu", *runkit.sets([*runkit.TINY, f"train.precision={precision}"])],
                              capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert f"--set train.precision={precision}: train.precision:" in text
    assert says in text and "use fp32" in text
    assert not (tmp_path / "runs").exists()


def test_bf16_trains_on_a_cpu_with_native_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "cpu_info", lambda: WITH_BF16)  # emulated here, but it runs
    seen: list[torch.dtype] = []
    real = train_mod._step

    def step(*args: object) -> float:
        model = args[0]
        handle = model.register_forward_hook(lambda m, i, out: seen.append(out["out"].dtype))
        try:
            return real(*args)  # type: ignore[arg-type]
        finally:
            handle.remove()

    monkeypatch.setattr(train_mod, "_step", step)
    result = runkit.train_tiny(tmp_path / "run", ["train.precision=bf16", "train.iters=2",
                                                  "data.crop=[33,33]"], device="cpu")
    assert seen == [torch.bfloat16, torch.bfloat16]  # the forward pass ran under bf16 autocast
    assert result.loss is not None and math.isfinite(result.loss)
    weights, _, _ = ckpt.load_checkpoint(tmp_path / "run")
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())


def test_the_old_amp_key_loads_as_precision_with_a_deprecation() -> None:
    old = load_spec(runkit.SPEC, ["train.amp=none"])
    assert old.spec.train.precision == "fp32"
    assert [(d.old, d.new) for d in old.raw.deprecations] == [("train.amp", "train.precision")]
    assert load_spec(runkit.SPEC, ["train.amp=bf16"]).spec.train.precision == "bf16"
    assert load_spec(runkit.SPEC).spec.train.precision == "fp32"


def test_channels_last_trains_as_contiguous_memory_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats: list[bool] = []
    real = train_mod._step

    def step(*args: object) -> float:
        conv = next(m for m in args[0].modules() if isinstance(m, nn.Conv2d))
        formats.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "_step", step)
    runs = {}
    for flag in ("true", "false"):
        runs[flag] = tmp_path / flag
        runkit.train_tiny(runs[flag], [f"train.channels_last={flag}", *ONE_STEP], device="cpu")
    assert formats == [True, False]  # on the CPU too
    assert_same_step(runs["true"], runs["false"])


def assert_same_step(run: Path, reference: Path) -> None:
    """The two runs took the same first step: the same loss, and weights that differ by far less
    than the step changed them (lr 0.02 times gradients of order 0.1 to 1).

    Only one step is compared: the tiny model at a 33-pixel crop normalizes some layers over a
    handful of values, so a difference in the last bit of a sum (another summation order) grows
    to a visible one within three steps, as a 1e-7 change of the initial weights does too.
    """
    first = [json.loads(line)["loss"] for line in
             (run / train_mod.METRICS).read_text(encoding="utf-8").splitlines()]
    expected = [json.loads(line)["loss"] for line in
                (reference / train_mod.METRICS).read_text(encoding="utf-8").splitlines()]
    assert first[0] == pytest.approx(expected[0], rel=1e-5)
    got, _, _ = ckpt.load_checkpoint(run)
    want, _, _ = ckpt.load_checkpoint(reference)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=2e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_compile_without_a_cxx_compiler_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_mod.shutil, "which", lambda name: None)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--device", "cpu",
                               *runkit.sets([*runkit.TINY, "train.compile=true"])], capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "train.compile" in text and "no C++ compiler" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported()
                    or not any(shutil.which(c) for c in train_mod.CXX),
                    reason="torch.compile cannot run here")
def test_compiled_training_steps_like_the_eager_ones(tmp_path: Path) -> None:
    spec = tmp_path / "small.yaml"
    spec.write_text(COMPILE_SPEC, encoding="utf-8")
    graphs = torch._dynamo.utils.counters["stats"]
    runs, traced = {}, {}
    for flag in ("true", "false"):
        runs[flag] = tmp_path / flag
        before = graphs["unique_graphs"]
        train_mod.train(load_spec(spec, [f"train.compile={flag}"]), runs[flag],
                        reporter=runkit.quiet(), device="cpu")
        traced[flag] = graphs["unique_graphs"] - before
    assert traced["true"] > 0 and traced["false"] == 0  # the step really was compiled
    assert_same_step(runs["true"], runs["false"])
