"""The command line (exit codes 0 / 1 / 2, JSON outputs) and the Python API that mirrors it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from specc.analysis import info as info_of
from specc.api import build, compile_spec, load_spec, manifest_json

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").rglob("*.yaml"))
V3 = REPO / "specs/deeplabv3_resnet101.yaml"
COMMANDS = ("validate", "build", "info", "schema")


def test_validate_every_shipped_spec_exits_0(specc_proc):
    proc = specc_proc("validate", *SPECS)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ok: ")]
    assert [line.split(" — ")[0] for line in lines] == [f"ok: {p}" for p in SPECS]
    assert f"ok: {V3} — DeepLabv3 with resnet101 at output stride 16." in lines


def test_python_m_specc_help(specc_proc):
    proc = specc_proc("--help")
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
    sub = specc_proc("build", "--help")
    assert sub.returncode == 0 and "--check" in sub.stdout and "--set" in sub.stdout


def test_validate_in_process(cli):
    result = cli("validate", V3)
    assert result.code == 0
    assert result.out.strip() == f"ok: {V3} — DeepLabv3 with resnet101 at output stride 16."
    missing = cli("validate", "nope.yaml")
    assert (missing.code, missing.err.strip()) == (2, "nope.yaml: no such file")


def test_info_json_fields(cli):
    result = cli("info", V3, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert {"name", "params", "macs", "input_size", "output_stride"} <= set(data)
    assert data["name"] == "deeplabv3_resnet101"
    assert data["input_size"] == [513, 513]
    assert data["output_stride"] == 16
    assert data["aspp_rates"] == [6, 12, 18]
    committed = json.loads((REPO / "generated/deeplabv3_resnet101/manifest.json").read_text())
    assert (data["params"], data["macs"]) == (committed["params"], committed["macs"])
    assert data["receptive_field"] == committed["receptive_field"]
    rows = {(r["stage"], r["unit"]): r for r in data["schedule"]}
    assert rows[("block4", "unit3")]["rates"] == [8]
    assert rows[("block4", "unit3")]["feature_size"] == [33, 33]


def test_info_size_changes_macs_not_params(cli):
    full = json.loads(cli("info", V3, "--json").out)
    small = json.loads(cli("info", V3, "--json", "--size", "257", "257").out)
    assert small["input_size"] == [257, 257]
    assert small["params"] == full["params"]
    assert 0 < small["macs"] < full["macs"]
    # Multiply-adds scale with the feature area: 17×17 vs 33×33 at output stride 16.
    assert small["macs"] / full["macs"] == pytest.approx((17 * 17) / (33 * 33), rel=0.1)
    wide = json.loads(cli("info", V3, "--json", "--size", "257", "513").out)
    assert wide["input_size"] == [257, 513] and small["macs"] < wide["macs"] < full["macs"]
    bad = cli("info", V3, "--size", "0", "257")
    assert bad.code == 2 and bad.err.strip() == "error: --size: expected positive H W, found 0 257"


def test_info_table(cli):
    result = cli("info", REPO / "specs/deeplabv3plus_xception.yaml")
    assert result.code == 0, result.err
    assert "deeplabv3plus_xception" in result.out
    assert "2,4,8" in result.out  # exit2's multi-grid rates in the schedule table
    assert "Traceback" not in result.err


def _walk_schema(node: dict[str, Any], defs: dict[str, Any], path: str,
                 problems: list[str]) -> None:
    """Every property of the schema (through $ref / anyOf / items) has a description."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        assert name in defs, node["$ref"]
        return
    for key, prop in node.get("properties", {}).items():
        if "description" not in prop:
            problems.append(f"{path}.{key}")
        _walk_schema(prop, defs, f"{path}.{key}", problems)
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        _walk_schema(branch, defs, path, problems)
    if isinstance(node.get("items"), dict):
        _walk_schema(node["items"], defs, f"{path}[]", problems)


