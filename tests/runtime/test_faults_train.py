"""Fault injection: ``kill -9`` a training run at seeded random moments (start-up, a step, a save)
and check after each kill that the checkpoint link points to a complete checkpoint that loads,
that nothing of the user's in the run folder was touched, and that ``--resume`` finishes. Ctrl-C
(SIGINT) exits 130 with one line naming the last checkpoint and the command that resumes."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import runkit

from runtime import checkpoint as ckpt
from runtime.plot import read_metrics

ITERS = 24
KILLS = 4
USER_FILES = {"checkpoint-mine/notes.txt": "keep me", ".checkpoint-notes/todo.txt": "and me",
              "checkpoint-0000001x/readme": "almost a name of specc's"}


ENV = {**os.environ, **runkit.ENV_ONE_THREAD}


def _args(run: Path, *extra: str) -> list[str]:
    return [runkit.python(), "-m", "specc", "train", str(runkit.SPEC), "--out", str(run),
            "--iters", str(ITERS), "--save-every", "2", *extra, *runkit.sets(runkit.TINY)]


def _start(run: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_args(run, *extra), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _check_after_kill(run: Path) -> int:
    """The iteration of the checkpoint the link points to (0: none yet); asserts it loads whole
    and that the user's files are as they were."""
    for rel, text in USER_FILES.items():
        assert (run / rel).read_text() == text, rel
    return _whole_checkpoint_iteration(run)


def _whole_checkpoint_iteration(run: Path) -> int:
    """The iteration of the checkpoint the link points to (0: none yet); asserts it loads whole."""
    if not (run / "checkpoint").is_symlink():
        return 0
    weights, state, info = ckpt.load_checkpoint(run)
    assert weights and info["name"] == "deeplabv3plus_mobilenetv2"
    ckpt.check_resumable(state, run / "checkpoint" / ckpt.STATE)
    assert state["iteration"] % 2 == 0 and 0 < state["iteration"] <= ITERS
    return state["iteration"]


def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    rng = random.Random(20240609)
    run = tmp_path / "run"
    proc = _start(run)
    runkit.wait_for(proc, run / "checkpoint")  # a specc run folder: the user puts things in it
    for rel, text in USER_FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    seen = []
    for kill in range(KILLS):
        if kill:
            proc = _start(run, "--resume")
        time.sleep(rng.uniform(0.2, 4.0))  # start-up, a step or a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_check_after_kill(run))
    assert seen == sorted(seen)  # a kill never takes a run back past its last checkpoint
    done = subprocess.run(_args(run, "--resume"), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert _check_after_kill(run) == ITERS and (run / "model.pt").is_file()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))]
    assert sorted(leftovers) == sorted(["checkpoint", "checkpoint-0000024", *{
        rel.split("/")[0] for rel in USER_FILES}])


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) once a checkpoint is written: exit 130, one line naming the checkpoint and
    the command that resumes; the checkpoint is whole, and that command finishes the run."""
    run = tmp_path / "run"
    proc = _start(run)
    runkit.wait_for(proc, run / "checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    last = err.decode().splitlines()[-1]
    assert proc.returncode == 130, err.decode()
    iteration = _whole_checkpoint_iteration(run)
    resume = shlex.join(["specc", "train", str(runkit.SPEC), "--iters", str(ITERS), "--out",
                         str(run), "--save-every", "2", *runkit.sets(runkit.TINY), "--resume"])
    assert last == (f"interrupted: the last checkpoint is {run / 'checkpoint'} (iteration "
                    f"{iteration}); resume with: {resume}")
    done = subprocess.run([runkit.python(), "-m", *shlex.split(resume)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} at iteration {iteration} of {ITERS}" in done.stderr
    assert _whole_checkpoint_iteration(run) == ITERS and (run / "model.pt").is_file()


def test_ctrl_c_before_the_first_checkpoint_gives_the_command_that_starts_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("runtime.train.train", interrupted)
    weights = tmp_path / "start weights.safetensors"  # a space: the command quotes it
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--init",
                               weights, "--save-every", "5"], capsys)
    assert code == 130
    assert err.strip() == (
        "interrupted before the first checkpoint (one every train.save_every = 5 iterations): "
        "nothing to resume; start again with: specc train "
        f"{runkit.SPEC} --out {tmp_path / 'run'} --save-every 5 --init '{weights}'")


RDZV_NOTE = ("(on each of the 2 nodes, RDZV_ARGS being the rendezvous options the run was started "
             "with: --rdzv-backend, --rdzv-endpoint and --rdzv-id, or --master-addr, --master-port "
             "and the node's own --node-rank)")


@pytest.mark.parametrize(("world", "per_node", "launch", "note"), [
    ("2", "2", "torchrun --nproc_per_node=2 -m specc", ""),
    ("8", "4", "torchrun --nnodes=2 --nproc_per_node=4 RDZV_ARGS -m specc", f" {RDZV_NOTE}"),
], ids=["one node", "two nodes"])
def test_ctrl_c_under_torchrun_gives_the_command_for_the_same_layout(
        world: str, per_node: str, launch: str, note: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment torchrun sets says how many processes ran on how many nodes; the
    rendezvous options it does not hold, so the line names them for the user to repeat."""
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("runtime.train.train", interrupted)
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", per_node)
    code, _, err = runkit.cli(["train", runkit.SPEC, "--out", tmp_path / "run", "--save-every",
                               "5"], capsys)
    assert code == 130
    assert err.strip() == (
        "interrupted before the first checkpoint (one every train.save_every = 5 iterations): "
        f"nothing to resume; start again with: {launch} train {runkit.SPEC} --out "
        f"{tmp_path / 'run'} --save-every 5{note}")


def test_a_run_that_has_just_begun_writing_is_refused_as_one_in_progress(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The moment a run has opened metrics.jsonl and is still writing spec.json: a second run
    into the folder is told it is in use, not that the folder holds other files."""
    from runtime import checkpoint as ckpt

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").touch()
    (run / ".spec.json.x1y2z3.tmp").write_text("{")
    with ckpt.held_run_folder(run):  # the first run's hold
        code, _, err = runkit.cli(_args(run)[3:], capsys)
    assert code == 2 and "another specc train is training into this run folder" in err
    assert sorted(p.name for p in run.iterdir()) == [".spec.json.x1y2z3.tmp", "metrics.jsonl"]


def test_a_second_run_into_a_folder_in_use_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command given twice: the second run stops at once, before it touches the folder,
    and the first trains on to the end with its own metrics and checkpoints."""
    run = tmp_path / "run"
    first = _start(run)
    runkit.wait_for(first, run / "metrics.jsonl")
    for resume in ([], ["--resume"]):
        code, _, err = runkit.cli(_args(run, *resume)[3:], capsys)
        assert code == 2 and "another specc train is training into this run folder" in err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, ITERS + 1))
    assert _whole_checkpoint_iteration(run) == ITERS
