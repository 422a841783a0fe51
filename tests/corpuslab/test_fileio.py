"""corpuslab.fileio: the exclusive lock that serializes writers of a shared file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corpuslab.fileio import exclusive

TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "w") as fh:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held")
    else:
        print("free")
"""


def _other_process_sees(lock: Path) -> str:
    done = subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def test_another_process_waits_while_the_lock_is_held_and_not_after(tmp_path: Path) -> None:
    """Two dbt builds (or dedup batches) in two Dagster runs: the second must wait."""
    lock = tmp_path / "sub" / ".stats.lock"
    with exclusive(lock):
        assert lock.is_file()  # its folder created
        assert _other_process_sees(lock) == "held"
    assert _other_process_sees(lock) == "free"


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    try:
        with exclusive(lock):
            raise RuntimeError("a failed step")
    except RuntimeError:
        pass
    assert _other_process_sees(lock) == "free"
