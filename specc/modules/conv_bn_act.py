"""The activation helper, and Conv2d → BatchNorm2d → activation: the layer of every block.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from torch import Tensor, nn

# ---- EMITTED: everything below goes into model.py verbatim ----

def activation(name: str) -> nn.Module:
    """The activation layer called ``name``: "relu", "relu6", "hardswish" or "none"."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hardswish":
        return nn.Hardswish()
    return nn.Identity()


class ConvBNAct(nn.Module):
    """Conv2d → BatchNorm2d → activation, padded so that stride 1 keeps the size."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 1,
                 stride: int = 1, dilation: int = 1, groups: int = 1, act: str = "relu",
                 eps: float = 1e-5) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
