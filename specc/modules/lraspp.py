"""The Lite R-ASPP head (MobileNetV3 §6.4).

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specc.modules.conv_bn_act import ConvBNAct

# ---- EMITTED: everything below goes into model.py verbatim ----

class LRASPP(nn.Module):
    """Lite R-ASPP: the high-level feature through a 1×1 conv → BN → ReLU, gated per channel by
    a sigmoid of its global average (1×1 conv), resized to the low-level feature; each classified
    by a 1×1 conv and the two logits summed."""

    def __init__(self, low_channels: int, high_channels: int, channels: int, num_classes: int,
                 *, mode: str = "bilinear", align_corners: bool = False,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.mode = mode
        self.align_corners = align_corners
        self.cbr = ConvBNAct(high_channels, channels, eps=eps)
        self.scale = nn.Conv2d(high_channels, channels, 1, bias=False)
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        gate = torch.sigmoid(self.scale(F.adaptive_avg_pool2d(high, 1)))
        x = self.cbr(high) * gate
        if self.mode == "nearest":
            x = F.interpolate(x, size=low.shape[-2:], mode="nearest")
        else:
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear",
                              align_corners=self.align_corners)
        return self.low_classifier(low) + self.high_classifier(x)
