"""Browser fixtures: the dashboard served by ``armt-viz serve`` in a subprocess, and headless Debian chromium
driven by Playwright (ENV.md §7; never ``playwright install``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "viz"))
from synthetic import make_root, make_trace, stack_samples, write_store  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import launched_chromium  # noqa: E402
from armt_viz.testing import free_port  # noqa: E402


def _serve(root: Path, *extra: str):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "armt_viz.cli", "serve", "--trace-root", str(root),
                             "--port", str(port), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"armt-viz serve exited early:\n{proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        raise RuntimeError("armt-viz serve did not listen within 60 s")
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc, timeout: float = 10) -> None:
    """Terminate `proc`; kill it if it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory) -> dict[str, Path]:
    return make_root(tmp_path_factory.mktemp("ui_traces"))


@pytest.fixture(scope="module")
def server(ui_root):
    proc, url = _serve(ui_root["root"])
    yield url
    _stop(proc)


@pytest.fixture(scope="session")
def samples_root(tmp_path_factory) -> dict:
    """A root with one two-sample trace: sample 0 the default stream (facts 0-5), sample 1 another (facts 0-2)."""
    root = tmp_path_factory.mktemp("ui_samples")
    first, other = make_trace(level="writes"), make_trace(level="writes", seed=5, n_keys=3)
    write_store(stack_samples(first, other), root / "two.zarr")
    return {"root": root, "samples": (first, other)}


@pytest.fixture(scope="module")
def samples_server(samples_root):
    proc, url = _serve(samples_root["root"])
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def auth_server(ui_root):
    proc, url = _serve(ui_root["root"], "--basic-auth", "ana:wonderland", "--cookie-secret", "test-secret-0123")
    yield url
    _stop(proc)


@pytest.fixture(scope="session")
def browser():
    yield from launched_chromium(CHROMIUM, "apt-get install -y chromium chromium-driver (never `playwright install`)")
