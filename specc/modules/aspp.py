"""Atrous spatial pyramid pooling and its image-pooling branch.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct
from specc.modules.conv_norm_act import ConvNormAct
from specc.modules.separable_conv import SeparableConv

# ---- EMITTED: everything below goes into model.py verbatim ----

class ImagePooling(nn.Module):
    """Image-level features (DeepLabv3 §3.3): average pooling → 1×1 conv → norm → ReLU →
    bilinear upsampling. An empty ``kernel`` pools globally; a fixed kernel (the feature map at
    the spec's input size, as in the TF code) is clamped to smaller maps. The norm is a
    BatchNorm (``norm="batch"``), or a GroupNorm of ``groups`` or none, which train on one
    image per process too."""

    kernel: List[int]

    def __init__(self, in_channels: int, out_channels: int, *, kernel: List[int],
                 align_corners: bool, norm: str = "batch", groups: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.kernel = kernel
        self.align_corners = align_corners
        if norm == "batch":
            self.conv = ConvBNAct(in_channels, out_channels, eps=eps)
        else:
            self.conv = ConvNormAct(in_channels, out_channels, norm=norm, groups=groups, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        if len(self.kernel) == 0:
            y = F.adaptive_avg_pool2d(x, 1)
        else:
            kernel = [min(self.kernel[0], size[0]), min(self.kernel[1], size[1])]
            y = F.avg_pool2d(x, kernel, stride=1)
        y = self.conv(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, 3×3 branches at ``rates``, optional image
    pooling (concatenated last, or first with ``pool_first``), concatenated and projected."""

    def __init__(self, in_channels: int, out_channels: int, *, rates: List[int],
                 separable: bool, depthwise_norm: bool, pooling: bool, pool_kernel: List[int],
                 align_corners: bool, projection_channels: int, projection_kernel: int,
                 dropout: float, pool_norm: str = "batch", pool_groups: int = 1,
                 pool_first: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.pool_first = pooling and pool_first
        branches: List[nn.Module] = [ConvBNAct(in_channels, out_channels, eps=eps)]
        for rate in rates:
            if separable:
                branches.append(SeparableConv(in_channels, out_channels, dilation=rate,
                                              depthwise_norm=depthwise_norm, eps=eps))
            else:
                branches.append(ConvBNAct(in_channels, out_channels, kernel_size=3,
                                          dilation=rate, eps=eps))
        if pooling:
            branches.append(ImagePooling(in_channels, out_channels, kernel=pool_kernel,
                                         align_corners=align_corners, norm=pool_norm,
                                         groups=pool_groups, eps=eps))
        self.convs = nn.ModuleList(branches)
        self.project = ConvBNAct(out_channels * len(branches), projection_channels,
                                 kernel_size=projection_kernel, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        outs: List[Tensor] = []
        for branch in self.convs:
            outs.append(branch(x))
        if self.pool_first:  # MMSegmentation concatenates the pooled branch first
            outs = outs[-1:] + outs[:-1]
        return self.dropout(self.project(torch.cat(outs, dim=1)))
