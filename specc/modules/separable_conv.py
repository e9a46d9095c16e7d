"""The atrous separable convolution: depthwise 3×3, optional BN + activation, pointwise 1×1.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""


from torch import Tensor, nn

from specc.modules.conv_bn_act import activation

# ---- EMITTED: everything below goes into model.py verbatim ----

class SeparableConv(nn.Module):
    """Atrous separable conv (DeepLabv3+ §3.2): depthwise 3×3 (dilated) → [BN → act] →
    pointwise 1×1 → BN → act."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 dilation: int = 1, depthwise_norm: bool = True, depthwise_act: str = "relu",
                 act: str = "relu", eps: float = 1e-5) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation,
                                   dilation=dilation, groups=in_channels, bias=False)
        self.bn_depthwise = (nn.BatchNorm2d(in_channels, eps=eps) if depthwise_norm
                             else nn.Identity())
        self.act_depthwise = activation(depthwise_act if depthwise_norm else "none")
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pointwise = nn.BatchNorm2d(out_channels, eps=eps)
        self.act_pointwise = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_depthwise(self.bn_depthwise(self.depthwise(x)))
        return self.act_pointwise(self.bn_pointwise(self.pointwise(x)))
