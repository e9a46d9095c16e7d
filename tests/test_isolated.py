"""The modules of tests/isolated/, run in an interpreter of their own.

They build and run OpenVINO IRs and ONNX files rewritten by Winograd's F(m, 3) in-process. In the
full suite a process that had done so was later killed by a segmentation fault at a fork (a
DataLoader worker, ``platform.processor()``'s subprocess), now and then, in tests that run
nothing of the kind themselves. Run apart, they share their process with nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_isolated_modules_pass_in_a_fresh_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
         str(REPO / "tests" / "isolated")],
        cwd=REPO, env={**os.environ, "SPECC_ISOLATED": "1"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
