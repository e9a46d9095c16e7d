"""The building blocks in specc/modules: plain modules, imported and run as they are, and the
text that generated code copies from them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import specc.graph  # noqa: F401  (registers every block kind)
from specc.emit import EMITTED, module_source, used_modules
from specc.modules import SHARED
from specc.plan import BLOCKS

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "specc/modules").glob("*.py")
                 if p.stem != "__init__")


def test_every_kind_names_an_existing_module():
    owned = {k.code for k in BLOCKS.values() if k.code is not None}
    assert owned | set(SHARED) == set(MODULES)
    assert not owned & set(SHARED)


@pytest.mark.parametrize("name", MODULES)
def test_emitted_text_is_the_module_below_its_marker(name):
    module = importlib.import_module(f"specc.modules.{name}")
    text = Path(module.__file__).read_text(encoding="utf-8")
    assert text.count(EMITTED) == 1
    body = module_source(name)
    assert text.endswith(body) and body.startswith("\n\n")
    # Every class and function the emitted part defines is one the module really has.
    defined = [line.split()[1].split("(")[0].rstrip(":") for line in body.splitlines()
               if line.startswith(("class ", "def "))]
    assert defined and all(hasattr(module, d) for d in defined)


def _scripted(module: torch.nn.Module) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(module.eval())


def test_bottleneck_strides_dilates_and_taps():
    from specc.modules.bottleneck import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(8, 4, 16, stride=2, shortcut="conv", tap=2).eval()
    x = torch.randn(2, 8, 9, 11)
    out, tapped = block.forward_tap(x)
    assert out.shape == (2, 16, 5, 6) and tapped.shape == (2, 4, 5, 6)
    assert torch.equal(tapped, block.conv2(block.conv1(x)))
    assert torch.allclose(_scripted(block)(x), block(x))
    dilated = Bottleneck(16, 4, 16, dilation=4).eval()
    assert dilated.conv2.conv.dilation == (4, 4) and dilated(out).shape == out.shape


def test_xception_unit_pre_activation_and_identity_shortcut():
    from specc.modules.xception import XceptionUnit

    torch.manual_seed(0)
    unit = XceptionUnit(8, (8, 8, 8), shortcut="identity", rates=(1, 2, 4), tap=1).eval()
    x = torch.randn(1, 8, 7, 7)
    out, tapped = unit.forward_tap(x)
    assert torch.equal(tapped, unit.sep1(torch.relu(x)))
    y = unit.sep3(torch.relu(unit.sep2(torch.relu(tapped))))
    assert torch.allclose(out, y + x)
    assert torch.allclose(_scripted(unit)(x), out)


def test_inverted_residual_keeps_the_residual_only_when_shapes_match():
    from specc.modules.inverted_residual import InvertedResidual

    torch.manual_seed(0)
    same = InvertedResidual(8, 8, expansion=2).eval()
    x = torch.randn(1, 8, 6, 6)
    assert same.residual
    assert torch.allclose(same(x), x + same.project(same.depthwise(same.expand(x))))
    down = InvertedResidual(8, 16, stride=2).eval()
    assert not down.residual and down(x).shape == (1, 16, 3, 3)
    assert torch.allclose(_scripted(down)(x), down(x))


def test_aspp_pools_globally_or_with_a_clamped_kernel():
    from specc.modules.aspp import ASPP

    torch.manual_seed(0)
    kwargs = dict(rates=[1, 2], separable=True, depthwise_norm=True, pooling=True,
                  align_corners=False, projection_channels=8, projection_kernel=1, dropout=0.1)
    adaptive = ASPP(4, 8, pool_kernel=[], **kwargs).eval()
    fixed = ASPP(4, 8, pool_kernel=[50, 50], **kwargs).eval()  # larger than the map: clamped
    fixed.load_state_dict(adaptive.state_dict())
    x = torch.randn(1, 4, 5, 7)
    assert adaptive(x).shape == (1, 8, 5, 7)
    assert torch.allclose(adaptive(x), fixed(x), atol=1e-6)
    assert torch.allclose(_scripted(adaptive)(x), adaptive(x))


def test_decoder_and_aux_head_shapes():
    from specc.modules.aux_head import AuxHead
    from specc.modules.decoder import Decoder

    dec = Decoder(16, 8, projection=4, convs=2, channels=12, separable=False,
                  depthwise_norm=True, mode="bilinear", align_corners=True).eval()
    y = dec(torch.randn(1, 16, 3, 3), torch.randn(1, 8, 9, 9))
    assert y.shape == (1, 12, 9, 9)
    aux = AuxHead(8, 6, 3, dropout=0.1).eval()
    assert aux(torch.randn(1, 8, 4, 4)).shape == (1, 3, 4, 4)


def test_used_modules_follow_the_network(tmp_path):
    from specc.api import compile_spec, load_spec

    root = Path(__file__).resolve().parents[1] / "specs"
    resnet = compile_spec(load_spec(root / "deeplabv3_resnet101.yaml")).network
    xception = compile_spec(load_spec(root / "deeplabv3plus_xception.yaml")).network
    assert used_modules(resnet) == ["conv_bn_act", "conv_norm_act", "bottleneck", "aspp"]
    assert used_modules(xception) == ["conv_bn_act", "separable_conv", "conv_norm_act",
                                      "xception", "aspp", "decoder"]
