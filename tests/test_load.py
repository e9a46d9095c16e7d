"""Stage 1, load: YAML with positions, ``extends:``, ``--set`` overrides and the spec hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from specc.api import load_spec
from specc.errors import Location, SpeccError, SpecError
from specc.load import MAX_EXTENDS_DEPTH, canonical_sha256, format_path, load, parse_key

REPO = Path(__file__).resolve().parents[1]
SPEC = """\
name: m            # a comment
num_classes: 21
backbone:
  preset: resnet50
  multi_grid: [1, 2, 4]
aspp:
  rates:
    - 6
    - 12
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, key", [
    ("aspp.rates[1]", ("aspp", "rates", 1)),
    ("name", ("name",)),
    ("a.b[0][2].c", ("a", "b", 0, 2, "c")),
])
def test_key_paths_round_trip(text, key):
    assert parse_key(text) == key
    assert format_path(key) == text


@pytest.mark.parametrize("bad", ["", "a..b", "a.", ".a", "a[x]", "a[1", "1a", "a-b", "a b"])
def test_malformed_key_paths(bad):
    with pytest.raises(ValueError):
        parse_key(bad)


def test_values_and_keys_keep_their_positions(tmp_path):
    raw = load(write(tmp_path / "s.yaml", SPEC))
    src = raw.sources
    f = str(tmp_path / "s.yaml")
    assert raw.data["backbone"]["multi_grid"] == [1, 2, 4]
    assert src.locate(("name",)) == Location(f, 1, 7)
    assert src.locate("backbone.preset") == Location(f, 4, 11)
    assert src.locate("backbone.multi_grid[2]") == Location(f, 5, 22)
    assert src.locate("aspp.rates[1]") == Location(f, 9, 7)
    assert src.locate_key("backbone.multi_grid") == Location(f, 5, 3)
    assert src.locate_key("aspp") == Location(f, 6, 1)
    # Keys that are not in the document fall back to their nearest parent.
    assert src.locate("backbone.output_stride") == src.locate("backbone") == Location(f, 4, 3)
    assert src.locate("nothing.at.all") == Location(f, 1, 1)


def test_extends_merges_deeply_and_keeps_each_value_where_it_was_written(tmp_path):
    base = write(tmp_path / "base.yaml", SPEC + "aux: {tap: backbone.block3}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\nbackbone:\n  "
                                           "output_stride: 8\naspp:\n  rates: [12]\naux: null\n")
    raw = load(child)
    assert raw.data == {
        "name": "child", "num_classes": 21,
        "backbone": {"preset": "resnet50", "multi_grid": [1, 2, 4], "output_stride": 8},
        "aspp": {"rates": [12]},  # lists replace, they do not merge
        "aux": None,  # an explicit null removes a section of the base
    }
    assert "extends" not in raw.data
    assert raw.files == (child, base)
    assert raw.sources.locate("backbone.output_stride") == Location(str(child), 4, 18)
    assert raw.sources.locate("backbone.preset") == Location(str(base), 4, 11)
    assert raw.sources.locate("num_classes") == Location(str(base), 2, 14)
    assert raw.sources.locate("aspp.rates[0]") == Location(str(child), 6, 11)
    assert raw.sources.locate_key("backbone.multi_grid") == Location(str(base), 5, 3)


def test_extends_is_relative_to_the_spec_and_chains(tmp_path):
    write(tmp_path / "bases" / "root.yaml", SPEC)
    write(tmp_path / "bases" / "mid.yaml", "extends: root.yaml\nnum_classes: 5\n")
    leaf = write(tmp_path / "specs" / "leaf.yaml", "extends: ../bases/mid.yaml\nname: leaf\n")
    raw = load(leaf)
    assert (raw.data["name"], raw.data["num_classes"]) == ("leaf", 5)
    assert [p.name for p in raw.files] == ["leaf.yaml", "mid.yaml", "root.yaml"]
    # An error in the root base names the root file.
    write(tmp_path / "bases" / "root.yaml", SPEC.replace("num_classes: 21", "num_classes: x"))
    with pytest.raises(SpeccError) as info:
        load_spec(write(tmp_path / "specs" / "leaf2.yaml", "extends: ../bases/root.yaml\n"))
    assert str(info.value).startswith(str(tmp_path / "specs" / "../bases/root.yaml") + ":2:14: ")


def test_extends_depth_is_bounded(tmp_path):
    write(tmp_path / "s0.yaml", SPEC)
    for i in range(1, MAX_EXTENDS_DEPTH + 2):
        write(tmp_path / f"s{i}.yaml", f"extends: s{i - 1}.yaml\n")
    load(tmp_path / f"s{MAX_EXTENDS_DEPTH - 1}.yaml")
    with pytest.raises(SpecError, match=f"expected at most {MAX_EXTENDS_DEPTH} levels"):
        load(tmp_path / f"s{MAX_EXTENDS_DEPTH + 1}.yaml")


