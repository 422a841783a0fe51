"""The local launcher: ranks rendezvous through a store that listens on loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from corpuslab.training import launch

LAUNCHER = Path(launch.__file__)

# Rank 0 lists every listening TCP socket of the launcher and both ranks (from /proc), after
# the gloo group is up, so the store and gloo's pair sockets are all there.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist

    pid_file = sys.argv[1]
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        open(pid_file, "w").write(str(os.getpid()))
    dist.barrier()
    if dist.get_rank() == 0:
        inodes = set()
        for pid in (os.getppid(), os.getpid(), int(open(pid_file).read())):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:  # closed meanwhile
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in open(table).read().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    listening.append(cols[1])
        print(json.dumps({"listening": listening, "master_port": os.environ["MASTER_PORT"]}))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def _loopback(addr: str) -> bool:
    host = addr.split(":")[0]
    return host in ("0100007F", "00000000000000000000000001000000")  # 127.0.0.1, ::1


def test_two_ranks_rendezvous_on_loopback_only(tmp_path: Path) -> None:
    """The store, and gloo's sockets, listen on 127.0.0.1; nothing on every interface."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "--nproc-per-node=2", str(script), str(tmp_path / "pid")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if "listening" in line))
    ports = {int(a.split(":")[1], 16) for a in report["listening"]}
    assert int(report["master_port"]) in ports  # the store's socket was found
    assert all(_loopback(a) for a in report["listening"]), report


def test_a_failing_rank_stops_the_others_and_sets_the_status(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys, time\nif os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(120)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "--nproc-per-node=2", str(script)], timeout=60
    )
    assert done.returncode == 3 and time.monotonic() - started < 30