def _conforms(data: Any, node: dict[str, Any], defs: dict[str, Any], path: str) -> None:
    """A small structural check of a document against the schema (keys, types, enums)."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    condition = node.get("if")  # only the form the schema uses: {"required": [...]}
    if condition is not None and isinstance(data, dict):
        branch = node.get("then" if set(condition["required"]) <= set(data) else "else")
        if branch is not None:
            _conforms(data, branch, defs, path)
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        errors = []
        for branch in branches:
            try:
                _conforms(data, branch, defs, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: no branch fits: {errors}")
    kind = node.get("type")
    if isinstance(data, dict):
        assert kind in (None, "object"), path
        if node.get("additionalProperties") is False:
            assert set(data) <= set(node["properties"]), (path, set(data) - set(node["properties"]))
        for key, value in data.items():
            if key in node.get("properties", {}):
                _conforms(value, node["properties"][key], defs, f"{path}.{key}")
        for key in node.get("required", []):
            assert key in data, (path, key)
    elif isinstance(data, list):
        assert kind == "array", (path, kind)
        items = node.get("items") or {}
        prefix = node.get("prefixItems")
        for i, value in enumerate(data):
            _conforms(value, prefix[i] if prefix else items, defs, f"{path}[{i}]")
    elif data is None:
        assert kind == "null" or "default" in node, path
    else:
        expected = {bool: "boolean", int: "integer", float: "number", str: "string"}[type(data)]
        if kind is not None:
            assert kind == expected or (kind == "number" and expected == "integer"), (path, kind)
        if "enum" in node:
            assert data in node["enum"], (path, data)
        if "const" in node:
            assert data == node["const"], (path, data)


def test_schema_is_json_schema_with_descriptions(cli):
    result = cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["if"] == {"required": ["extends"]}  # a variant needs only what differs
    assert {"name", "num_classes", "backbone"} <= set(schema["else"]["required"])
    assert {"name", "backbone", "aspp", "decoder", "extends"} <= set(schema["properties"])
    defs = schema["$defs"]
    problems: list[str] = []
    _walk_schema(schema, defs, "", problems)
    for name, definition in defs.items():
        _walk_schema(definition, defs, name, problems)
    assert problems == []
    # The shipped specs (resolved, as the compiler reads them) fit the schema.
    for path in SPECS:
        _conforms(load_spec(path).raw.data, schema, defs, str(path))


def test_schema_takes_files_as_written_variants_included(cli):
    """An editor checks the file as written: a variant (``extends:``) states only what differs,
    without the keys its base gives; the same keys without ``extends:`` are incomplete."""
    schema = json.loads(cli("schema").out)
    defs = schema["$defs"]
    variants = 0
    for path in SPECS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        _conforms(data, schema, defs, str(path))
        variants += "extends" in data
    assert variants >= 3
    variant = {"extends": "base.yaml", "decoder": {"projection": 24}}
    _conforms(variant, schema, defs, "variant")
    with pytest.raises(AssertionError):  # a new spec needs num_classes, backbone
        _conforms({"name": "x", "decoder": {"projection": 24}}, schema, defs, "whole")
    with pytest.raises(AssertionError):  # a list replaces the base's: its items stay whole
        _conforms({**variant, "backbone": {"stages": [{"units": [{"type": "basic"}]}]}},
                  schema, defs, "variant")


def test_api_mirrors_the_command_line(cli, tmp_path):
    """The same spec through the API and through the CLI gives the same figures and files."""
    spec = REPO / "specs/deeplabv3plus_mobilenetv2.yaml"
    sets = ["input.size=[65, 65]", "backbone.width_multiplier=0.25"]
    doc = load_spec(spec, sets)
    api_info = info_of(compile_spec(doc))
    cli_info = json.loads(cli("info", spec, "--json", *[a for s in sets for a in ("--set", s)]).out)
    assert {k: v for k, v in cli_info.items() if k in api_info} == json.loads(json.dumps(api_info))

    result = cli("build", spec, "--out", tmp_path, *[a for s in sets for a in ("--set", s)])
    assert result.code == 0, result.err
    built = build(doc)
    folder = tmp_path / doc.spec.name
    assert (folder / "model.py").read_text() == built.source
    assert (folder / "manifest.json").read_text() == manifest_json(built.manifest)
    assert result.out.strip().startswith(f"built: {spec} → {folder / 'model.py'}")


def test_ctrl_c_in_any_command_says_interrupted(cli: Any, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """A Ctrl-C while a command runs exits 130 with one line, not silently."""
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("specc.cli.compiler.compile_spec", interrupted)
    result = cli("validate", V3)
    assert result.code == 130
    assert result.err.strip() == "interrupted"


@pytest.mark.parametrize(("loss", "shown"), [(float("nan"), "loss —  "), (0.69314, "loss 0.6931  ")])
def test_train_progress_shows_no_loss_before_the_first_step(loss: float, shown: str) -> None:
    from types import SimpleNamespace

    from specc.cli.render import TrainStats

    text = TrainStats().render(SimpleNamespace(fields={"loss": loss, "lr": 0.007, "speed": 1.25}))
    assert text.plain == f"{shown}lr 7.00e-03  1.25 it/s"