def test_overrides_apply_last_as_yaml_values(tmp_path):
    path = write(tmp_path / "s.yaml", SPEC)
    raw = load(path, ["backbone.output_stride=8", "aspp.rates=[12, 24, 36]", "aspp.rates[0]=3",
                      "input.size=[65, 65]", "decoder.style.conv=separable", "name= other ",
                      "backbone.multi_grid="])
    assert raw.data["backbone"]["output_stride"] == 8
    assert raw.data["aspp"]["rates"] == [3, 24, 36]
    assert raw.data["input"] == {"size": [65, 65]}
    assert raw.data["decoder"] == {"style": {"conv": "separable"}}
    assert raw.data["name"] == "other"
    assert raw.data["backbone"]["multi_grid"] is None  # empty value: null
    where = Location("--set backbone.output_stride=8")
    assert raw.sources.locate("backbone.output_stride") == where
    assert raw.sources.locate("input.size[1]") == Location("--set input.size=[65, 65]")
    assert raw.sources.locate("aspp.rates[1]") == Location("--set aspp.rates=[12, 24, 36]")
    assert raw.sources.locate("backbone.preset") == Location(str(path), 4, 11)


def test_an_override_can_remove_and_restore_sections(tmp_path):
    cascade = REPO / "specs/deeplabv3_resnet101_cascade.yaml"
    assert load(cascade).data["aspp"] is None
    assert load(cascade, ["aspp={rates: [6, 12, 18]}"]).data["aspp"] == {"rates": [6, 12, 18]}
    assert load(cascade, ["aspp.channels=64"]).data["aspp"] == {"channels": 64}


def test_hash_ignores_formatting_but_not_content(tmp_path):
    a = load(write(tmp_path / "a.yaml", SPEC))
    flow = ("# same spec, other layout\n{name: m, num_classes: 21, aspp: {rates: [6, 12]},\n"
            " backbone: {multi_grid: [1, 2, 4], preset: resnet50}}\n")
    b = load(write(tmp_path / "b.yaml", flow))
    assert a.sha256 == b.sha256 == canonical_sha256(a.data)
    c = load(write(tmp_path / "c.yaml", SPEC.replace("- 12", "- 13")))
    assert c.sha256 != a.sha256
    assert load(tmp_path / "a.yaml", ["aspp.rates[1]=13"]).sha256 == c.sha256


def test_resolved_hash_covers_defaults_and_extends():
    """The hash in a build is of the resolved spec: an extends chain and its flat copy agree."""
    os8 = load_spec(REPO / "specs/deeplabv3_resnet101_os8.yaml")
    flat = load_spec(REPO / "specs/deeplabv3_resnet101.yaml",
                     ["name=deeplabv3_resnet101_os8", "backbone.output_stride=8"])
    assert os8.sha256 == flat.sha256
    assert os8.resolved == flat.resolved
    assert os8.resolved["aspp"]["rates"] == [6, 12, 18]  # as written; scaled by derive


def test_safe_yaml_only(tmp_path):
    raw = load(write(tmp_path / "s.yaml", "name: m\nmean: &m [0.5, 0.5, 0.5]\nstd: *m\non: yes\n"))
    assert raw.data["std"] == [0.5, 0.5, 0.5]  # small aliases are fine
    assert raw.data["on"] is True  # keys stay strings (YAML 1.1 'on' is not a boolean key)
    for text in ("a: !!python/object:os.system {}\n", "a: !!binary aGk=\n".replace("binary", "foo"),
                 "a: !custom 3\n"):
        with pytest.raises(SpecError, match="unsupported YAML value"):
            load(write(tmp_path / "t.yaml", text))


def test_files_over_the_size_limit_are_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: m\n" + "# padding\n" * 120_000)
    with pytest.raises(SpecError, match="expected a spec under 1000000 bytes"):
        load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="expected a YAML file, found a directory"):
        load(tmp_path)


def test_every_shipped_spec_loads_with_positions():
    for path in sorted((REPO / "specs").rglob("*.yaml")):
        raw = load(path)
        assert raw.data["name"] == path.stem
        loc = raw.sources.locate("name")
        assert loc.file == str(path) and loc.line >= 1, path


# --------------------------------------------------------------------------------------------
# Renamed keys: old names load under the new ones, with a warning at the place they were written

V3PLUS = SPEC + "decoder:\n  low_level: backbone.layer1\n"


