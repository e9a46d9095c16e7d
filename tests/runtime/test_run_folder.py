"""The run folder is the user's too: training deletes only what it wrote, refuses folders that are
not specc runs, and reports junk checkpoint files and a NaN before the first save as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import runkit
import torch

from runtime import checkpoint as ckpt
from runtime import train as train_mod
from specc.errors import TrainingError

INFO = {"name": "m", "spec_sha256": "x", "architecture_sha256": "y", "resolved": {"name": "m"}}
STATE = {"iteration": 1, "optimizer": {"state": {}, "param_groups": []},
         "rng": [ckpt.rng_state()], "scaler": None}


def _save(run: Path, iteration: int) -> Path:
    return ckpt.save_checkpoint(run, weights={"w": torch.full((2,), float(iteration))},
                                state={**STATE, "iteration": iteration}, spec_info=INFO)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content (links as their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes().hex()[:64]
    return out


# ---------------------------------------------------------------------------------------------
# Nothing of the user's is deleted


def test_saving_deletes_only_specc_own_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 1)
    mine = {  # a user's folders whose names start like specc's
        "checkpoint-best/notes.txt": "keep",
        ".checkpoint-notes/todo.txt": "keep",
        "checkpoint-00000023/state.pt": "a name with 8 digits",
        ".checkpoint-0000002.abcdefgh.partial/diary.txt": "not a checkpoint's file",
        ".checkpoint-0000002.qrstuvwx.partial/.tmpnotes.txt": "not the writer's name",
        "checkpoint-0000009/.tmpS1O2uT": "a temporary name outside a partial save",
        "checkpoint-0000001x/model.safetensors": "almost",
    }
    for rel, text in mine.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    stale = run / ".checkpoint-0000003.abcdefgh.partial"  # an interrupted save of specc's
    stale.mkdir()
    (stale / ckpt.STATE).write_bytes(b"half")
    # killed while writing the weights: safetensors' temporary file, not yet renamed
    killed = run / ".checkpoint-0000003.ijklmnop.partial"
    killed.mkdir()
    (killed / ".tmpS1O2uT").write_bytes(b"half the weights")
    _save(run, 2)
    _save(run, 4)
    for rel, text in mine.items():
        assert (run / rel).read_text() == text, rel
    assert not stale.exists() and not killed.exists()
    assert not (run / "checkpoint-0000001").exists() and not (run / "checkpoint-0000002").exists()
    assert os.readlink(run / "checkpoint") == "checkpoint-0000004"


def test_checkpoint_folder_with_user_files_is_left_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old = _save(run, 1)
    (old / "my-analysis.ipynb").write_text("{}")
    _save(run, 2)
    assert (old / "my-analysis.ipynb").is_file()
    (run / "checkpoint-0000005").mkdir()
    (run / "checkpoint-0000005" / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match="checkpoint-0000005: holds files specc did not write"):
        _save(run, 5)
    assert (run / "checkpoint-0000005" / "notes.txt").read_text() == "x"


def test_new_run_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    (out / "checkpoint-old").mkdir()
    before = _tree(out)
    for extra in ([], ["--resume"]):
        code, _, err = runkit.cli(["train", runkit.SPEC, "--out", out, "--iters", "2", *extra,
                                   *runkit.sets(runkit.TINY)], capsys)
        assert code == 2, err
        assert f"{out} is not empty" in err and "not a specc run folder" in err
        assert "--out" in err and "Traceback" not in err
        assert _tree(out) == before


def test_out_that_is_a_checkpoint_folder_names_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out RUN/checkpoint`` (the path eval takes): its spec.json makes it look like a run
    folder without a checkpoint, where a run would start afresh; it is refused, naming the run."""
    run = tmp_path / "run"
    _save(run, 4)
    before = _tree(run)
    for out in (run / "checkpoint", run / "checkpoint-0000004"):
        for extra in ([], ["--resume"]):
            code, _, err = runkit.cli(["train", runkit.SPEC, "--out", out, "--iters", "2",
                                       *extra, *runkit.sets(runkit.TINY)], capsys)
            assert code == 2, err
            assert " ".join(err.split()) == (
                f"error: {out} is a checkpoint of the run in {run}, not a run folder: training "
                f"into it would start afresh and write over its files. Pass --out {run} (with "
                "--resume to continue that run)")
            assert _tree(run) == before


def test_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "file.txt"
    out.write_text("mine")
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", out, "--iters", "2",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and f"--out {out}: expected a folder, found a file" in err
    assert "Traceback" not in err
    assert out.read_text() == "mine"


