"""Build folders, generated code and model.pt files are safe to read and write.

* a build folder is replaced all at once; one whose files come from different specs is refused
  by every reader (diff, build --check, predict, read_weights);
* a folder is never read through its model.pt (TorchScript is a program), and a malformed spec
  inside a model.pt is a clear error;
* OS errors while writing (a file in the way, a full disk, no permission) are one message, exit
  2, and the previous build is left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from specc.api import compile_spec, load_spec
from specc.artifacts import (
    EXTRA_SPEC,
    archive_spec_info,
    archive_weights_source,
    build_folder_hashes,
    check_build_folder,
    read_weights,
)
from specc.build import build_to
from specc.errors import SpeccError, WeightsError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs/deeplabv3plus_mobilenetv2_demo.yaml"
NAME = "deeplabv3plus_mobilenetv2_demo"
SMALL = ["input.size=[33,33]"]
#: Another variant with the same name: what two builds into one folder could mix up.
OTHER = [*SMALL, "backbone.output_stride=8"]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two variants of the demo with the same name, each built once into its own folder."""
    root = tmp_path_factory.mktemp("variants")
    comps = {"a": compile_spec(load_spec(DEMO, SMALL)), "b": compile_spec(load_spec(DEMO, OTHER))}
    for key, comp in comps.items():
        build_to(comp, root / key)
    return {"root": root, **comps}


def copy_build(variants: dict[str, object], which: str, dst: Path) -> Path:
    """A copy of a variant's build folder at ``dst/<name>``; returns it."""
    folder = dst / NAME
    shutil.copytree(Path(variants["root"]) / which / NAME, folder)  # type: ignore[arg-type]
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- all or nothing ---------------------------------------------------------------------------


def test_a_rebuild_replaces_the_whole_folder(variants, tmp_path: Path) -> None:
    folder = copy_build(variants, "a", tmp_path)
    (folder / "__pycache__").mkdir()  # model.py was imported: its bytecode goes with it
    build_to(variants["b"], tmp_path)  # type: ignore[arg-type]
    assert not (folder / "__pycache__").exists()
    hashes = check_build_folder(folder)
    assert set(hashes.values()) == {variants["b"].doc.sha256}  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no temp sibling, no lock


def test_a_rebuild_names_the_artifacts_it_does_not_make_again(variants, tmp_path: Path) -> None:
    """A build replaces the whole folder: artifacts of the previous one not asked for again go,
    and the build says which."""
    import warnings

    from specc.errors import SpeccWarning

    folder = copy_build(variants, "a", tmp_path)
    (folder / "model.onnx").write_bytes(b"an earlier export")
    (folder / "artifacts.json").write_text("{}")
    with pytest.warns(SpeccWarning) as caught:
        build_to(variants["b"], tmp_path)  # type: ignore[arg-type]
    assert [str(w.message) for w in caught] == [
        f"{folder}: replaced by this build, which has no artifacts.json, model.onnx; give their "
        "--target again to keep them"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeccWarning)
        build_to(variants["a"], tmp_path)  # type: ignore[arg-type]  # the same files: nothing


def test_what_a_killed_build_left_is_removed_and_nothing_else(variants, tmp_path: Path) -> None:
    copy_build(variants, "a", tmp_path)
    for left in (f".{NAME}.tmp-0a1b2c3d", f".{NAME}.old"):
        (tmp_path / left).mkdir()
        (tmp_path / left / "model.py").write_text("half written")
    (tmp_path / f".{NAME}.lock").write_text("")  # its holder died: flock is released
    users = [tmp_path / f".{NAME}.tmp-mine", tmp_path / "checkpoint-notes"]
    for path in users:
        path.mkdir()
    build_to(variants["b"], tmp_path)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [NAME, *(p.name for p in users)])


def test_an_old_build_moved_aside_comes_back_before_the_next(variants, tmp_path: Path,
                                                            monkeypatch) -> None:
    """Where the OS has no atomic exchange, a kill between the two renames leaves the old build
    at .<name>.old and no folder; the next build puts it back before it starts."""
    import specc.build

    old = copy_build(variants, "a", tmp_path).rename(tmp_path / f".{NAME}.old")
    monkeypatch.setattr(specc.build, "_write_text", _fail(errno.ENOSPC))
    with pytest.raises(SpeccError, match="No space left on device"):
        build_to(variants["b"], tmp_path)  # type: ignore[arg-type]
    assert not old.exists()
    assert set(check_build_folder(tmp_path / NAME).values()) == {
        variants["a"].doc.sha256}  # type: ignore[attr-defined]


