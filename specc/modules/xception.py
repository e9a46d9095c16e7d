"""The aligned-Xception unit.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct
from specc.modules.separable_conv import SeparableConv

# ---- EMITTED: everything below goes into model.py verbatim ----

class XceptionUnit(nn.Module):
    """Aligned-Xception unit: three 3×3 separable convs, the stride on the third, and a shortcut.

    relu="pre" puts a ReLU before each separable conv and none between depthwise and pointwise;
    relu="inside" puts BN + ReLU after both (the DeepLab TF code's two flavours).
    """

    def __init__(self, in_channels: int, channels: Tuple[int, int, int], *, stride: int = 1,
                 rates: Tuple[int, int, int] = (1, 1, 1), shortcut: str = "conv",
                 relu: str = "pre", tap: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.pre_act = relu == "pre"
        self.has_shortcut = shortcut != "none"
        self.tap = tap
        inner = "none" if self.pre_act else "relu"
        self.sep1 = SeparableConv(in_channels, channels[0], dilation=rates[0],
                                  depthwise_act=inner, act=inner, eps=eps)
        self.sep2 = SeparableConv(channels[0], channels[1], dilation=rates[1],
                                  depthwise_act=inner, act=inner, eps=eps)
        self.sep3 = SeparableConv(channels[1], channels[2], stride=stride, dilation=rates[2],
                                  depthwise_act=inner, act=inner, eps=eps)
        if shortcut == "conv":
            self.shortcut = ConvBNAct(in_channels, channels[2], stride=stride, act="none", eps=eps)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tap(x)[0]

    def forward_tap(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The output and the output of sep{tap} (before the next ReLU)."""
        y1 = self.sep1(F.relu(x) if self.pre_act else x)
        y2 = self.sep2(F.relu(y1) if self.pre_act else y1)
        y3 = self.sep3(F.relu(y2) if self.pre_act else y2)
        out = y3 + self.shortcut(x) if self.has_shortcut else y3
        tapped = y1 if self.tap == 1 else (y2 if self.tap == 2 else y3)
        return out, tapped
