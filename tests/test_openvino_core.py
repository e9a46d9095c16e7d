"""One OpenVINO Core per process (:func:`specc.targets.openvino_core`).

OpenVINO's CPU plugin swaps the loading thread's alternate signal stack and puts the old one
back when it is released. Runners with a Core each, dropped in the order they were made, left
the main thread's stack pointing at freed memory, and the next Python signal handler to run
killed the process (a DataLoader's SIGCHLD after its workers exit): a segmentation fault
without a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ov = pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[1]

# Two IRs opened by two runners, dropped first-made first; then whether the main thread's
# alternate signal stack is mapped, and a Python signal handler run on it.
SCRIPT = textwrap.dedent("""
    import ctypes, gc, os, signal, sys
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import torch
    from pathlib import Path
    from specc.targets import OpenVinoRunner

    folder = Path(sys.argv[1])
    for name in ("a", "b"):
        x = ops.parameter([1, 8, 9, 9], np.float32)
        w = ops.constant(np.random.default_rng(0).random((8, 8, 3, 3), np.float32))
        y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
        ov.save_model(ov.Model([y], [x]), str(folder / f"{name}.xml"))
    first = OpenVinoRunner(folder / "a.xml", {})
    second = OpenVinoRunner(folder / "b.xml", {})
    image = torch.zeros(1, 8, 9, 9)
    assert first(image).shape == second(image).shape == (1, 8, 9, 9)
    del first
    gc.collect()
    del second
    gc.collect()

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
    stack = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    spans = [[int(a, 16) for a in line.split()[0].split("-")] for line in open("/proc/self/maps")]
    print("stack mapped:", any(a <= (stack.sp or 0) < b for a, b in spans), flush=True)

    # what a DataLoader does: a Python SIGCHLD handler, and a worker that exits
    signal.signal(signal.SIGCHLD, lambda *args: print("child exited", flush=True))
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("done", flush=True)
""")


def test_one_core_serves_every_runner() -> None:
    from specc.targets import openvino_core

    assert openvino_core() is openvino_core()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_dropping_runners_leaves_the_signal_stack_alive(tmp_path: Path) -> None:
    """After two runners are dropped first-made first, the main thread's signal stack is still
    mapped, and a child's exit, handled in Python as a DataLoader handles it, does not take the
    process down (it did: killed by SIGSEGV, exit code -11)."""
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    assert "stack mapped: True" in result.stdout
    assert "child exited" in result.stdout and "done" in result.stdout
