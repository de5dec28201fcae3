"""Worker processes end with the process that started them, also when it is killed outright (SIGKILL, the OOM
killer, a container stopped without a clean shutdown), where `atexit` never runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "?")
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to watch the worker")
def test_the_dashboard_scan_worker_ends_when_its_server_is_killed(tmp_path):
    """Bug: a server killed with SIGKILL left its trace-scan worker (a spawned process, ~135 MB) running forever,
    one more with every hard restart of a hosted dashboard."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent("""
        import os, time
        from armt_viz.viz.dashboard import loaders
        if __name__ == "__main__":
            print(loaders._scan_pool().submit(os.getpid).result(timeout=120), flush=True)
            time.sleep(300)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    worker = None
    try:
        worker = int(server.stdout.readline())
        assert _alive(worker)
        server.kill()
        server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"the scan worker {worker} outlived its killed server"
    finally:
        if server.poll() is None:
            server.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, 9)