def test_a_folder_with_files_specc_did_not_write_is_not_replaced(cli, variants,
                                                                tmp_path: Path) -> None:
    folder = copy_build(variants, "a", tmp_path)
    (folder / "notes.txt").write_text("mine")
    before = snapshot(folder)
    result = cli("build", DEMO, *sets(OTHER), "--out", tmp_path)
    assert result.code == 2
    assert f"error: {folder}: holds files specc did not write (notes.txt)" in result.err
    assert snapshot(folder) == before


# -- readers check that the files agree ---------------------------------------------------------


@pytest.fixture
def mixed(variants, tmp_path: Path) -> Path:
    """A's model.py and manifest.json beside B's model.pt: what an interrupted or concurrent
    build could leave before builds were all or nothing."""
    folder = copy_build(variants, "a", tmp_path / "out")
    shutil.copy(Path(variants["root"]) / "b" / NAME / "model.pt", folder / "model.pt")  # type: ignore[arg-type]
    return folder


def test_every_reader_refuses_a_build_whose_files_disagree(cli, variants, mixed: Path,
                                                           tmp_path: Path) -> None:
    a, b = variants["a"].doc.sha256, variants["b"].doc.sha256  # type: ignore[attr-defined]
    assert build_folder_hashes(mixed) == {"model.py": a, "manifest.json": a, "model.pt": b}
    message = f"{mixed}: the build's files come from different specs"
    with pytest.raises(SpeccError, match="different specs"):
        read_weights(mixed / "model.pt")
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 16)).save(image)
    for args in (("diff", mixed, mixed), ("diff", mixed / "manifest.json", DEMO),
                 ("build", DEMO, *sets(SMALL), "--check", "--out", mixed.parent),
                 ("predict", mixed / "model.pt", image, "--out", tmp_path / "pred"),
                 ("predict", DEMO, image, "--checkpoint", mixed / "model.pt", *sets(SMALL),
                  "--out", tmp_path / "pred")):
        result = cli(*args)
        assert result.code == 2, (args, result.err)
        assert message in result.err and "Traceback" not in result.err, args
    assert not (tmp_path / "pred").exists()


def test_a_consistent_build_reads(cli, variants, tmp_path: Path) -> None:
    folder = copy_build(variants, "a", tmp_path)
    assert cli("diff", folder, DEMO, "--set-b", SMALL[0]).code == 0
    assert cli("build", DEMO, *sets(SMALL), "--check", "--out", tmp_path).code == 0
    assert read_weights(folder / "model.pt").spec_info["spec_sha256"] == \
        variants["a"].doc.sha256  # type: ignore[attr-defined]


# -- model.pt is a program --------------------------------------------------------------------


def test_a_folder_is_never_read_through_its_model_pt(variants, tmp_path: Path,
                                                     monkeypatch) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(Path(variants["root"]) / "a" / NAME / "model.pt", folder)  # type: ignore[arg-type]

    def never(*args, **kwargs):
        raise AssertionError("a model.pt was loaded without being named")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(WeightsError) as err:
        read_weights(folder)
    assert str(err.value) == (
        f"{folder}: no weights found (expected checkpoint/model.safetensors or "
        f"model.safetensors); it holds model.pt, a TorchScript program that runs its own code: "
        f"name the file ({folder / 'model.pt'}) if you trust it")