def test_what_counts_as_a_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert not ckpt.is_run_folder(run)
    ckpt.check_run_folder(run, resume=False)  # empty: fine
    ckpt.check_run_folder(tmp_path / "missing", resume=False)  # missing: fine
    (run / "spec.json").write_text('{"name": "a"}')  # a user's own spec.json
    assert not ckpt.is_run_folder(run)
    with pytest.raises(TrainingError, match="not a specc run folder"):
        ckpt.check_run_folder(run, resume=False)
    (run / "spec.json").write_text(json.dumps(INFO))  # a run stopped before its first save
    assert ckpt.is_run_folder(run)
    ckpt.check_run_folder(run, resume=False)


# ---------------------------------------------------------------------------------------------
# Junk checkpoint files: a clear error naming the file


def _junk_cases() -> dict[str, tuple[str, bytes]]:
    import io

    def saved(obj: object) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    good = saved(STATE)
    return {
        "random-bytes": (ckpt.STATE, os.urandom(64)),
        "truncated": (ckpt.STATE, good[: len(good) // 2]),
        "not-a-dict": (ckpt.STATE, saved([1, 2, 3])),
        "iteration-a-string": (ckpt.STATE, saved({**STATE, "iteration": "ten"})),
        "optimizer-a-number": (ckpt.STATE, saved({**STATE, "optimizer": 174812789})),
        "rng-missing": (ckpt.STATE, saved({k: v for k, v in STATE.items() if k != "rng"})),
        "empty": (ckpt.STATE, b""),
        "weights-junk": ("model.safetensors", os.urandom(64)),
        "spec-not-json": ("spec.json", b"{nope"),
        "spec-a-list": ("spec.json", b"[1]"),
    }


@pytest.mark.parametrize("case", list(_junk_cases()))
def test_junk_checkpoint_files_are_named(tmp_path: Path, case: str) -> None:
    name, data = _junk_cases()[case]
    folder = _save(tmp_path, 3)
    (folder / name).write_bytes(data)
    with pytest.raises(TrainingError) as err:
        _, state, _ = ckpt.load_checkpoint(tmp_path)
        ckpt.check_resumable(state, folder / ckpt.STATE)  # what --resume checks next
    message = str(err.value)
    assert str(folder / name) in message, message
    assert "not a" in message or "cannot resume" in message  # not only a number from unpickling


def test_resume_from_junk_state_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _save(tmp_path / "run", 3)
    (folder / ckpt.STATE).write_bytes(os.urandom(100))
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--resume",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{folder / ckpt.STATE}: not a training state written by specc" in err.replace("\n", "")


def test_resume_from_a_state_cut_short_says_so_and_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _save(tmp_path / "run", 3)
    state = folder / ckpt.STATE
    state.write_bytes(state.read_bytes()[:1000])  # as `head -c 1000` leaves it
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--resume",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        f"error: {state}: cannot resume from this training state: it is a PyTorch file that is "
        "cut short or damaged (the directory at the end of its zip archive is missing: an "
        "interrupted copy or a full disk?). Restore the run folder from a copy, or start a new "
        f"run from the weights beside it with --init {folder} --out NEW_FOLDER (the optimizer "
        "state and iteration count start afresh)")


def test_dangling_checkpoint_link_is_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").symlink_to("checkpoint-0000009")
    with pytest.raises(TrainingError, match="does not exist"):
        runkit.train_tiny(run, resume=True)


# ---------------------------------------------------------------------------------------------
# A non-finite loss before the first checkpoint


def test_nan_before_any_checkpoint_says_none_was_saved(tmp_path: Path, monkeypatch) -> None:
    real = train_mod.segmentation_loss

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        return real(*args, **kwargs) * float("nan")  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "segmentation_loss", poisoned)
    with pytest.raises(TrainingError) as err:
        runkit.train_tiny(tmp_path / "run", ["train.iters=8", "train.save_every=4"])
    message = str(err.value)
    assert "loss is nan at iteration 1" in message
    assert "is kept" not in message and "No checkpoint was saved yet" in message
    assert not (tmp_path / "run").exists()  # nothing of use was written: no folder is left


def test_resume_past_the_iterations_asked_for_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run saved at iteration 4, resumed with --iters 2, is refused with what to give (the
    poly schedule past its end would be a complex number), and its checkpoint is kept."""
    run = tmp_path / "run"
    runkit.train_tiny(run, ["train.iters=4", "train.save_every=4"])
    before = _tree(run)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--resume", "--iters", "2",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "this run is at iteration 4, past train.iters = 2; resume with --iters 4 or more" \
        in err.replace("\n", " ")
    assert _tree(run) == before
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", run, "--resume", "--iters", "4",
                               *runkit.sets(runkit.TINY)], capsys)
    assert code == 0, err  # at its end already: exported again, nothing trained
