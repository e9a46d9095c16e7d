"""The message a process of a torchrun job stops on: printed once, by rank 0, when every process
stops on it; after its rank by each process that does when only some do. The processes meet in
a real key-value store like the one torchrun's agent keeps; the other process is played by a
thread of the test."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import runkit
import torch.distributed as dist

from runtime import distributed

FULL_DISK = "error: runs/x/checkpoint-0000004: No space left on device"
BAD_IMAGE = "error: data/images/train/2.png: cannot read image"


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> dist.TCPStore:
    """The environment torchrun gives a process of a two-process job, and the agent's store."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for name, value in {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
                        "TORCHELASTIC_RUN_ID": "job", "TORCHELASTIC_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "STOP_WAIT_S", 1.0)
    return store


def _other(rank: int, message: str) -> threading.Thread:
    """The other process of the job stopping on ``message``."""
    thread = threading.Thread(target=distributed._messages_of_all, args=(message, rank, 2))
    thread.start()
    return thread


@pytest.mark.parametrize(("rank", "shown"), [("0", FULL_DISK), ("1", None)])
def test_a_message_every_process_stops_on_is_printed_by_rank_0(
        rank: str, shown: str | None, job: dist.TCPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", rank)
    other = _other(1 - int(rank), FULL_DISK)
    assert distributed.stop_message(FULL_DISK) == shown
    other.join()


def test_another_message_is_printed_after_its_rank(job: dist.TCPStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    other = _other(0, FULL_DISK)
    assert distributed.stop_message(BAD_IMAGE) == f"rank 1: {BAD_IMAGE}"
    other.join()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_process_that_stops_alone_says_so_after_waiting(
        rank: str, job: dist.TCPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", rank)
    assert distributed.stop_message(BAD_IMAGE) == f"rank {rank}: {BAD_IMAGE}"


def test_a_restart_does_not_read_the_messages_of_the_attempt_before(
        job: dist.TCPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _other(0, BAD_IMAGE).join()  # attempt 0: both stopped on it
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distributed.stop_message(BAD_IMAGE) == f"rank 1: {BAD_IMAGE}"


def test_without_the_agent_store_every_process_says_what_it_stops_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "False"
                        }.items():
        monkeypatch.setenv(name, value)
    assert distributed.stop_message(BAD_IMAGE) == f"rank 1: {BAD_IMAGE}"


def test_one_process_prints_its_message_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.stop_message(BAD_IMAGE) == BAD_IMAGE


def test_a_process_told_to_stop_while_comparing_still_says_why(
        job: dist.TCPStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun sends SIGTERM to the other processes as soon as one ends; a process comparing
    the error it stops on (here a spec error, a real ``specc train``) still prints it, exit 2."""
    monkeypatch.setenv("RANK", "1")
    keys = job.num_keys()
    proc = subprocess.Popen([runkit.python(), "-m", "specc", "train", str(runkit.SPEC), "--set",
                             "train.lr=abc"], env={**os.environ, **runkit.ENV_ONE_THREAD},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while job.num_keys() == keys:  # until it has posted its message
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _other(0, FULL_DISK).join()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.strip() == "rank 1: --set train.lr=abc: train.lr: expected a number, found 'abc'"
