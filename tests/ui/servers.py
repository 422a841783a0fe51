"""The servers the UI tests open in a browser, started for real: a console script of this
virtualenv (``dagster dev``, ``mlflow ui``) in a session of its own, on 127.0.0.1 and a free port,
waited for until it answers, and stopped as a person stops it, with Ctrl+C.

Ctrl+C is SIGINT to the server's process group; whatever of its session is still alive after the
grace period is SIGKILLed and reported, so a test never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # this virtualenv's console scripts: dagster, mlflow

# A shell that starts a job in the background (`make test &`, CI wrappers) hands it SIGINT
# ignored, Python keeps an ignored SIGINT ignored in its children, and dagster dev maps SIGTERM
# to whatever SIGINT does: such a server would stop on nothing but SIGKILL. The server's command
# runs through this, which restores SIGINT's default before exec.
_RESTORE_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``extra``, minus the settings that would point a server
    at something other than the home under test (a tracking server, a cluster, a Ray head)."""
    drop = {"MLFLOW_TRACKING_URI", "CORPUSLAB_ENV", "RAY_ADDRESS", "DAGSTER_PIPES_CONTEXT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env | dict(extra)


@dataclass
class Server:
    """A started server: its base URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: list[str] = field(default_factory=list)  # what Ctrl+C did not stop

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]

    def get(self, path: str, timeout: float = 5) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()


def wait_for(
    server: Server, ready: Callable[[], bool], what: str, timeout: float, every: float = 0.5
) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` with the server's log if the server
    exits or ``timeout`` seconds pass first. Connection errors while polling count as not ready."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(
                f"{server.name} exited with code {server.process.returncode} while waiting for "
                f"{what}; its log ends:\n{server.log_tail()}"
            )
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{server.name}: no {what} after {timeout:.0f}s; its log ends:\n{server.log_tail()}"
            )
        time.sleep(every)


def _session(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid`` (orphans reparented to init included)."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def stop(server: Server, grace: float) -> None:
    """Ctrl+C: SIGINT to the server's process group, then wait up to ``grace`` seconds for every
    process of its session; SIGKILL what is left and record it in ``server.killed``."""
    sid = server.process.pid  # start_new_session: the leader's pid is the session and group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        server.process.poll()  # reap the leader as soon as it exits
        if not _session(sid):
            break
        time.sleep(0.25)
    left = _session(sid)
    for p in left:
        with contextlib.suppress(psutil.Error):
            server.killed.append(" ".join(p.cmdline())[:160])
            p.kill()
    psutil.wait_procs(left, timeout=30)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=30)


@contextlib.contextmanager
def serve(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str],
    log: Path,
    cwd: Path = REPO,
    grace: float = 60,
) -> Iterator[Server]:
    """Run ``command`` (a console script of this virtualenv and its arguments) as a server on
    ``http://127.0.0.1:<port>``; stops it on exit, and fails if Ctrl+C did not stop all of it.

    The caller waits for readiness itself (``wait_for``): what "ready" means differs (MLflow's
    ``/health``; Dagster's code location loaded).
    """
    executable = str(BIN / command[0])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _RESTORE_SIGINT, executable, *command[1:]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        try:
            yield server
        finally:
            stop(server, grace)
    assert not server.killed, (
        f"{name} did not stop on Ctrl+C within {grace:.0f}s; SIGKILLed: {server.killed}"
    )