def _with_spec(variants, tmp_path: Path, text: str) -> Path:
    """Variant A's model.pt with ``text`` as its embedded spec."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(Path(variants["root"]) / "a" / NAME / "model.pt"))
        path = tmp_path / "model.pt"
        torch.jit.save(module, str(path), _extra_files={EXTRA_SPEC: text})
    return path


def _info(variants, **changes) -> str:
    from specc.artifacts import spec_info

    info = spec_info(variants["a"].doc)
    info.update(changes)
    return json.dumps(info)


def _resolved(variants, **changes) -> dict:
    resolved = json.loads(json.dumps(variants["a"].doc.resolved))
    resolved.update(changes)
    return resolved


@pytest.mark.parametrize(("make", "message"), [
    (lambda v: "{not json", "expected the spec as JSON, found text that is not JSON"),
    (lambda v: "[1, 2]", "expected a JSON object, found list"),
    (lambda v: _info(v, resolved="a spec"), "resolved: expected a dict, found str"),
    (lambda v: _info(v, spec_sha256=None), "spec_sha256: expected a str, found NoneType"),
    (lambda v: json.dumps({"name": NAME}), "spec_sha256: expected a str, found nothing"),
    (lambda v: _info(v, resolved=_resolved(v, num_classes="many")),
     "the spec is not valid for this specc:\n"),
    (lambda v: _info(v, resolved=_resolved(v, num_classes=3)),
     "the spec does not match its own spec_sha256"),
], ids=["not-json", "list", "resolved-str", "sha-null", "keys-missing", "invalid", "altered"])
def test_a_malformed_spec_inside_model_pt_is_a_clear_error(cli, variants, tmp_path: Path,
                                                           make, message: str) -> None:
    path = _with_spec(variants, tmp_path, make(variants))
    with pytest.raises(WeightsError) as err:
        archive_spec_info(path)
    assert str(err.value).startswith(f"{path} ({EXTRA_SPEC}): ")
    assert message in str(err.value)
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 16)).save(image)
    result = cli("predict", path, image, "--out", tmp_path / "pred")
    assert result.code == 2
    assert result.err.startswith(f"error: {path} ({EXTRA_SPEC}): ")
    assert "Traceback" not in result.err and not (tmp_path / "pred").exists()


def test_an_invalid_embedded_spec_says_which_key(variants, tmp_path: Path) -> None:
    path = _with_spec(variants, tmp_path, _info(
        variants, resolved=_resolved(variants, num_classes="many")))
    with pytest.raises(WeightsError) as err:
        archive_spec_info(path)
    assert f"{path} ({EXTRA_SPEC}): num_classes: expected" in str(err.value)
    assert "found 'many'" in str(err.value)


# -- trained weights are not replaced by accident ------------------------------------------------


@pytest.fixture(scope="module")
def trained(variants, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights for variant A unlike its initialisation (``file``), and a build of A with them
    (``root``, its folder ``folder``), made once."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("trained")
    generator = torch.Generator().manual_seed(0)
    state = {k: v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in variants["a"].module.state_dict().items()}  # type: ignore[attr-defined]
    file = root / "trained.safetensors"
    save_file(state, str(file))
    build_to(compile_spec(load_spec(DEMO, SMALL)), root / "out", weights=file)
    return {"file": file, "root": root / "out", "folder": root / "out" / NAME}


def copy_trained(trained: dict[str, Path], dst: Path) -> Path:
    """A copy of the build with trained weights at ``dst/<name>``; returns it."""
    folder = dst / NAME
    shutil.copytree(trained["folder"], folder)
    return folder


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_holds(model_pt: Path, file: Path) -> None:
    """The tensors of ``model_pt`` are exactly those of the weights ``file``."""
    state, expected = read_weights(model_pt).state, read_weights(file).state
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_a_build_records_where_its_weights_came_from(cli, variants, trained,
                                                     tmp_path: Path, monkeypatch) -> None:
    """The path as given and the file's sha256, read back from the zip; none for initialised
    weights; unknown (None) for a model.pt with no record, as older builds and runs have."""
    shutil.copy(trained["file"], tmp_path / "mine.safetensors")
    monkeypatch.chdir(tmp_path)
    result = cli("build", DEMO, *sets(SMALL), "--weights", "mine.safetensors", "--out", "out")
    assert result.code == 0, result.err
    model_pt = tmp_path / "out" / NAME / "model.pt"
    assert archive_weights_source(model_pt) == {
        "file": "mine.safetensors", "sha256": file_sha256(trained["file"])}
    assert_holds(model_pt, trained["file"])
    assert archive_weights_source(Path(variants["root"]) / "a" / NAME / "model.pt") == {
        "file": None, "sha256": None}  # type: ignore[arg-type]
    older = _with_spec(variants, tmp_path, _info(variants))  # only the spec inside
    assert archive_weights_source(older) is None
    assert archive_weights_source(trained["file"]) is None  # not a zip


def test_a_rebuild_without_weights_over_trained_ones_is_refused(cli, trained,
                                                                tmp_path: Path) -> None:
    folder = copy_trained(trained, tmp_path)
    before = snapshot(folder)
    result = cli("build", DEMO, *sets(SMALL), "--out", tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        f"error: {folder}: its model.pt holds the weights of {trained['file']} (sha256 "
        f"{file_sha256(trained['file'])[:12]}), and this build has none: it would replace them "
        f"with freshly initialised ones. To keep them, give them again (--weights "
        f"{trained['file']} or --weights {folder / 'model.pt'}); to start from fresh weights, "
        "pass --fresh-weights")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]
    assert cli("build", DEMO, *sets(SMALL), "--check", "--out", tmp_path).code == 0


def test_the_refusal_offers_only_the_weights_that_fit(cli, trained, tmp_path: Path) -> None:
    """The file the weights came from is offered while it is there. Another output stride keeps
    every tensor, so the same weights fit; another class count does not: the message says so
    instead of offering weights that --weights would refuse."""
    gone = Path(shutil.copy(trained["file"], tmp_path / "gone.safetensors"))
    build_to(compile_spec(load_spec(DEMO, SMALL)), tmp_path, weights=gone)
    gone.unlink()
    folder = tmp_path / NAME
    result = cli("build", DEMO, *sets(OTHER), "--out", tmp_path)
    assert result.code == 2
    assert f"of {gone} (sha256 " in result.err
    assert f"give them again (--weights {folder / 'model.pt'});" in result.err
    result = cli("build", DEMO, *sets([*SMALL, "num_classes=3"]), "--out", tmp_path)
    assert result.code == 2
    assert ("To keep them, they do not fit this spec's network (its tensors changed), so give "
            "weights that do with --weights; to start from fresh weights, pass --fresh-weights"
            ) in result.err


@pytest.mark.parametrize("way", ["file", "model.pt"])
def test_a_rebuild_with_the_weights_again_keeps_them_and_their_record(cli, trained,
                                                                      tmp_path: Path,
                                                                      way: str) -> None:
    """The weights file, or the build's own model.pt: its tensors, and the file they came from
    stays recorded, so the next rebuild still names it."""
    folder = copy_trained(trained, tmp_path)
    record = archive_weights_source(folder / "model.pt")
    weights = trained["file"] if way == "file" else folder / "model.pt"
    result = cli("build", DEMO, *sets(SMALL), "--weights", weights, "--out", tmp_path)
    assert result.code == 0, result.err
    assert not [line for line in result.err.splitlines()
                if line.startswith("warning: ")]  # no note: the same weights
    assert archive_weights_source(folder / "model.pt") == record
    assert_holds(folder / "model.pt", trained["file"])


def test_fresh_weights_replaces_trained_ones_when_asked(cli, trained, tmp_path: Path) -> None:
    folder = copy_trained(trained, tmp_path)
    result = cli("build", DEMO, *sets(SMALL), "--fresh-weights", "--out", tmp_path)
    assert result.code == 0, result.err
    assert archive_weights_source(folder / "model.pt") == {"file": None, "sha256": None}
    state, own = read_weights(folder / "model.pt").state, read_weights(trained["file"]).state
    assert not torch.equal(state["classifier.weight"], own["classifier.weight"])
    result = cli("build", DEMO, *sets(SMALL), "--fresh-weights", "--weights", trained["file"],
                 "--out", tmp_path)
    assert result.code == 2
    assert result.err == (f"error: --fresh-weights builds without weights, so it takes no "
                          f"--weights (given {trained['file']}); give one or the other\n")


def test_a_rebuild_with_other_weights_names_those_it_replaces(cli, trained,
                                                             tmp_path: Path) -> None:
    folder = copy_trained(trained, tmp_path)
    other = tmp_path / "other.pt"
    torch.save({k: v * 2 for k, v in read_weights(trained["file"]).state.items()}, other)
    result = cli("build", DEMO, *sets(SMALL), "--weights", other, "--out", tmp_path)
    assert result.code == 0, result.err
    assert (f"warning: {folder}: its model.pt held the weights of {trained['file']}; this build "
            f"puts in those of {other}\n") in result.err
    assert archive_weights_source(folder / "model.pt") == {"file": str(other),
                                                           "sha256": file_sha256(other)}


def test_a_rebuild_over_untrained_or_older_builds_goes_on(cli, variants, tmp_path: Path) -> None:
    """Initialised weights are replaced by initialised ones; a model.pt with no record (from a
    specc before it) is taken for initialised too: refusing it would stop every existing build
    folder from being rebuilt, with nothing to tell trained weights from initialised ones."""
    folder = copy_build(variants, "a", tmp_path)
    assert cli("build", DEMO, *sets(SMALL), "--out", tmp_path).code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(folder / "model.pt"))
        torch.jit.save(module, str(folder / "model.pt"), _extra_files={EXTRA_SPEC: _info(variants)})
    assert archive_weights_source(folder / "model.pt") is None
    result = cli("build", DEMO, *sets(SMALL), "--out", tmp_path)
    assert result.code == 0, result.err
    assert archive_weights_source(folder / "model.pt") == {"file": None, "sha256": None}


# -- output ------------------------------------------------------------------------------------


def test_build_prints_each_warning_once(cli, tmp_path: Path) -> None:
    result = cli("build", DEMO, *sets(SMALL), "--out", tmp_path)
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if ": warning: " in line]
    assert lines, "the 33×33 crop should draw warnings about ASPP rates"
    assert len(lines) == len(set(lines))
    assert len(lines) == len(compile_spec(load_spec(DEMO, SMALL)).warnings)


# -- OS errors ---------------------------------------------------------------------------------


def _fail(code: int):
    def write(path: Path, text: str) -> None:
        raise OSError(code, os.strerror(code), str(path))
    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_leaves_the_old_build(cli, variants, tmp_path: Path, monkeypatch,
                                             code: int) -> None:
    import specc.build

    folder = copy_build(variants, "a", tmp_path)
    before = snapshot(folder)
    monkeypatch.setattr(specc.build, "_write_text", _fail(code))
    result = cli("build", DEMO, *sets(OTHER), "--out", tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        f"error: {folder}: cannot write the build ({os.strerror(code)}); the previous build, if "
        "any, is unchanged")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def _file_size_limit(limit: int):
    """For a child process: writes past ``limit`` bytes fail (EFBIG), as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_disk_that_fills_up_while_writing_model_pt(variants, tmp_path: Path) -> None:
    """The real command, with real failing writes: model.py and manifest.json fit under the
    limit, model.pt does not. torch's own writer would abort the process here."""
    folder = copy_build(variants, "a", tmp_path)
    before = snapshot(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, "-m", "specc", "build", str(DEMO), *sets(OTHER), "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_file_size_limit(200_000))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: {folder}: cannot write the build ({os.strerror(errno.EFBIG)}); the previous "
        "build, if any, is unchanged")
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_out_that_is_a_file(cli, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("mine")
    result = cli("build", DEMO, *sets(SMALL), "--out", out)
    assert result.code == 2
    assert result.err.splitlines()[-1] == f"error: --out {out}: expected a folder, found a file"
    assert out.read_text() == "mine"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_out_folder(cli, variants, tmp_path: Path) -> None:
    folder = copy_build(variants, "a", tmp_path)
    before = snapshot(folder)
    tmp_path.chmod(0o555)
    try:
        result = cli("build", DEMO, *sets(OTHER), "--out", tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert result.code == 2 and f"cannot write into {tmp_path} (permission denied)" in result.err
    assert snapshot(folder) == before


def test_graph_output_errors(cli, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    result = cli("graph", DEMO, "--out", blocker / "g.dot")
    assert result.code == 2 and result.err.startswith(f"error: --out {blocker / 'g.dot'}: ")
    assert f"{blocker} is a file, not a folder" in result.err
    result = cli("graph", DEMO, "--out", tmp_path)  # a folder where the file should go
    assert result.code == 2 and "expected a file name, found a folder" in result.err

    import specc.cli.compiler

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(specc.cli.compiler, "atomic_write_bytes", full)
    result = cli("graph", DEMO, "--out", tmp_path / "g.dot")
    assert result.code == 2
    assert result.err == f"error: {tmp_path / 'g.dot'}: cannot write the graph (No space left " \
                         "on device)\n"


def test_imported_weights_output_errors(tmp_path: Path) -> None:
    from specc.importers import Imported, save_imported

    blocker = tmp_path / "file"
    blocker.write_text("mine")
    imported = Imported(state={"w": torch.zeros(2)}, kind="torchvision", dropped=[],
                        backbone_only=False)
    with pytest.raises(SpeccError, match=r"cannot write the imported weights \(") as err:
        save_imported(imported, blocker / "w.safetensors", metadata={})
    assert str(err.value).startswith(str(blocker))
    assert blocker.read_text() == "mine"
