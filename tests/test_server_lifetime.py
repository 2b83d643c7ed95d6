"""Servers started for the serving check (benchmarks/vllm_engine.py) never outlive the process that started them:
a SIGTERM to it stops their whole process group before it exits, and its death by kill -9 makes them exit too.
A real server (python -m http.server, answering GET /v1/models like vLLM) is started through the same launcher."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc: Linux")

#: the parent: starts the server as bench_serving does (launch, then wait in try/finally stop), prints its pid and
#: that of a grandchild in its process group (vLLM's engine core stands for that one), then sleeps
PARENT = r"""
import shlex, sys, time
from pathlib import Path
from benchmarks.vllm_engine import VllmServer, free_port

root, port = Path(sys.argv[1]), free_port()
(root / "www" / "v1").mkdir(parents=True)
(root / "www" / "v1" / "models").write_text('{"data": []}')
script = (f"sleep 300 & echo $! > {shlex.quote(str(root / 'grandchild'))}; "
          f"exec {shlex.quote(sys.executable)} -m http.server --bind 127.0.0.1 -d {shlex.quote(str(root / 'www'))} {port}")
server = VllmServer(root, "test", root / "server.log", port=port, argv=["sh", "-c", script]).launch()
try:
    server.wait(60)
    print(server.process.pid, (root / "grandchild").read_text().strip(), flush=True)
    time.sleep(300)
finally:
    server.stop()
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone(pids: list[int], seconds: float) -> list[int]:
    """The ``pids`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def parent(tmp_path):
    """A python parent process with a served child started through VllmServer; yields (parent, child pid,
    grandchild pid). Whatever of them is left is killed afterwards, by pid."""
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line:
            proc.kill()
            pytest.fail(f"the parent did not start its server: {proc.communicate()[1][-2000:]}")
        pids = [int(p) for p in line.split()]
        assert all(_alive(p) for p in pids)
        yield proc, pids[0], pids[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_parent_stops_the_server_and_its_process_group(parent):
    proc, child, grandchild = parent
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143  # it unwound (SystemExit(128 + SIGTERM)) rather than dying on the signal
    assert _gone([child, grandchild], 10) == []


def test_the_server_exits_when_its_parent_is_killed(parent):
    proc, child, _ = parent
    proc.kill()  # SIGKILL: no handler runs, no finally block; the kernel's parent-death signal stops the server
    proc.wait(30)
    assert _gone([child], 10) == []
