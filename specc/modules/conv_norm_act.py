"""A 1×1 Conv2d → GroupNorm or no norm → ReLU: a layer that trains at any batch size.

The image-pooling branch sees one value per channel per image, so its BatchNorm cannot train on
one image per process; ``aspp.image_pooling.norm: group | none`` puts this layer there instead.
Plain PyTorch, importable and tested as it is; `specc.emit` copies everything below the
``EMITTED`` line into the generated model.py (whose header has the imports above).
"""

from torch import Tensor, nn

# ---- EMITTED: everything below goes into model.py verbatim ----

class ConvNormAct(nn.Module):
    """1×1 Conv2d → GroupNorm (``norm="group"``, ``groups`` groups) or nothing (``norm="none"``:
    the conv has a bias instead) → ReLU. Neither needs more than one value per channel."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, groups: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none")
        self.norm = (nn.GroupNorm(groups, out_channels, eps=eps) if norm == "group"
                     else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))
