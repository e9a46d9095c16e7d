"""The training pass ``exact_batchnorm`` (specc.train_passes): the same function, parameters,
buffers and state-dict keys as the batch norms it rewrites, in training and in eval mode, and
channels-last batch statistics as close to float64 as the contiguous layout's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from specc.modules.conv_bn_act import ConvBNAct
from specc.modules.separable_conv import SeparableConv
from specc.train_passes import MIN_EXACT_COUNT, ExactBatchNorm2d, exact_batchnorm

CL = torch.channels_last


def blocks(seed: int = 0) -> nn.Sequential:
    """A strided conv block, a dilated separable one and a 1×1 block whose BN keeps a cumulative
    average (momentum None), with random running statistics and affine parameters."""
    torch.manual_seed(seed)
    model = nn.Sequential(ConvBNAct(3, 8, kernel_size=3, stride=2),
                          SeparableConv(8, 12, dilation=2),
                          ConvBNAct(12, 6, kernel_size=1))
    model[2].bn.momentum = None
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 3)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return model


def train_steps(model: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """One SGD step per batch in training mode; returns each step's output."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    outputs = []
    for x in images:
        out = model(x)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        outputs.append(out.detach())
    return outputs


def test_the_rewritten_model_trains_as_the_model_it_rewrites() -> None:
    """In float64, where both ways of summing are exact enough to agree to 1e-9: outputs,
    updated weights and running statistics after three channels-last steps."""
    reference = blocks().double().to(memory_format=CL)
    exact = copy.deepcopy(reference)
    names = exact_batchnorm(exact)
    assert names == ["0.bn", "1.bn_depthwise", "1.bn_pointwise", "2.bn"]
    assert isinstance(exact[1].bn_depthwise, ExactBatchNorm2d)
    assert list(exact.state_dict()) == list(reference.state_dict())

    images = [(torch.randn(4, 3, 17, 15, dtype=torch.float64) * 2 + 5).contiguous(
        memory_format=CL) for _ in range(3)]
    for out, expected in zip(train_steps(exact, images), train_steps(reference, images),
                             strict=True):
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    for (key, value), expected in zip(exact.state_dict().items(),
                                      reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9, msg=key)

    exact.eval()
    reference.eval()
    x = torch.randn(2, 3, 21, 19, dtype=torch.float64).contiguous(memory_format=CL)
    torch.testing.assert_close(exact(x), reference(x), rtol=1e-9, atol=1e-9)


def test_inputs_that_are_not_channels_last_take_the_native_kernel() -> None:
    reference = blocks()
    exact = copy.deepcopy(reference)
    exact_batchnorm(exact)
    x = torch.randn(4, 3, 17, 15)
    for a, b in zip(train_steps(exact, [x, x]), train_steps(reference, [x, x]), strict=True):
        assert torch.equal(a, b)  # the same kernels: bit for bit


def test_only_plain_batchnorm2d_is_rewritten() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4), nn.SyncBatchNorm(4), nn.GroupNorm(2, 4),
                          nn.BatchNorm2d(4, affine=False, track_running_stats=False))
    assert exact_batchnorm(model) == ["3"]
    # 2·33·33 values per channel: over MIN_EXACT_COUNT, so the exact path runs without running
    # statistics to update
    x = torch.randn(2, 4, 33, 33).contiguous(memory_format=CL)
    assert x.numel() // x.shape[1] >= MIN_EXACT_COUNT
    model[3].train()
    expected = nn.functional.batch_norm(x.double(), None, None, training=True)
    torch.testing.assert_close(model[3](x).double(), expected, rtol=1e-6, atol=1e-6)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the native kernels' sums, and so their errors, depend on the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mean", [0.3, 20.0])
@pytest.mark.usefixtures("one_thread")
def test_channels_last_statistics_are_as_exact_as_contiguous_ones(mean: float) -> None:
    """A batch norm over 8×49×49 values per channel (the demo's first layers), in training
    mode. With the pass, the output and running statistics in channels-last are as close to
    float64 as the contiguous layout's (the native channels-last kernel's are 10–20× further
    here: it adds the values one after another). The output is allowed up to 3× the contiguous
    error: the eval-mode kernel that applies the statistics computes x·scale + shift, which
    loses a little more where a channel's mean is large against its spread (mean 20 here). The
    gradients come from the native backward, whose sums are the kernel's own: checked against a
    looser bound."""
    torch.manual_seed(0)
    x64 = torch.randn(8, 16, 49, 49, dtype=torch.float64) * torch.rand(1, 16, 1, 1) + mean
    grad = torch.randn(8, 16, 49, 49, dtype=torch.float64)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)

    def run(model: nn.Module, dtype: torch.dtype, memory: torch.memory_format
            ) -> list[torch.Tensor]:
        model = copy.deepcopy(model).to(dtype).train()
        x = x64.to(dtype).contiguous(memory_format=memory).detach().clone().requires_grad_()
        out = model(x)
        out.backward(grad.to(dtype).contiguous(memory_format=memory))
        return [out.detach(), model.running_mean, model.running_var, x.grad, model.weight.grad]

    reference = run(bn, torch.float64, torch.contiguous_format)
    contiguous = run(bn, torch.float32, torch.contiguous_format)
    exact = copy.deepcopy(bn)
    exact_batchnorm(exact)
    got = run(exact, torch.float32, CL)
    errors = [relative_error(value, expected) for value, expected in zip(got, reference,
                                                                         strict=True)]
    floors = [relative_error(value, expected) for value, expected in zip(contiguous, reference,
                                                                         strict=True)]
    assert errors[0] <= 3 * floors[0] + 2e-7, "output"
    assert errors[1] <= 2 * floors[1] + 2e-7, "running mean"
    assert errors[2] <= 2 * floors[2] + 2e-7, "running variance"
    assert errors[3] <= 2e-5, "input gradient"
    assert errors[4] <= 2e-5, "weight gradient"