def test_old_key_names_load_as_the_new_ones_and_are_located(tmp_path):
    path = write(tmp_path / "s.yaml", V3PLUS.replace("decoder:\n", "decoder:\n  output_stride: 4\n")
                 + "input:\n  crop: [65, 65]\n")
    raw = load(path)
    assert raw.data["input"] == {"size": [65, 65]}
    assert list(raw.data["decoder"]) == ["low_level_reduction", "low_level"]  # order kept
    assert raw.sources.locate("input.size[1]") == Location(str(path), 14, 14)
    assert [(d.old, d.new, d.location.line) for d in raw.deprecations] == [
        ("input.crop", "input.size", 14), ("decoder.output_stride", "decoder.low_level_reduction", 11)]
    fresh = load(write(tmp_path / "new.yaml", V3PLUS.replace(
        "decoder:\n", "decoder:\n  low_level_reduction: 4\n") + "input:\n  size: [65, 65]\n"))
    assert fresh.deprecations == () and fresh.data == raw.data and fresh.sha256 == raw.sha256


def test_old_key_names_warn_and_build_the_same_network(tmp_path):
    old = load_spec(write(tmp_path / "old.yaml", SPEC + "input: {crop: [65, 65]}\n"))
    new = load_spec(write(tmp_path / "new.yaml", SPEC + "input: {size: [65, 65]}\n"))
    assert old.resolved == new.resolved and old.architecture_sha256 == new.architecture_sha256
    from specc.api import compile_spec
    warnings = compile_spec(old).warnings
    assert any(w.startswith(f"{tmp_path / 'old.yaml'}:10:9: warning: input.crop: renamed to "
                            "input.size") for w in warnings), warnings
    assert not any("renamed" in w for w in compile_spec(new).warnings)


def test_old_key_names_in_bases_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", SPEC + "input: {crop: [97, 97]}\n")
    path = write(tmp_path / "child.yaml", "extends: base.yaml\ninput: {size: [65, 65]}\n")
    raw = load(path)
    assert raw.data["input"] == {"size": [65, 65]}  # the child's new name overrides the base's old
    raw = load(path, ["input.crop=[33, 33]"])
    assert raw.data["input"] == {"size": [33, 33]}
    assert raw.deprecations[-1].location == Location("--set input.crop=[33, 33]")


def test_old_and_new_name_together_is_an_error(tmp_path):
    path = write(tmp_path / "s.yaml", SPEC + "input:\n  crop: [65, 65]\n  size: [33, 33]\n")
    with pytest.raises(SpecError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:11:3: input.crop: expected one of input.crop (its "
                                     "old name) and input.size, found both")


def test_weights_saved_under_old_key_names_keep_their_architecture_hash(tmp_path):
    """A checkpoint or model.pt written before the renaming carries a resolved spec with the old
    names and hashes over them; it reads as the same architecture as today's spec."""
    from specc.artifacts import spec_info_of
    doc = load_spec(write(tmp_path / "s.yaml", V3PLUS + "input: {size: [65, 65]}\n"))
    old_resolved = json.loads(json.dumps(doc.resolved))
    old_resolved["input"] = {"crop" if k == "size" else k: v for k, v in old_resolved["input"].items()}
    old_resolved["decoder"]["output_stride"] = old_resolved["decoder"].pop("low_level_reduction")
    from specc.api import architecture_sha256
    stored = {"name": "m", "sha256": canonical_sha256(old_resolved),
              "arch_sha256": architecture_sha256(old_resolved), "resolved": old_resolved}
    info = spec_info_of(stored)
    assert info["resolved"] == doc.resolved
    assert info["architecture_sha256"] == doc.architecture_sha256
    assert info["spec_sha256"] == doc.sha256
    assert stored["resolved"]["input"] == {k if k != "size" else "crop": v
                                           for k, v in doc.resolved["input"].items()}  # untouched
    from specc.api import Document
    assert Document.from_resolved(old_resolved, tmp_path / "model.pt").resolved == doc.resolved
    damaged = spec_info_of({**stored, "sha256": "0" * 64})
    assert damaged["spec_sha256"] == "0" * 64  # a hash that did not match stays wrong


def test_a_sparse_multi_gigabyte_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(5 * 1024**3)  # sparse: costs no disk, but read_bytes() would need 5 GB
    with pytest.raises(SpecError, match=r"expected a spec under 1000000 bytes, found a file of "
                                        r"5368709120 bytes"):
        load(path)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_are_refused_before_reading(device):
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    with pytest.raises(SpecError, match=f"^{device}: expected a YAML file, found a character "
                                        "device$"):
        load(Path(device))


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match=r"expected a YAML file, found a named pipe \(FIFO\)"):
        load(fifo)  # opening it for reading would block forever without O_NONBLOCK
