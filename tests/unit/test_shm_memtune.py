"""The large-buffer malloc tuning applies once, in a fresh interpreter, and sticks."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.harness import REPO_ROOT

PROBE = """
from ipc.memtune import tune_for_large_buffers
first, second = tune_for_large_buffers(), tune_for_large_buffers()
print(first, second)
"""


def test_tuning_applies_in_a_fresh_process() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["True", "True"]
