"""Every command, fed what a new user (or a hostile one) might give it: one table of cases.

Each row is a command line with placeholders for files made once per session ({spec}: a small
valid spec; {text}, {binary}, {empty}, {dir}, {missing}, {fifo}, {sparse}: files that are not
what a command expects; {png}, {float_tif}, {wide_tif}: images; {model}: a built ``model.pt``),
the exit code it must end with and a fragment its message must hold. Every case also checks that
no traceback is printed and that exit code 1 (kept for "differs") is never used for an error.
The table runs in process (fast); a few rows run again through a fresh interpreter.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"
#: The demo spec at a size that builds and runs in a moment.
SMALL = ("--set", "input.size=[33,33]")
HAS_CUDA = shutil.which("nvidia-smi") is not None


@dataclass(frozen=True)
class Hostile:
    """One row: ``args`` (placeholders filled from the session's files), the exit code, and
    the fragments the output (stdout + stderr) must contain."""

    id: str
    args: tuple[str, ...]
    code: int
    fragments: tuple[str, ...]


def case(id_: str, line: str, code: int, *fragments: str) -> Hostile:
    return Hostile(id_, tuple(line.split()), code, fragments)


CASES = [
    # validate: files that are not specs
    case("validate missing", "validate {missing}", 2, "{missing}: no such file"),
    case("validate directory", "validate {dir}", 2, "{dir}: expected a YAML file, found a directory"),
    case("validate binary", "validate {binary}", 2, "expected YAML text, found binary data"),
    case("validate empty", "validate {empty}", 2, "{empty}: the file is empty"),
    case("validate /dev/zero", "validate /dev/zero", 2,
         "/dev/zero: expected a YAML file, found a character device"),
    case("validate a FIFO", "validate {fifo}", 2, "found a named pipe (FIFO)"),
    case("validate a sparse 4 GB file", "validate {sparse}", 2,
         "expected a spec under 1000000 bytes, found a file of 4294967296 bytes"),
    case("validate text", "validate {text}", 2, "expected a mapping at the top level"),
    case("validate classes in the billions", "validate {spec} --set num_classes=10000000000", 2,
         "num_classes: expected a number of at most 65535, found 10000000000"),
    case("validate a wrong type", "validate {spec} --set num_classes=lots", 2,
         "num_classes: expected an integer, found 'lots'"),
    case("validate a negative crop", "validate {spec} --set input.size=[-1,33]", 2,
         "expected a number greater than 0, found -1"),
    case("validate --set a new unknown key", "validate {spec} --set nonexist.key=3", 2,
         "--set nonexist.key=3: nonexist: unknown key 'nonexist'; expected one of name,"),
    case("eval of a model given as the spec", "eval {model}", 2,
         "{model}: expected a spec file (YAML), found a TorchScript model or PyTorch file "
         "(eval takes a model with --checkpoint"),
    case("validate a NaN mean", "validate {spec} --set input.mean=[.nan,0.5,0.5]", 2,
         "input.mean[0]: expected a finite number, found nan"),
    # build
    case("build --out is a file", "build {spec} --out {text}", 2,
         "--out {text}: expected a folder, found a file"),
    case("build a network too large to allocate",
         "build {spec} --out {tmp}/b --set aspp.channels=16384 --set aspp.projection.channels=16384"
         " --set aspp.projection.kernel=63", 2,
         "the network is too large to build: it would hold", "more than the 2,000,000,000"),
    case("build nothing", "build", 2, "nothing to build"),
    # info
    case("info --size 0 0", "info {spec} --size 0 0", 2, "--size: expected positive H W, found 0 0"),
    case("bench --size past the largest input", "bench {spec} --size 100000 100000", 2,
         "--size: expected H W from 1 to 16384, found 100000 100000"),
    case("info of a directory", "info {dir}", 2, "expected a YAML file, found a directory"),
    case("info --size in the billions", "info {spec} --size 9999999999 33", 2,
         "expected a number of at most 16384, found 9999999999"),
    # graph
    case("graph --out is a folder", "graph {spec} --out {dir}", 2,
         "--out {dir}: expected a file name, found a folder"),
    case("graph --out inside a file", "graph {spec} --out {text}/g.dot", 2,
         "--out {text}/g.dot: {text} is a file, not a folder"),
    case("graph png to standard output", "graph {spec} --format png", 2, "give --out FILE"),
    # diff
    case("diff of two broken specs reports both", "diff {text} {binary}", 2,
         "{text}:1:1: expected a mapping", "{binary}:1:1: expected YAML text, found binary data"),
    case("diff of a missing and a broken spec", "diff {missing} {empty}", 2,
         "{missing}: no such file", "{empty}: the file is empty"),
    case("diff of a folder without a manifest", "diff {dir} {spec}", 2,
         "or a run folder holding spec.json; this folder has neither"),
    # import-weights
    case("import-weights missing source", "import-weights {spec} {missing} --from torchvision "
         "--out {tmp}/w.safetensors", 2, "{missing}: no such weights file"),
    case("import-weights junk source", "import-weights {spec} {text} --from torchvision "
         "--out {tmp}/w.safetensors", 2, "{text}: expected weights (", "found a text file"),
    case("import-weights unknown --from", "import-weights {spec} {text} --from caffe "
         "--out {tmp}/w.safetensors", 2, "--from: expected one of torchvision, timm"),
    case("import-weights --out is a folder", "import-weights {spec} {text} --from torchvision "
         "--out {dir}", 2, "--out {dir}: expected a file name, found a folder"),
    # train: refused before any work, and before a run folder is made
    case("train --device foo", "train {spec} --device foo --out {tmp}/run", 2,
         "--device: expected cpu or cuda, found 'foo'"),
    case("train --device cuda:1", "train {spec} --device cuda:1 --out {tmp}/run", 2,
         "found 'cuda:1' (pick a GPU with CUDA_VISIBLE_DEVICES)"),
    case("train --crop 0", "train {spec} --crop 0 --out {tmp}/run", 2,
         "data.crop[0]: expected a number greater than 0, found 0"),
    case("train --iters 0", "train {spec} --iters 0 --out {tmp}/run", 2,
         "train.iters: expected a number greater than 0, found 0"),
    case("train --batch-size -2", "train {spec} --batch-size -2 --out {tmp}/run", 2,
         "train.batch_size: expected a number greater than 0, found -2"),
    case("train an infinite learning rate", "train {spec} --set train.lr=.inf --out {tmp}/run", 2,
         "train.lr: expected a finite number, found inf"),
    case("train unknown data source", "train {spec} --data coco:/x --out {tmp}/run", 2,
         "unknown data source 'coco:/x'"),
    case("train --out is a file", "train {spec} --out {text}", 2,
         "--out {text}: expected a folder, found a file"),
    case("train --init missing", "train {spec} --init {missing} --out {tmp}/run", 2,
         "{missing}: no such weights file"),
    case("train --init junk", "train {spec} --init {text} --out {tmp}/run", 2,
         "{text}: expected weights (", "found a text file"),
    case("train class weights of another count",
         "train {spec} --set train.loss.class_weights=[1,2] --out {tmp}/run", 2,
         "train.loss.class_weights: expected 8 weights (one per class, num_classes), found 2"),
    case("train lr_mult of no module", "train {spec} --set train.lr_mult={{\"decoderr\":2}} "
         "--out {tmp}/run", 2, "train.lr_mult.decoderr: expected a module of the model"),
    case("train hard pixels top_k 0", "train {spec} --set train.loss.top_k=0 --out {tmp}/run", 2,
         "train.loss.top_k: expected a number greater than 0, found 0"),
    case("train blur even kernel", "train {spec} --set data.blur={{\"kernel\":4}} --out {tmp}/run",
         2, "data.blur.kernel: expected an odd kernel size, found 4"),
    # class-weights
    case("class-weights bad method", "class-weights {spec} --method mode", 2,
         "--method: expected one of median_frequency, inverse, found 'mode'"),
    case("class-weights missing data folder", "class-weights {spec} --data folder:{missing}", 2,
         "{missing}: dataset folder"),
    # eval
    case("eval --device foo", "eval {spec} --checkpoint {model} --device foo", 2,
         "--device: expected cpu or cuda, found 'foo'"),
    case("eval junk checkpoint", "eval {spec} --checkpoint {text}", 2,
         "{text}: expected weights (", "found a text file"),
    case("eval missing checkpoint", "eval {spec} --checkpoint {missing}", 2,
         "{missing}: no such weights file"),
    case("eval bad scales", "eval {spec} --checkpoint {model} --scales 1,x", 2,
         "--scales: 'x' is not a number"),
    case("eval zero scale", "eval {spec} --checkpoint {model} --scales 0", 2,
         "scales must be positive"),
    case("eval an infinite scale", "eval {spec} --checkpoint {model} --scales 1,1e999", 2,
         "--scales: scales are at most 8 (the image that many times larger on each side), "
         "found inf"),
    case("eval missing data folder", "eval {spec} --checkpoint {model} --data folder:{missing}",
         2, "{missing}: dataset folder"),
    case("eval --tile 0", "eval {spec} --checkpoint {model} --tile 0", 2,
         "--tile: expected auto, N or HxW with positive integers", "found '0'"),
    case("eval --overlap 1", "eval {spec} --checkpoint {model} --tile auto --overlap 1", 2,
         "--overlap: expected a fraction of the tile, 0 <= overlap < 1, found 1.0"),
    case("eval --overlap without --tile", "eval {spec} --checkpoint {model} --overlap 0.5", 2,
         "--overlap: applies to tiled inference; give --tile too"),
    case("eval --out is a file", "eval {spec} --checkpoint {model} --out {text}", 2,
         "--out {text}: expected a folder, found a file"),
    # predict
    case("predict a huge scale", "predict {model} {png} --scales 1e6 --out {tmp}/p", 2,
         "--scales: scales are at most 8"),
    case("predict --tile 64x", "predict {model} {png} --tile 64x --out {tmp}/p", 2,
         "--tile: expected auto, N or HxW with positive integers", "found '64x'"),
    case("predict --device foo", "predict {model} {png} --device foo --out {tmp}/p", 2,
         "--device: expected cpu or cuda, found 'foo'"),
    case("predict missing image", "predict {model} {missing} --out {tmp}/p", 2,
         "{missing}: image file not found"),
    case("predict a folder as an image", "predict {model} {dir} --out {tmp}/p", 2,
         "{dir}: expected an image file, found a directory"),
    case("predict text as an image", "predict {model} {text} --out {tmp}/p", 2,
         "{text}: cannot read image"),
    case("predict a float image outside 0..1", "predict {model} {float_tif} --out {tmp}/p", 2,
         "{float_tif}: mode 'F' image holds values from 0 to 3", "read as 0..1"),
    case("predict integers past 16 bits", "predict {model} {wide_tif} --out {tmp}/p", 2,
         "{wide_tif}: mode 'I' image holds values from 0 to 100000"),
    case("predict --out is a file", "predict {model} {png} --out {text}", 2,
         "--out {text}: expected a folder, found a file"),
    case("predict --out inside a file", "predict {model} {png} --out {text}/p", 2,
         "{text} is a file, not a folder"),
    case("predict with a missing model", "predict {missing} {png} --out {tmp}/p", 2,
         "no such file"),
    case("predict with a junk spec", "predict {binary} {png} --out {tmp}/p", 2,
         "expected YAML text, found binary data"),
    case("predict --checkpoint with a model.pt", "predict {model} {png} --checkpoint {model} "
         "--out {tmp}/p", 2, "a TorchScript model carries its own weights"),
    # samples
    case("samples --count 0", "samples {spec} --count 0 --out {tmp}/s", 2,
         "--count: expected a positive number, found 0"),
    case("samples --out is a file", "samples {spec} --out {text}", 2,
         "--out {text}: expected a folder, found a file"),
    case("samples unknown split", "samples {spec} --split nope --out {tmp}/s", 2,
         "unknown split 'nope'"),
    case("samples missing folder data", "samples {spec} --data folder:{missing} --out {tmp}/s", 2,
         "{missing}: dataset folder"),
    # plot
    case("plot missing run", "plot {missing}", 2, "{missing}: no such metrics file"),
    case("plot --out is a folder", "plot {text} --out {dir}", 2,
         "--out {dir}: expected a file name, found a folder"),
    # usage errors from the argument parser are exit 2 as well, never 1
    case("unknown option", "validate {spec} --bogus", 2, "No such option"),
    case("unknown command", "frobnicate", 2, "No such command"),
]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The session's files, by placeholder name."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {name: root / file for name, file in (
        ("text", "notes.txt"), ("binary", "blob.bin"), ("empty", "empty.yaml"), ("dir", "folder"),
        ("missing", "missing.yaml"), ("fifo", "pipe.yaml"), ("sparse", "sparse.yaml"),
        ("png", "photo.png"), ("float_tif", "float.tif"), ("wide_tif", "wide.tif"),
        ("model", "model.pt"))}
    paths["text"].write_text("just some notes\n")
    paths["binary"].write_bytes(b"\x00\x01\x02\xff" * 64)
    paths["empty"].write_bytes(b"")
    paths["dir"].mkdir()
    os.mkfifo(paths["fifo"])
    with paths["sparse"].open("wb") as f:
        f.truncate(4 * 1024**3)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(paths["png"])
    Image.fromarray(np.linspace(0, 3, 81, dtype=np.float32).reshape(9, 9)).save(paths["float_tif"])
    Image.fromarray(np.array([[0, 100000]], np.int32)).save(paths["wide_tif"])
    _build_model(paths["model"])
    return {"spec": str(DEMO), "tmp": str(root)} | {k: str(v) for k, v in paths.items()}


def _build_model(path: Path) -> None:
    from specc.api import build, load_spec
    from specc.artifacts import write_torchscript

    doc = load_spec(DEMO, ["input.size=[33,33]"])
    write_torchscript(build(doc).module.eval(), path, doc)


def _fill(text: str, world: dict[str, str]) -> str:
    return text.format(**world)


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_hostile_input(row: Hostile, world: dict[str, str], cli) -> None:
    args = [_fill(a, world) for a in row.args]
    if args[0] in ("validate", "build", "info", "graph") and not any(
            a == "--size" or a.startswith("input.size") for a in args):
        args += SMALL
    result = cli(*args)
    output = result.out + result.err
    assert result.code == row.code, output
    for fragment in row.fragments:
        assert _fill(fragment, world) in output, output
    assert "Traceback" not in output
    assert not Path(world["tmp"], "run").exists(), "a refused run left a folder behind"


SUBPROCESS = [c for c in CASES if c.id in ("validate /dev/zero", "diff of two broken specs "
                                           "reports both", "predict a float image outside 0..1",
                                           "train --device foo")]


@pytest.mark.parametrize("row", SUBPROCESS, ids=[c.id for c in SUBPROCESS])
def test_hostile_input_in_a_fresh_interpreter(row: Hostile, world: dict[str, str],
                                              specc_proc) -> None:
    proc = specc_proc(*[_fill(a, world) for a in row.args], timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == row.code, output
    for fragment in row.fragments:
        assert _fill(fragment, world) in output, output
    assert "Traceback" not in output


def test_cuda_on_a_machine_without_it_is_refused(world: dict[str, str], cli) -> None:
    """Asked for the GPU, never quietly given the CPU."""
    if HAS_CUDA:
        pytest.skip("this machine has CUDA")
    for command in (["train", world["spec"], "--out", f"{world['tmp']}/run"],
                    ["eval", world["spec"], "--checkpoint", world["model"]],
                    ["predict", world["model"], world["png"], "--out", f"{world['tmp']}/p"]):
        result = cli(*command, "--device", "cuda")
        assert result.code == 2, result.err
        assert "--device cuda: CUDA is not available" in result.err
        assert "use --device cpu" in result.err
    assert not Path(world["tmp"], "run").exists()


def test_a_full_disk_is_one_message_with_the_path(world: dict[str, str], cli,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error in the middle of a write (here ENOSPC) is a message and exit 2."""
    target = Path(world["tmp"], "graph.dot")

    def full(path: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("specc.cli.compiler.atomic_write_bytes", full)
    result = cli("graph", world["spec"], "--out", target, *SMALL)
    assert result.code == 2
    assert result.err.strip() == f"error: {target}: cannot write the graph (No space left on device)"


def test_a_folder_that_vanishes_is_one_message_with_the_path(world: dict[str, str], cli,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """An input removed while a command runs: the OS error names it, exit 2, no traceback."""
    gone = Path(world["tmp"], "vanished", "spec.yaml")

    def vanish(*_args: object, **_kwargs: object) -> None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(gone))

    monkeypatch.setattr("specc.cli.compiler.compile_spec", vanish)
    result = cli("validate", world["spec"])
    assert (result.code, result.err.strip()) == (2, f"error: {gone}: No such file or directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_work(world: dict[str, str], cli) -> None:
    locked = Path(world["tmp"], "locked")
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    try:
        for command in (["graph", world["spec"], "--out", f"{locked}/g.dot", *SMALL],
                        ["samples", world["spec"], "--out", f"{locked}/s"],
                        ["predict", world["model"], world["png"], "--out", f"{locked}/p"]):
            result = cli(*command)
            assert result.code == 2, result.err
            assert f"cannot write into {locked} (permission denied)" in result.err
    finally:
        locked.chmod(0o755)
