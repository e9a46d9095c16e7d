"""The VGG unit of DeepLab v1/v2's VGG-16.

Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from typing import List

from torch import Tensor, nn

# ---- EMITTED: everything below goes into model.py verbatim ----

class VGGUnit(nn.Module):
    """A VGG stage: 3×3 convs (bias, ReLU, no norm) at ``rates``, then a 3×3 max-pool padded by
    1 with ``stride`` (DeepLab's pools; stride 1 where the output stride removed it)."""

    def __init__(self, in_channels: int, out_channels: int, *, rates: List[int],
                 stride: int = 1, pool: bool = True) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for i, rate in enumerate(rates):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                                    padding=rate, dilation=rate))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        if pool:
            self.pool = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            self.pool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.convs(x))
