"""Every shipped spec (specs/**/*.yaml): validates, builds, matches its manifest, scripts, and
round-trips through a TorchScript archive with the eager outputs (docs/conventions.md §7)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from specc.api import build, load_spec
from specc.artifacts import read_torchscript, write_torchscript

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").rglob("*.yaml"))
IDS = [str(p.relative_to(REPO / "specs").with_suffix("")) for p in SPECS]


def test_specs_are_found():
    assert len(SPECS) >= 8
    names = [load_spec(p).spec.name for p in SPECS]
    assert len(set(names)) == len(names), "two specs would build into the same folder"
    assert all(load_spec(p).spec.name == p.stem for p in SPECS)


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_spec_validates_and_builds(path, builds):
    small = builds.small(path)
    built = small.built
    spec = built.doc.spec
    man = built.manifest
    assert man["name"] == spec.name and man["num_classes"] == spec.num_classes
    assert man["input_size"] == [65, 65]
    assert man["output_stride"] == spec.backbone.output_stride == built.schedule.output_stride
    assert man["outputs"] == (["out", "aux"] if spec.aux else ["out"])
    assert set(small.outputs) == set(man["outputs"])
    for out in small.outputs.values():
        assert out.shape == (1, spec.num_classes, 65, 65)
        assert torch.isfinite(out).all()
    state = {k: list(v.shape) for k, v in built.module.state_dict().items()}
    assert man["state_dict"] == state


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_torchscript_round_trip(path, builds, tmp_path):
    """build → script → save → torch.jit.load → the eager module's outputs (eval mode)."""
    small = builds.small(path)
    module = small.built.module
    assert not module.training
    archive = tmp_path / "model.pt"
    write_torchscript(module, archive, small.built.doc)
    assert not module.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(str(archive))
    assert not loaded.training
    _, info = read_torchscript(archive)
    assert info is not None and info["spec_sha256"] == small.built.doc.sha256
    with torch.no_grad():
        got = loaded(small.x)
    assert set(got) == set(small.outputs)
    for key, expected in small.outputs.items():
        torch.testing.assert_close(got[key], expected, rtol=1e-4, atol=1e-4)
    # The archive runs at another size too (only the fixed pooling kernel depends on the crop).
    with torch.no_grad():
        other = loaded(torch.randn(2, 3, 97, 81))
    assert other["out"].shape == (2, small.built.doc.spec.num_classes, 97, 81)


def test_a_fresh_build_is_seeded_by_the_caller(load):
    """Generated modules draw their weights from torch's generator: same seed, same weights."""
    doc = load("specs/deeplabv3plus_mobilenetv2.yaml", "input.size=[65, 65]",
               "backbone.width_multiplier=0.25")
    torch.manual_seed(3)
    a = build(doc).module.state_dict()
    torch.manual_seed(3)
    b = build(doc).module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
