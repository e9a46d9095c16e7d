"""The auxiliary FCN head.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""


from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class AuxHead(nn.Module):
    """Auxiliary FCN head: 3×3 conv → BN → ReLU → dropout → 1×1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, channels, kernel_size=3, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))
