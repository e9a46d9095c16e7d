"""The ResNet basic block.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import Tuple

from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs (stride on the first) and a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 rates: Tuple[int, int] = (1, 1), shortcut: str = "identity",
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, kernel_size=3, stride=stride,
                               dilation=rates[0], eps=eps)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size=3, dilation=rates[1],
                               act="none", eps=eps)
        if shortcut == "conv":
            self.shortcut = ConvBNAct(in_channels, out_channels, stride=stride, act="none", eps=eps)
        elif shortcut == "subsample":
            self.shortcut = nn.MaxPool2d(1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
