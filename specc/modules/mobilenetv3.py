"""The MobileNetV3 inverted residual and its squeeze-excitation.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class SqueezeExcite(nn.Module):
    """Squeeze-excitation (MobileNetV3): global average → 1×1 conv → ReLU → 1×1 conv → hard
    sigmoid, the result scaling each channel of the input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.fc2(scale))


class MobileNetV3Unit(nn.Module):
    """MobileNetV3 unit: 1×1 expansion (when ``expanded`` differs from the input) → k×k
    depthwise (stride, dilation) → squeeze-excitation (``se``) → 1×1 linear projection;
    residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, *, expanded: int, kernel: int = 3,
                 se: int = 0, act: str = "relu", stride: int = 1, dilation: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.residual = stride == 1 and in_channels == out_channels
        if expanded != in_channels:
            self.expand = ConvBNAct(in_channels, expanded, act=act, eps=eps)
        else:
            self.expand = nn.Identity()
        self.depthwise = ConvBNAct(expanded, expanded, kernel_size=kernel, stride=stride,
                                   dilation=dilation, groups=expanded, act=act, eps=eps)
        if se > 0:
            self.se = SqueezeExcite(expanded, se)
        else:
            self.se = nn.Identity()
        self.project = ConvBNAct(expanded, out_channels, act="none", eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y
