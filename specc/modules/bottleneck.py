"""The ResNet bottleneck block.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import Tuple

from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride, dilation; grouped in ResNeXt) → 1×1, plus a
    shortcut that is a 1×1 conv when channels change (after an average pool by the stride in
    ResNet-D, ``avgpool_conv``), a strided subsampling when only the size does, identity
    otherwise."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, *,
                 stride: int = 1, dilation: int = 1, groups: int = 1, shortcut: str = "identity",
                 tap: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.tap = tap
        self.conv1 = ConvBNAct(in_channels, mid_channels, eps=eps)
        self.conv2 = ConvBNAct(mid_channels, mid_channels, kernel_size=3, stride=stride,
                               dilation=dilation, groups=groups, eps=eps)
        self.conv3 = ConvBNAct(mid_channels, out_channels, act="none", eps=eps)
        if shortcut == "conv":
            self.shortcut = ConvBNAct(in_channels, out_channels, stride=stride, act="none", eps=eps)
        elif shortcut == "avgpool_conv":  # ResNet-D: average pool by the stride, then 1×1 conv
            pool = (nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False)
                    if stride != 1 else nn.Identity())
            self.shortcut = nn.Sequential(
                pool, ConvBNAct(in_channels, out_channels, act="none", eps=eps))
        elif shortcut == "subsample":
            self.shortcut = nn.MaxPool2d(1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(y + self.shortcut(x))

    def forward_tap(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The output and the output of conv{tap} (for a decoder or auxiliary tap)."""
        y1 = self.conv1(x)
        y2 = self.conv2(y1)
        y3 = self.conv3(y2)
        tapped = y1 if self.tap == 1 else (y2 if self.tap == 2 else y3)
        return self.act(y3 + self.shortcut(x)), tapped
