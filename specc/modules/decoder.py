"""The DeepLabv3+ decoder.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct
from specc.modules.separable_conv import SeparableConv

# ---- EMITTED: everything below goes into model.py verbatim ----

class Decoder(nn.Module):
    """DeepLabv3+ decoder (§3.1): project the low-level feature, upsample the encoder output to
    its size, concatenate, fuse with 3×3 convs."""

    def __init__(self, encoder_channels: int, low_level_channels: int, *, projection: int,
                 convs: int, channels: int, separable: bool, depthwise_norm: bool, mode: str,
                 align_corners: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners
        self.project = ConvBNAct(low_level_channels, projection, eps=eps)
        layers: List[nn.Module] = []
        c = encoder_channels + projection
        for _ in range(convs):
            if separable:
                layers.append(SeparableConv(c, channels, depthwise_norm=depthwise_norm, eps=eps))
            else:
                layers.append(ConvBNAct(c, channels, kernel_size=3, eps=eps))
            c = channels
        self.fuse = nn.Sequential(*layers)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        low = self.project(low_level)
        if self.mode == "nearest":
            x = F.interpolate(x, size=low.shape[-2:], mode="nearest")
        else:
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear",
                              align_corners=self.align_corners)
        return self.fuse(torch.cat([x, low], dim=1))
