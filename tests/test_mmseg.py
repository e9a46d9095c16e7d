"""specc against MMSegmentation's DeepLabV3 (``ASPPHead``) and DeepLabV3+
(``DepthwiseSeparableASPPHead``), each with an ``FCNHead`` auxiliary head, on ``ResNetV1c`` and
``ResNetV1d`` with ``contract_dilation``, at d8 and d16.

The segmentors are built from config dicts with random weights and batch-norm statistics (nothing
is downloaded), saved as an MMSegmentation checkpoint file (weights under ``state_dict``, beside
``meta``) and brought over with ``specc import-weights --from mmseg``; outputs are compared in
eval mode at an odd input size. Importing mmseg imports mmcv's compiled operators, which
``mmcv-lite`` does not have and these models do not use: :func:`mmcv_ext_placeholder` stands in.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_equivalence import compare, import_weights, n_params, randomize

from specc.api import build, load_spec
from specc.artifacts import load_weights, read_weights

ROOT = Path(__file__).resolve().parents[1]
V3 = ROOT / "specs/zoo/mmseg_deeplabv3_r50_d8.yaml"
V3PLUS = ROOT / "specs/zoo/mmseg_deeplabv3plus_r50_d8.yaml"
SIZE = (65, 73)
CLASSES = 5
#: Narrow heads keep the test fast; the spec follows with --set.
CHANNELS, AUX_CHANNELS = 64, 32


class _MissingOperators(types.ModuleType):
    """Stands in for ``mmcv._ext``: any operator looked up exists, and fails if it is called."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"mmcv's compiled operator {name} is not installed")
        return missing


def mmcv_ext_placeholder() -> None:
    """Put a placeholder for mmcv's compiled extension in ``sys.modules`` unless it is there."""
    try:
        import mmcv._ext  # noqa: F401
    except ImportError:
        sys.modules["mmcv._ext"] = _MissingOperators("mmcv._ext")


@pytest.fixture(scope="module")
def segmentors() -> Any:
    """MMSegmentation's model registry, every module registered."""
    pytest.importorskip("mmcv")
    mmcv_ext_placeholder()
    pytest.importorskip("mmseg")
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return MODELS


def config(plus: bool, backbone: str, d16: bool) -> dict[str, Any]:
    """The segmentor's config: MMSegmentation's deeplabv3(plus)_r50-d8 / -d16 with narrow heads."""
    norm = {"type": "BN", "requires_grad": True}
    head: dict[str, Any] = ({"type": "DepthwiseSeparableASPPHead", "c1_in_channels": 256,
                             "c1_channels": 48} if plus else {"type": "ASPPHead"})
    head.update(in_channels=2048, in_index=3, channels=CHANNELS,
                dilations=(1, 6, 12, 18) if d16 else (1, 12, 24, 36), dropout_ratio=0.1,
                num_classes=CLASSES, norm_cfg=norm, align_corners=False)
    return {
        "type": "EncoderDecoder",
        "backbone": {"type": backbone, "depth": 50, "num_stages": 4, "out_indices": (0, 1, 2, 3),
                     "dilations": (1, 1, 1, 2) if d16 else (1, 1, 2, 4),
                     "strides": (1, 2, 2, 1) if d16 else (1, 2, 1, 1), "norm_cfg": norm,
                     "norm_eval": False, "style": "pytorch", "contract_dilation": True},
        "decode_head": head,
        "auxiliary_head": {"type": "FCNHead", "in_channels": 1024, "in_index": 2,
                           "channels": AUX_CHANNELS, "num_convs": 1, "concat_input": False,
                           "dropout_ratio": 0.1, "num_classes": CLASSES, "norm_cfg": norm,
                           "align_corners": False},
        "train_cfg": {}, "test_cfg": {"mode": "whole"},
    }


class _Forward(torch.nn.Module):
    """The segmentor's tensor forward, for :func:`randomize`'s calibration batch."""

    def __init__(self, segmentor: torch.nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> Any:
        return self.segmentor._forward(x)


#: id → (DeepLabV3+?, backbone type, d16?)
CASES = {
    "v3-v1c-d8": (False, "ResNetV1c", False),
    "v3-v1d-d8": (False, "ResNetV1d", False),
    "v3-v1c-d16": (False, "ResNetV1c", True),
    "v3plus-v1c-d8": (True, "ResNetV1c", False),
    "v3plus-v1d-d16": (True, "ResNetV1d", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mmseg_equivalence(case: str, segmentors: Any, tmp_path: Path) -> None:
    plus, backbone, d16 = CASES[case]
    ref = segmentors.build(config(plus, backbone, d16))
    randomize(_Forward(ref), seed=len(case), size=SIZE)
    ref.eval()
    src = tmp_path / "iter_40000.pth"  # a checkpoint as MMSegmentation writes one
    torch.save({"meta": {"mmseg_version": "1.2.2", "iter": 40000},
                "state_dict": ref.state_dict()}, src)
    spec = V3PLUS if plus else V3
    sets = [f"num_classes={CLASSES}", f"aspp.channels={CHANNELS}",
            f"aspp.projection.channels={CHANNELS}", f"aux.channels={AUX_CHANNELS}"]
    sets += [f"decoder.channels={CHANNELS}"] if plus else []
    sets += ["backbone.downsample=avgpool"] if backbone == "ResNetV1d" else []
    sets += ["backbone.output_stride=16", "aspp.rates=[6, 12, 18]"] if d16 else []
    out = import_weights(spec, src, "mmseg", tmp_path / "w.safetensors",
                         *[a for s in sets for a in ("--set", s)])
    module = build(load_spec(spec, sets)).module
    assert n_params(module) == n_params(ref)
    load_weights(module, read_weights(out))
    module.eval()
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref.encode_decode(x, [{"img_shape": SIZE}] * 2)
        aux = F.interpolate(ref.auxiliary_head(ref.extract_feat(x)), size=SIZE,
                            mode="bilinear", align_corners=False)
        got = module(x)
    compare(f"mmseg {case} out", got["out"], expected)
    compare(f"mmseg {case} aux", got["aux"], aux)
