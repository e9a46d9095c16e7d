"""Inference passes over a compiled model: each takes the ``nn.Module`` built from generated code
(:attr:`specc.api.Compilation.module`) and returns a new module that computes the same "out"
faster; the caller's model is never changed.

>>> fast = optimize_for_inference(built.module)            # every pass, in DEFAULT_PASSES order
>>> fast = optimize_for_inference(built.module, ["inference_only", "fold_batchnorm"])

The passes know the generated building blocks (:mod:`specc.modules`) by their class names and
attribute names, never by parsing code: a Conv2d → BatchNorm2d pair is folded only where a block
is known to apply its BN directly to its conv's output, so an unknown layout is left as it is.
Every result is in eval mode, scripts with ``torch.jit.script`` and exports with
``torch.export.export`` (dynamic batch, height and width).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: The Conv2d → BatchNorm2d pairs of each generated block, as (conv attribute, BN attribute):
#: in each block's forward the BN reads the conv's output and nothing else does.
CONV_BN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "ConvBNAct": (("conv", "bn"),),
    "SeparableConv": (("depthwise", "bn_depthwise"), ("pointwise", "bn_pointwise")),
}

#: Heads that only feed a training loss, by attribute of the model and key of its output dict.
TRAINING_ONLY_HEADS = ("aux",)

#: Dropout layers, removed for inference (they are the identity in eval mode anyway).
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _fresh_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, so a pass can rewrite it in place."""
    return copy.deepcopy(model).eval()


def _fold_pairs(model: nn.Module) -> list[str]:
    """Fold, in place, every known Conv2d → BatchNorm2d pair of ``model`` (in eval mode) into
    the conv, replacing the BN by ``nn.Identity``. Returns the folded BNs' qualified names."""
    folded: list[str] = []
    for name, block in model.named_modules():
        for conv_attr, bn_attr in CONV_BN_PAIRS.get(type(block).__name__, ()):
            conv, bn = getattr(block, conv_attr, None), getattr(block, bn_attr, None)
            if not _foldable(conv, bn):
                continue
            setattr(block, conv_attr, fuse_conv_bn_eval(conv, bn))
            setattr(block, bn_attr, nn.Identity())
            folded.append(f"{name}.{bn_attr}" if name else bn_attr)
    return folded


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """Whether ``bn`` can be folded into ``conv``: a Conv2d and a BatchNorm2d over its output
    channels with running statistics (a BN without them normalizes by each batch's own)."""
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
            and bn.num_features == conv.out_channels
            and bn.running_mean is not None and bn.running_var is not None)


def _replace_children(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]
                      ) -> None:
    """Replace, in place, every submodule of ``model`` for which ``replacement`` returns a
    module by that module (None: leave it)."""
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            new = replacement(child)
            if new is not None:
                setattr(parent, child_name, new)


def _remove_dropout(model: nn.Module) -> None:
    """Replace, in place, every dropout layer of ``model`` by ``nn.Identity``."""
    _replace_children(model, lambda m: nn.Identity() if isinstance(m, DROPOUT_TYPES) else None)


def _drop_training_heads(model: nn.Module) -> nn.Module:
    """Set, in place, the training-only heads of ``model`` to None: the generated forward skips
    a head that is None, so neither its work nor its output remains."""
    for attr in TRAINING_ONLY_HEADS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, None)
    return model


def _to_channels_last(model: nn.Module) -> nn.Module:
    """Convert, in place, the 4-D weights of ``model`` to the channels-last memory format, which
    the CPU's and the GPU's convolution kernels run fastest on (activations follow the weights)."""
    return model.to(memory_format=torch.channels_last)


#: The smallest atrous rate :func:`wide_atrous` rewrites. oneDNN's bf16 kernels slow down as the
#: rate grows (2 cores, AMX: ResNet-50's 2048 → 256 ASPP conv on a 65×65 map 145 ms at rate 12,
#: 334 ms at rate 36; a 2048-channel depthwise conv on a 33×33 map 0.9 ms at rate 6, 12 ms at
#: rate 8, 47 ms at rate 18); below rate 8 they beat the rewrites (rate 4, 512 → 512 channels:
#: 10 ms against the taps' 58 ms; depthwise at rate 6: 0.9 ms against 1.9 ms padded first).
MIN_TAP_RATE = 8


