"""The error table: malformed specs and the exact message each must produce (docs/conventions.md §1, §6).

Every message names the file, line and column, the key path, what was expected and what was
found. Each case is checked through the Python API and through the command line (``specc
validate`` and ``specc build``: exit code 2, the message alone on stderr, no traceback, nothing
written).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from specc.api import compile_spec, load_spec
from specc.errors import SpeccError

BASE = "name: m\nnum_classes: 21\nbackbone:\n  preset: resnet50\n"
XCEPTION = "name: m\nnum_classes: 21\nbackbone:\n  preset: xception65\n"
LOL = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"
UNIT_KEYS = "name, stride, repeat, type, channels, mid_channels"
BACKBONE_KEYS = ("preset, timm, stem, stages, width_multiplier, activation, norm, output_stride, "
                 "multi_grid, multi_grid_mode, stride_placement, destrided_rate, cascade, "
                 "downsample")
IDENTIFIER = ("a lower-case identifier (a letter, then letters, digits or '_'; at most 64 "
              "characters)")
NODE_NAME = "a node name such as backbone.block1.unit2 (lower-case identifiers joined by '.')"
STAGES = ("name: m\nnum_classes: 21\nbackbone:\n  stem: {{convs: [{{channels: 8, stride: 2}}]}}\n"
          "  output_stride: 2\n  stages:\n    - name: {stage}\n      units: [{{type: basic, "
          "channels: 8}}]\naspp: null\n")
STRIDE4 = ("backbone.entry1, backbone.entry1.unit1, backbone.entry1.unit1.sep3, "
           "backbone.entry2.unit1.sep1, backbone.entry2.unit1.sep2")


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@dataclass
class Case:
    id: str
    #: File name → content; the spec given to the command is ``spec.yaml``.
    files: dict[str, str | bytes]
    expected: str
    overrides: list[str] = field(default_factory=list)


CASES = [
    Case("empty file", {"spec.yaml": ""},
         "spec.yaml: the file is empty; expected a mapping with at least name, num_classes and "
         "backbone"),
    Case("only comments", {"spec.yaml": "# a spec\n\n"},
         "spec.yaml: the file is empty; expected a mapping with at least name, num_classes and "
         "backbone"),
    Case("tab indentation", {"spec.yaml": "name: m\nbackbone:\n\tpreset: resnet50\n"},
         "spec.yaml:3:1: not valid YAML: found character '\\t' that cannot start any token "
         "(indent with spaces; YAML does not allow tabs)"),
    Case("bad indentation", {"spec.yaml": "name: m\nbackbone:\n  preset: resnet50\n "
                                          "output_stride: 8\n"},
         "spec.yaml:4:2: not valid YAML: expected <block end>, but found '<block mapping start>' "
         "(check the indentation: the keys of one mapping line up)"),
    Case("unclosed flow list", {"spec.yaml": "name: m\naspp:\n  rates: [6, 12\n"},
         "spec.yaml:4:1: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    Case("binary bytes", {"spec.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
         "spec.yaml:3:1: expected YAML text, found binary data (a NUL byte)"),
    Case("not UTF-8", {"spec.yaml": "name: m\n# café\n".encode("latin-1")},
         "spec.yaml:2:6: expected UTF-8 text, found the byte 0xe9, which is not UTF-8 (save the "
         "file as UTF-8)"),
    Case("top-level list", {"spec.yaml": "- name: m\n- num_classes: 21\n"},
         "spec.yaml:1:1: expected a mapping at the top level, found a list"),
    Case("top-level string", {"spec.yaml": "resnet50\n"},
         "spec.yaml:1:1: expected a mapping at the top level, found the string 'resnet50'"),
    Case("unknown key", {"spec.yaml": BASE + "  output_strid: 8\n"},
         "spec.yaml:5:3: backbone.output_strid: unknown key 'output_strid' (did you mean "
         f"'output_stride'?); expected one of {BACKBONE_KEYS}"),
    Case("unknown key in a flow mapping", {"spec.yaml": BASE + "aspp: {rates: [6], ratez: 1}\n"},
         "spec.yaml:5:20: aspp.ratez: unknown key 'ratez' (did you mean 'rates'?); expected one "
         "of channels, rates, rates_output_stride, style, image_pooling, projection, "
         "extra_conv"),
    Case("unknown key in a unit", {"spec.yaml": STAGES.format(stage="s1").replace(
        "channels: 8}]", "channels: 8, mid_channels: 2}]")},
         "spec.yaml:8:42: backbone.stages[0].units[0].mid_channels: unknown key "
         "'mid_channels' (did you mean 'channels'?); expected one of name, stride, repeat, "
         "type, channels"),
    Case("string for an integer", {"spec.yaml": "name: m\nnum_classes: twenty\nbackbone:\n  "
                                                "preset: resnet50\n"},
         "spec.yaml:2:14: num_classes: expected an integer, found 'twenty'"),
    Case("fraction for an integer", {"spec.yaml": "name: m\nnum_classes: 2.5\nbackbone:\n  "
                                                  "preset: resnet50\n"},
         "spec.yaml:2:14: num_classes: expected an integer, found 2.5"),
    Case("string for a mapping", {"spec.yaml": "name: m\nnum_classes: 21\nbackbone: resnet50\n"},
         "spec.yaml:3:11: backbone: expected a mapping, found 'resnet50'"),
    Case("scalar for a list", {"spec.yaml": BASE + "  multi_grid: 2\n"},
         "spec.yaml:5:15: backbone.multi_grid: expected a list, found 2"),
    Case("negative and zero rates", {"spec.yaml": BASE + "aspp:\n  rates: [6, -12, 0]\n"},
         "spec.yaml:6:14: aspp.rates[1]: expected a number greater than 0, found -12\n"
         "spec.yaml:6:19: aspp.rates[2]: expected a number greater than 0, found 0"),
    Case("zero classes", {"spec.yaml": BASE.replace("21", "0")},
         "spec.yaml:2:14: num_classes: expected a number greater than 0, found 0"),
    Case("dropout of 1", {"spec.yaml": BASE + "aspp:\n  projection: {dropout: 1.0}\n"},
         "spec.yaml:6:25: aspp.projection.dropout: expected a number less than 1, found 1.0"),
    Case("crop of three values", {"spec.yaml": BASE + "input:\n  size: [513, 513, 3]\n"},
         "spec.yaml:6:9: input.size: expected exactly 2 items, found a list of 3"),
    Case("crop of one value", {"spec.yaml": BASE + "input:\n  size: [513]\n"},
         "spec.yaml:6:9: input.size: expected exactly 2 items, found a list of 1"),
    Case("no stages", {"spec.yaml": STAGES.format(stage="s1").replace(
        "  stages:\n    - name: s1\n      units: [{type: basic, channels: 8}]\n",
        "  stages: []\n")},
         "spec.yaml:6:11: backbone.stages: expected at least one stage, found an empty list"),
    Case("named unit that repeats", {"spec.yaml": STAGES.format(stage="s1").replace(
        "channels: 8}]", "channels: 8, name: u, repeat: 2}]")},
         "spec.yaml:8:48: backbone.stages[0].units[0].name: expected repeat: 1 for a named unit "
         "(a name is one unit's), found repeat: 2; drop the name or the repeat"),
    Case("two units with one name", {"spec.yaml": STAGES.format(stage="s1").replace(
        "channels: 8}]", "channels: 8}, {type: basic, channels: 8, name: unit1}]")},
         "spec.yaml:8:14: backbone.stages[0].units: expected unique unit names in stage 's1', "
         "found unit1 more than once"),
    Case("unknown preset", {"spec.yaml": BASE.replace("resnet50", "resnet51")},
         "spec.yaml:4:11: backbone.preset: expected 'resnet18', 'resnet34', 'resnet50', "
         "'resnet101', 'resnet152', 'xception41', 'xception65', 'xception71', 'mobilenetv2', "
         "'mobilenetv3_large', 'vgg16', 'resnext50_32x4d' or 'resnext101_32x8d', "
         "found 'resnet51'"),
    Case("unknown stem (a union)", {"spec.yaml": BASE + "  stem: conv9\n"},
         "spec.yaml:5:9: backbone.stem: expected 'conv7', 'deep' or a mapping, found 'conv9'"),
    Case("explicit stem with an even kernel", {"spec.yaml": BASE + "  stem: {convs: [{channels: "
                                                                   "8, kernel: 4}]}\n"},
         "spec.yaml:5:40: backbone.stem.convs[0].kernel: expected an odd kernel size, found 4"),
    Case("unknown unit type", {"spec.yaml": STAGES.format(stage="s1").replace("basic", "dense")},
         "spec.yaml:8:22: backbone.stages[0].units[0].type: expected 'basic', 'bottleneck', "
         "'xception', 'inverted_residual', 'mobilenetv3', 'conv_layer' or 'vgg', found 'dense'"),
    Case("unit without a type", {"spec.yaml": STAGES.format(stage="s1").replace("type: basic, ",
                                                                                "")},
         "spec.yaml:8:15: backbone.stages[0].units[0]: expected a 'type' key ('basic', "
         "'bottleneck', 'xception', 'inverted_residual', 'mobilenetv3', 'conv_layer' or 'vgg'), "
         "found a mapping without one"),
    Case("missing name", {"spec.yaml": "num_classes: 21\nbackbone:\n  preset: resnet50\n"},
         "spec.yaml:1:1: name: required key is missing (model name; also the output folder and "
         "class prefix)"),
    Case("missing nested key", {"spec.yaml": BASE + "decoder:\n  projection: 48\n"},
         "spec.yaml:6:3: decoder.low_level: required key is missing (graph node whose output is "
         "the low-level feature)"),
    Case("missing unit key", {"spec.yaml": STAGES.format(stage="s1").replace("basic", "bottleneck")},
         "spec.yaml:8:15: backbone.stages[0].units[0].mid_channels: required key is missing "
         "(channels of the 1×1 reduction and the 3×3 conv)"),
    Case("neither preset nor stages", {"spec.yaml": "name: m\nnum_classes: 21\nbackbone:\n  "
                                                    "output_stride: 16\n"},
         "spec.yaml:4:3: backbone: expected a preset (one of resnet18, resnet34, resnet50, "
         "resnet101, resnet152, xception41, xception65, xception71, mobilenetv2, "
         "mobilenetv3_large, vgg16, resnext50_32x4d, resnext101_32x8d), explicit stages or a "
         "timm model name"),
    Case("separable extra conv that is not 3×3", {"spec.yaml": BASE + "aspp:\n  extra_conv: "
                                                  "{kernel: 5, style: {conv: separable}}\n"},
         "spec.yaml:6:15: aspp.extra_conv: a separable extra conv is 3×3: expected kernel 3, "
         "found 5"),
    Case("groups that do not divide mid_channels", {"spec.yaml": STAGES.format(stage="s1").replace(
        "type: basic, channels: 8", "type: bottleneck, channels: 8, mid_channels: 6, groups: 4")},
         "spec.yaml:8:15: backbone.stages[0].units[0]: groups must divide mid_channels: found "
         "groups 4, mid_channels 6"),
    Case("avgpool downsample on a basic-block preset", {"spec.yaml": BASE.replace(
        "resnet50", "resnet34") + "  downsample: avgpool\n"},
         "spec.yaml:4:3: backbone: downsample: avgpool applies to bottleneck ResNet presets only "
         "(resnet50, resnet101, resnet152, resnext50_32x4d, resnext101_32x8d)"),
    Case("decoder tap that does not exist", {"spec.yaml": XCEPTION + "decoder:\n  low_level: "
                                                                     "backbone.entry9\n"},
         f"spec.yaml:6:14: decoder.low_level: no node 'backbone.entry9'; nodes at 1/4 of the input: "
         f"{STRIDE4}"),
    Case("decoder tap at the wrong stride", {"spec.yaml": XCEPTION + "decoder:\n  low_level: "
                                                                     "backbone.entry2\n"},
         "spec.yaml:6:14: decoder.low_level: 'backbone.entry2' is at 1/8 of the input, but the "
         f"decoder expects 1/4 (decoder.low_level_reduction); nodes at 1/4: {STRIDE4}"),
    Case("FCN head beside ASPP", {"spec.yaml": BASE + "fcn: {channels: 512}\n"},
         "spec.yaml:5:6: fcn: expected aspp: null with an FCN head (it takes ASPP's place), "
         "found an aspp section"),
    Case("Lite R-ASPP beside ASPP", {"spec.yaml": BASE + "lraspp: {low_level: backbone.block1}\n"},
         "spec.yaml:5:9: lraspp: expected aspp: null and no fcn or decoder with a Lite R-ASPP "
         "head (it makes the logits itself), found aspp"),
    Case("DeepLab v1/v2 head beside ASPP", {"spec.yaml": BASE + "fc_aspp: {rates: [12]}\n"},
         "spec.yaml:5:10: fc_aspp: expected aspp: null and no fcn, lraspp or decoder with fc_aspp "
         "(it makes the logits itself), found aspp"),
    Case("multi-grid length mismatch", {"spec.yaml": BASE + "  multi_grid: [1, 2]\n"},
         "spec.yaml:5:15: backbone.multi_grid: expected 3 rates (the last stage 'block4' has 3 "
         "units), found 2: [1, 2]"),
    Case("unreachable output stride", {"spec.yaml": BASE + "  output_stride: 12\n"},
         "spec.yaml:5:18: backbone.output_stride: expected an output stride this backbone "
         "reaches (4, 8, 16 or 32), found 12"),
    Case("output stride 64 without a cascade", {"spec.yaml": BASE + "  output_stride: 64\n"},
         "spec.yaml:5:18: backbone.output_stride: expected an output stride this backbone "
         "reaches (4, 8, 16 or 32), found 64"),
    Case("ASPP rate that does not scale", {"spec.yaml": BASE + "  output_stride: 32\naspp:\n  "
                                                               "rates: [6, 12, 15]\n"},
         "spec.yaml:7:18: aspp.rates[2]: expected a rate that scales to a whole number ≥ 1 at "
         "output stride 32, found 15: written for output stride 16, it scales to 7.5"),
    Case("extends a missing file", {"spec.yaml": "extends: base.yaml\nname: m\n"},
         "spec.yaml:1:10: extends: expected a spec file next to spec.yaml, found no file "
         "'base.yaml'"),
    Case("extends a folder", {"spec.yaml": "extends: .\nname: m\n"},
         "spec.yaml:1:10: extends: expected a spec file next to spec.yaml, found the folder '.'"),
    Case("extends a folder by its absolute path", {"spec.yaml": "extends: /\nname: m\n"},
         "spec.yaml:1:10: extends: expected a spec file, found the folder '/'"),
    Case("extends a device", {"spec.yaml": "extends: /dev/null\nname: m\n"},
         "spec.yaml:1:10: extends: expected a spec file, found a character device '/dev/null'"),
    Case("extends a list", {"spec.yaml": "extends: [a.yaml]\nname: m\n"},
         "spec.yaml:1:10: extends: expected a file name, found a list"),
    Case("extends cycle", {"spec.yaml": "extends: a.yaml\nname: m\n",
                           "a.yaml": "extends: b.yaml\nnum_classes: 2\n",
                           "b.yaml": "# b\nextends: a.yaml\nbackbone: {preset: resnet50}\n"},
         "b.yaml:2:10: extends: expected a chain of bases that ends, found a cycle: spec.yaml → "
         "a.yaml → b.yaml → a.yaml"),
    Case("extends itself", {"spec.yaml": "name: m\nextends: spec.yaml\n"},
         "spec.yaml:2:10: extends: expected a chain of bases that ends, found a cycle: spec.yaml "
         "→ spec.yaml"),
    Case("error in a base file", {"spec.yaml": "extends: base.yaml\nname: m\n",
                                  "base.yaml": BASE + "  output_stride: 7\n"},
         "base.yaml:5:18: backbone.output_stride: expected an output stride this backbone "
         "reaches (4, 8, 16 or 32), found 7"),
    Case("billion laughs", {"spec.yaml": LOL},
         "spec.yaml:1:10: the document expands to more than 50000 values (aliases?); a spec is "
         "expected to be small"),
    Case("deep flow nesting", {"spec.yaml": "a: " + "[" * 100_000 + "]" * 100_000 + "\n"},
         "spec.yaml:1:68: not valid as a spec: expected at most 64 nested lists or mappings, "
         "found more"),
    Case("deep block nesting", {"spec.yaml": "- " * 1500 + "x\n"},
         "spec.yaml: not valid as a spec: the document nests too deeply"),
    Case("duplicate key", {"spec.yaml": BASE + "  preset: resnet101\n"},
         "spec.yaml:5:3: backbone.preset: duplicate key 'preset' (first written at line 4, "
         "column 3)"),
    Case("YAML merge key", {"spec.yaml": "name: m\nnum_classes: 21\nbase: &b {preset: resnet50}\n"
                                         "backbone:\n  <<: *b\n  output_stride: 8\n"},
         "spec.yaml:5:3: YAML merge keys ('<<') are not supported; use extends:"),
    Case("python object tag", {"spec.yaml": "name: !!python/object/apply:os.system [echo hi]\n"},
         "spec.yaml:1:7: unsupported YAML value: expected a plain mapping or list, found the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'"),
    Case("python name tag", {"spec.yaml": "num_classes: 2\nname: !!python/name:os.system ''\n"},
         "spec.yaml:2:7: unsupported YAML value: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/name:os.system'"),
    Case("--set with a malformed path", {"spec.yaml": BASE},
         "--set backbone..output_stride=8: expected a key path such as aspp.rates[1], found "
         "'backbone..output_stride'", ["backbone..output_stride=8"]),
    Case("--set without a value", {"spec.yaml": BASE},
         "--set backbone.output_stride: expected key.path=value, found 'backbone.output_stride'",
         ["backbone.output_stride"]),
    Case("--set extends", {"spec.yaml": BASE},
         "--set extends=other.yaml: extends: expected a key that --set can change; extends is "
         "followed when the spec file is read, before --set applies: write a spec file that "
         "extends the other one instead", ["extends=other.yaml"]),
    Case("--set through a scalar", {"spec.yaml": BASE},
         "--set name.first=x: name: expected a mapping to set 'first' in, found the string 'm'",
         ["name.first=x"]),
    Case("--set past the end of a list", {"spec.yaml": BASE + "aspp: {rates: [6, 12, 18]}\n"},
         "--set aspp.rates[3]=24: aspp.rates: expected an index below 3, found [3] into a list "
         "of 3", ["aspp.rates[3]=24"]),
    Case("--set of a value that is not YAML", {"spec.yaml": BASE},
         "--set aspp.rates=[6, 12: aspp.rates: not valid YAML: expected ',' or ']', but got "
         "'<stream end>'", ["aspp.rates=[6, 12"]),
    Case("--set of an invalid value", {"spec.yaml": BASE},
         "--set backbone.output_stride=abc: backbone.output_stride: expected an integer, found "
         "'abc'", ["backbone.output_stride=abc"]),
    Case("--set of an unknown key", {"spec.yaml": BASE},
         f"--set backbone.bogus=1: backbone.bogus: unknown key 'bogus'; expected one of "
         f"{BACKBONE_KEYS}", ["backbone.bogus=1"]),
    Case("--set of an unreachable output stride", {"spec.yaml": BASE},
         "--set backbone.output_stride=12: backbone.output_stride: expected an output stride "
         "this backbone reaches (4, 8, 16 or 32), found 12", ["backbone.output_stride=12"]),
    Case("name with code in it", {"spec.yaml": BASE.replace("name: m", 'name: "x; import os"')},
         f"spec.yaml:1:7: name: expected {IDENTIFIER}, found 'x; import os'"),
    Case("name that climbs out of the output folder", {"spec.yaml": BASE.replace(
        "name: m", "name: ../../x")},
         f"spec.yaml:1:7: name: expected {IDENTIFIER}, found '../../x'"),
    Case("name that is a keyword", {"spec.yaml": BASE.replace("name: m", "name: class")},
         "spec.yaml:1:7: name: 'class' is a Python keyword"),
    Case("stage name with a dot", {"spec.yaml": STAGES.format(stage="s1.x")},
         f"spec.yaml:7:13: backbone.stages[0].name: expected {IDENTIFIER}, found 's1.x'"),
    Case("stage name with a quote", {"spec.yaml": STAGES.format(stage="\"s1'\"")},
         f"spec.yaml:7:13: backbone.stages[0].name: expected {IDENTIFIER}, found \"s1'\""),
    Case("stage named like a module attribute", {"spec.yaml": STAGES.format(stage="forward")},
         "spec.yaml:7:13: backbone.stages[0].name: stage name 'forward' is reserved (a Python "
         "keyword or an nn.Module attribute); choose another name"),
    Case("decoder tap with a quote", {"spec.yaml": XCEPTION + "decoder:\n  low_level: "
                                                              "\"backbone.entry2'); import os #\"\n"},
         f"spec.yaml:6:14: decoder.low_level: expected {NODE_NAME}, found \"backbone.entry2'); "
         "import os #\""),
    # Bounds: values no network can have are refused in validation, before anything is built.
    Case("classes in the billions", {"spec.yaml": BASE},
         "--set num_classes=3000000000: num_classes: expected a number of at most 65535, found "
         "3000000000", ["num_classes=3000000000"]),
    Case("channels past the bound", {"spec.yaml": BASE + "aspp: {channels: 100000}\n"},
         "spec.yaml:5:18: aspp.channels: expected a number of at most 16384, found 100000"),
    Case("a rate in the billions", {"spec.yaml": BASE + "aspp: {rates: [6, 12, 1000000000]}\n"},
         "spec.yaml:5:23: aspp.rates[2]: expected a number of at most 16384, found 1000000000"),
    Case("an input size in the billions", {"spec.yaml": BASE + "input: {size: [513, 1000000000]}\n"},
         "spec.yaml:5:21: input.size[1]: expected a number of at most 16384, found 1000000000"),
    Case("a zero training crop", {"spec.yaml": BASE + "data: {crop: [0, 0]}\n"},
         "spec.yaml:5:15: data.crop[0]: expected a number greater than 0, found 0\n"
         "spec.yaml:5:18: data.crop[1]: expected a number greater than 0, found 0"),
    Case("a kernel past the bound", {"spec.yaml": BASE + "aspp: {projection: {kernel: 101}}\n"},
         "spec.yaml:5:29: aspp.projection.kernel: expected a number of at most 63, found 101"),
    Case("a batch in the hundred millions", {"spec.yaml": BASE + "train: {batch_size: 100000000}\n"},
         "spec.yaml:5:21: train.batch_size: expected a number of at most 10000000, found 100000000"),
    Case("an ignore label the data readers never write", {"spec.yaml": BASE + "train: {ignore_index: 0}\n"},
         "spec.yaml:5:23: train.ignore_index: expected 255, found 0: every data reader marks "
         "unlabelled pixels 255 (a folder data set's masks hold 255 there; the VOC, Cityscapes "
         "and ADE20K readers map their void labels to it), so no other value would be skipped"),
    Case("an infinite learning rate", {"spec.yaml": BASE + "train: {lr: .inf}\n"},
         "spec.yaml:5:13: train.lr: expected a finite number, found inf"),
    Case("a mean on the 0..255 scale", {"spec.yaml": BASE + "input: {mean: [123.675, 116.28, "
                                                            "103.53]}\n"},
         "spec.yaml:5:15: input.mean: expected values in 0..1 (images are scaled to [0, 1]), "
         "found [123.675, 116.28, 103.53]; a mean on the 0..255 scale? divide it by 255"),
    Case("a std on the 0..255 scale", {"spec.yaml": BASE + "input: {std: [58.395, 57.12, 57.375]}\n"},
         "spec.yaml:5:14: input.std: expected values of at most 1 (images are scaled to [0, 1]), "
         "found [58.395, 57.12, 57.375]; a std on the 0..255 scale? divide it by 255"),
]


def _materialize(case: Case, folder: Path) -> Path:
    for name, content in case.files.items():
        write(folder / name, content)
    return folder / "spec.yaml"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_message(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _materialize(case, tmp_path)
    with pytest.raises(SpeccError) as info:
        doc = load_spec("spec.yaml", case.overrides)
        _ = compile_spec(doc).network
    assert str(info.value) == case.expected


@pytest.mark.parametrize("command", ["validate", "build"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_exit_2(case: Case, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    cli):
    monkeypatch.chdir(tmp_path)
    _materialize(case, tmp_path)
    sets = [arg for o in case.overrides for arg in ("--set", o)]
    extra = ["--out", "out"] if command == "build" else []
    result = cli(command, "spec.yaml", *sets, *extra)
    assert result.code == 2
    assert result.err.strip() == case.expected
    assert "Traceback" not in result.err + result.out
    assert not (tmp_path / "out").exists()


def test_every_message_has_a_position_and_says_what_was_found():
    """Spec-file errors carry file:line:col (the whole-file ones carry the file)."""
    for case in CASES:
        for line in case.expected.splitlines():
            head = line.split(": ", 1)[0]
            assert head.startswith(("spec.yaml", "b.yaml", "base.yaml", "--set ")), case.id
            assert "Input should be" not in line and "instance of" not in line, case.id


@pytest.mark.parametrize("text, message", [
    (LOL, "expands to more than"),
    ("a: " + "[" * 500_000, "nested lists or mappings"),  # PyYAML alone: hours
    ("a: " + "{a: " * 100_000, "nested lists or mappings"),
])
def test_bombs_fail_fast(text: str, message: str, tmp_path: Path):
    path = write(tmp_path / "bomb.yaml", text)
    # CPU time of this process, not wall time: a busy machine must not fail the test. Without
    # the guards the parser spends hours of CPU on these.
    start = time.process_time()
    with pytest.raises(SpeccError, match=message):
        load_spec(path)
    assert time.process_time() - start < 2.0


def test_python_tags_are_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "spec.yaml", f"name: !!python/object/apply:os.system [touch {marker}]\n")
    with pytest.raises(SpeccError, match="unsupported YAML value"):
        load_spec(path)
    assert not marker.exists()


def test_several_errors_are_reported_together_in_file_order(tmp_path: Path):
    path = write(tmp_path / "spec.yaml", "name: Bad\nnum_classes: -1\nbackbone:\n  preset: "
                                         "resnet50\n  output_strid: 8\naspp: {rates: [0]}\n")
    with pytest.raises(SpeccError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:1:7", "name"], [f"{path}:2:14", "num_classes"],
        [f"{path}:5:3", "backbone.output_strid"], [f"{path}:6:16", "aspp.rates[0]"]]


@pytest.mark.parametrize("command", ["validate", "build"])
def test_real_command_line_exit_2_without_traceback(command: str, tmp_path: Path, specc_proc):
    """The installed entry point (a fresh interpreter) behaves like the in-process runs."""
    write(tmp_path / "spec.yaml", BASE + "  output_strid: 8\n")
    args = [command, "spec.yaml"] + (["--out", "out"] if command == "build" else [])
    proc = specc_proc(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("spec.yaml:5:3: backbone.output_strid: unknown key")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()
