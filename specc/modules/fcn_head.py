"""The FCN head: the convolution torchvision's FCN models put between backbone and classifier.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class FCNHead(nn.Module):
    """FCN head without its classifier: 3×3 conv → BN → ReLU → dropout (the classifier that
    follows is the model's own)."""

    def __init__(self, in_channels: int, channels: int, *, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, channels, kernel_size=3, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.conv(x))