class AtrousTaps(nn.Module):
    """A stride-1 "same" k×k atrous convolution computed as one 1×1 convolution to the k²
    taps' outputs (k²·out channels), each then shifted by its offset (rate × tap position, the
    uncovered border filled with zeros) and summed, plus the bias. The same function as the conv
    it replaces; the cost no longer depends on the rate, and a tap that falls wholly outside a
    small map only adds zeros."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        out_channels, in_channels, kh, kw = conv.weight.shape
        # (out, in, kh, kw) -> (kh·kw·out, in, 1, 1): tap (i, j) owns channels (i·kw + j)·out...
        weight = conv.weight.detach().permute(2, 3, 0, 1).reshape(kh * kw * out_channels,
                                                                    in_channels, 1, 1)
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(),
                                                                 requires_grad=False)
        self.out_channels = out_channels
        self.kernel_width = kw
        rate_h, rate_w = conv.dilation
        self.row_offsets = [(i - kh // 2) * rate_h for i in range(kh)]
        self.col_offsets = [(j - kw // 2) * rate_w for j in range(kw)]

    @staticmethod
    def _shift(t: torch.Tensor, offset: int, dim: int) -> torch.Tensor:
        """``t`` moved along ``dim`` (2: rows, 3: columns) so that position p holds what was at
        p + offset, with zeros where that lies outside."""
        if offset == 0:
            return t
        length = t.shape[dim]
        pad = [0, 0, 0, 0]  # F.pad order: left, right, top, bottom
        side = (0 if offset < 0 else 1) + (2 if dim == 2 else 0)
        pad[side] = abs(offset)
        return F.pad(t, pad).narrow(dim, max(offset, 0), length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = F.conv2d(x, self.weight)
        n = self.out_channels
        rows: list[torch.Tensor] = []
        for i, dy in enumerate(self.row_offsets):
            parts: list[torch.Tensor] = []
            for j, dx in enumerate(self.col_offsets):
                k = i * self.kernel_width + j
                parts.append(self._shift(taps[:, k * n:(k + 1) * n], dx, 3))
            rows.append(self._shift(_sum(parts), dy, 2))
        out = _sum(rows)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The sum of a non-empty list of tensors."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _same_wide(conv: nn.Module) -> bool:
    """A stride-1, zero-padded ``nn.Conv2d`` with an odd kernel larger than 1×1, "same"
    padding and rates of at least :data:`MIN_TAP_RATE`."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return False
    kh, kw = conv.kernel_size
    rates, padding = conv.dilation, conv.padding
    return (kh % 2 == 1 and kw % 2 == 1 and kh * kw > 1 and conv.stride == (1, 1)
            and isinstance(padding, tuple)
            and padding == (rates[0] * (kh // 2), rates[1] * (kw // 2))
            and min(rates) >= MIN_TAP_RATE)


class PaddedFirst(nn.Module):
    """A zero-padded conv whose padding is written out: ``F.pad`` of the input, then the conv
    without padding. The same function; for a depthwise conv of a wide rate oneDNN's bf16
    kernel stays fast on the padded map (2048 channels at 33×33, rate 18: 3 ms against 47 ms)
    where it leaves its fast path when asked to pad."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        pad_h, pad_w = conv.padding
        self.pad = [pad_w, pad_w, pad_h, pad_h]
        conv.padding = (0, 0)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


def _wide_rewrite(conv: nn.Module) -> nn.Module | None:
    """What :func:`wide_atrous` puts in place of ``conv`` (None: nothing): a plain conv of a
    wide rate computed by :class:`AtrousTaps`, a depthwise one padded first
    (:class:`PaddedFirst`)."""
    if not _same_wide(conv):
        return None
    if conv.groups == 1:
        return AtrousTaps(conv)
    if conv.groups == conv.in_channels == conv.out_channels:
        return PaddedFirst(conv)
    return None


def _wide_atrous_in_place(model: nn.Module) -> nn.Module:
    """:func:`wide_atrous` without the copy."""
    _replace_children(model, _wide_rewrite)
    return model


def wide_atrous(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every atrous conv of rate >= :data:`MIN_TAP_RATE`
    (the ASPP branches, Xception's exit flow) rewritten for kernels that slow down with the
    rate: a plain conv as one 1×1 conv to all its taps and their shifted sums
    (:class:`AtrousTaps`), a depthwise conv with its padding done first (:class:`PaddedFirst`).
    Equal in exact arithmetic; for bf16 artifacts, where oneDNN's kernels slow down with the
    rate. In fp32 its own atrous kernels are the faster, so the pass is not among
    :data:`DEFAULT_PASSES`."""
    return _wide_atrous_in_place(_fresh_eval_copy(model))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm2d that directly follows a Conv2d
    folded into it: the conv's weight is scaled by ``gamma / sqrt(var + eps)`` and it gains the
    bias ``beta - mean · scale``; the BN becomes ``nn.Identity``. This covers plain, strided,
    dilated and depthwise convs (of separable convs too), and the image-pooling branch. Other
    BNs (none after a known conv) are left as they are. One conv instead of conv + BN per layer
    saves a pass over every activation; eval-mode outputs are equal to float tolerance."""
    folded = _fresh_eval_copy(model)
    _fold_pairs(folded)
    return folded


def inference_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without what only training uses: dropout layers become
    ``nn.Identity`` and training-only heads (the auxiliary FCN head) are removed, so forward
    returns ``{"out": logits}`` alone and does not pay for the head."""
    stripped = _fresh_eval_copy(model)
    _remove_dropout(stripped)
    return _drop_training_heads(stripped)


def channels_last(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with its weights in the channels-last memory format."""
    return _to_channels_last(_fresh_eval_copy(model))


def _inference_only_in_place(model: nn.Module) -> nn.Module:
    """:func:`inference_only` without the copy."""
    _remove_dropout(model)
    return _drop_training_heads(model)


def _fold_in_place(model: nn.Module) -> nn.Module:
    """:func:`fold_batchnorm` without the copy."""
    _fold_pairs(model)
    return model


#: Every pass by name, as an in-place rewrite of an eval-mode copy (returning the new root).
PASSES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "inference_only": _inference_only_in_place,
    "fold_batchnorm": _fold_in_place,
    "channels_last": _to_channels_last,
    "wide_atrous": _wide_atrous_in_place,
}

#: The passes :func:`optimize_for_inference` applies when none are named, in this order.
DEFAULT_PASSES = ("inference_only", "fold_batchnorm", "channels_last")


def optimize_for_inference(model: nn.Module,
                           passes: Iterable[str] = DEFAULT_PASSES) -> nn.Module:
    """A copy of ``model`` in eval mode with the named passes (keys of :data:`PASSES`) applied in
    order. Raises ValueError naming the known passes when a name is not one of them."""
    names = list(passes)
    unknown = [name for name in names if name not in PASSES]
    if unknown:
        raise ValueError(f"unknown inference pass {', '.join(map(repr, unknown))}: expected "
                         f"one of {', '.join(PASSES)}")
    optimized = _fresh_eval_copy(model)
    for name in names:
        optimized = PASSES[name](optimized)
    return optimized
