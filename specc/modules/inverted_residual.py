"""The MobileNetV2 inverted residual.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""


from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class InvertedResidual(nn.Module):
    """MobileNetV2 unit: 1×1 expansion → 3×3 depthwise (stride, dilation) → 1×1 linear
    projection; residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, *, expansion: int = 6,
                 stride: int = 1, dilation: int = 1, act: str = "relu6",
                 eps: float = 1e-5) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        if expansion != 1:
            self.expand = ConvBNAct(in_channels, hidden, act=act, eps=eps)
        else:
            self.expand = nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size=3, stride=stride,
                                   dilation=dilation, groups=hidden, act=act, eps=eps)
        self.project = ConvBNAct(hidden, out_channels, act="none", eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y
