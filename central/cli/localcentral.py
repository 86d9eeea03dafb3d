"""A central server run as a child process on loopback, for ``skiff quickstart``.

Starts ``python -m shared.cli central serve`` with the same interpreter and
import path as this process, waits (bounded) until ``/healthz`` answers, and
stops it with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import shared
from central.cli.client import RegistryClient
from central.cli.errors import CliError

__all__ = ["LocalCentral", "free_port"]

START_TIMEOUT = 30.0  # seconds until /healthz must answer
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
_POLL_SECONDS = 0.2
_LOG_TAIL_CHARS = 2000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalCentral:
    """One ``skiff central serve`` child process; its output goes to ``log_path``."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> None:
        """Start the server and wait until it is healthy.

        Raises:
            CliError: It exited, or was not healthy within ``START_TIMEOUT``.
        """
        cmd = [sys.executable, "-m", "shared.cli", "central", "serve"]
        cmd += ["--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"]
        self._proc = await asyncio.to_thread(self._spawn, cmd)
        await self._wait_healthy()

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                cmd,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the child ourselves
            )

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with RegistryClient(self.url, None, connect_timeout=2, read_timeout=2) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise CliError(f"central exited with code {code}\n{self.log_tail()}")
                try:
                    await client.healthz()
                    return
                except CliError:
                    if time.monotonic() > deadline:
                        raise CliError(
                            f"central not healthy after {START_TIMEOUT:.0f} s\n{self.log_tail()}"
                        ) from None
                await asyncio.sleep(_POLL_SECONDS)

    async def wait(self) -> int:
        """Wait until the server exits by itself; return its exit code."""
        if self._proc is None:
            return 0
        return await asyncio.to_thread(self._proc.wait)

    async def stop(self) -> None:
        """SIGTERM, wait up to ``STOP_TIMEOUT``, then SIGKILL."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def log_tail(self) -> str:
        """The end of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- {self.log_path} (tail)\n{text[-_LOG_TAIL_CHARS:].rstrip()}"


def _child_env() -> dict[str, str]:
    """This environment, with the directory holding our packages first on the path."""
    env = dict(os.environ)
    root = str(Path(shared.__file__).resolve().parent.parent)
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
