"""DeepLab v1/v2's heads: LargeFOV and ASPP-L.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import List

import torch
from torch import Tensor, nn

# ---- EMITTED: everything below goes into model.py verbatim ----

class FCBranch(nn.Module):
    """One DeepLab v1/v2 branch: fc6 (3×3 conv at ``rate``) → ReLU → dropout → fc7 (1×1) →
    ReLU → dropout → fc8 (1×1 classifier); convs with bias, no norm. With ``channels`` 0 the
    branch is fc8 alone, a 3×3 conv at ``rate`` to the classes (DeepLab v2 on ResNet-101)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, rate: int,
                 dropout: float) -> None:
        super().__init__()
        self.hidden = channels > 0
        if self.hidden:
            self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate)
            self.fc7 = nn.Conv2d(channels, channels, 1)
            self.fc8 = nn.Conv2d(channels, num_classes, 1)
        else:
            self.fc6 = nn.Identity()
            self.fc7 = nn.Identity()
            self.fc8 = nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.hidden:
            x = self.dropout(self.relu(self.fc6(x)))
            x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


class FCASPP(nn.Module):
    """One :class:`FCBranch` per rate, their logits summed: one rate is DeepLab v1's LargeFOV,
    rates (6, 12, 18, 24) DeepLab v2's ASPP-L."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, rates: List[int],
                 dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList([
            FCBranch(in_channels, channels, num_classes, rate=rate, dropout=dropout)
            for rate in rates])

    def forward(self, x: Tensor) -> Tensor:
        outs: List[Tensor] = []
        for branch in self.branches:
            outs.append(branch(x))
        return torch.stack(outs, 0).sum(0)
