"""Harness for tests that run the real ``skiff`` processes on loopback.

``CentralProcess`` starts ``skiff central serve`` on a free port, waits for
``/healthz`` within a bounded time and stops it with SIGTERM, then SIGKILL.
``api`` is a small synchronous HTTP client for the central API; tests that
need streaming or raw sockets open their own connections.
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from shared._zstdframe import FrameWalker
from shared.digest import sha256_digest

__all__ = [
    "ADMIN",
    "REPO_ROOT",
    "SKIFF",
    "ApiResponse",
    "CentralProcess",
    "all_changes",
    "all_pages",
    "api",
    "api_ok",
    "frame_lengths",
    "free_port",
    "init_central",
    "put_blob",
    "register",
    "run_skiff",
    "running_central",
    "set_toml_settings",
    "skiff_env",
    "unique",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIFF: list[str] = [sys.executable, "-m", "shared.cli"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def skiff_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``env`` (default: this process's) with the repository importable."""
    out = dict(os.environ if env is None else env)
    paths = [str(REPO_ROOT)] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return out


def run_skiff(
    *args: str,
    env: dict[str, str],
    check: bool = True,
    timeout: float = 60,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``skiff <args>`` to completion and capture its output as text.

    Raises:
        AssertionError: ``check`` is true and the exit code is not 0; the
            message shows the command, stdout and stderr.
    """
    cmd = [*SKIFF, *args]
    proc = subprocess.run(
        cmd,
        env=skiff_env(env),
        cwd=cwd or REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"skiff {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


class ApiResponse(NamedTuple):
    """Status, headers and body of one HTTP exchange (unpacks as a 3-tuple)."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The ``{"code", "message"}`` of an error body, checking its shape."""
        doc = self.json()
        assert set(doc) == {"error"}, doc
        err: dict[str, Any] = doc["error"]
        assert isinstance(err.get("code"), str), doc
        assert isinstance(err.get("message"), str), doc
        assert err["message"], doc
        return err


class _DefaultToken:
    def __repr__(self) -> str:
        return "<admin token>"


ADMIN = _DefaultToken()


class CentralProcess:
    """One ``skiff central serve`` process on 127.0.0.1.

    The port is chosen once, so a restarted process answers at the same URL.
    """

    def __init__(self, data_dir: Path, token: str, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.token = token
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env["SKIFF_URL"] = self.url
        self.env["SKIFF_TOKEN"] = token
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"CentralProcess({self.url}, {self.data_dir})"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> CentralProcess:
        """Start the server and wait (bounded) until ``/healthz`` answers 200."""
        assert not self.running, "central is already running"
        cmd = [
            *SKIFF,
            *("central", "serve", "--data-dir", str(self.data_dir)),
            *("--listen", f"127.0.0.1:{self.port}"),
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                env=skiff_env(self.env),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"central exited with {code} while starting\n{self.log_tail()}")
            if self._healthy():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"central not healthy after {START_TIMEOUT:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL; assert a clean exit (code 0)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)  # every thread's stack to the log: where it hangs
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"central ignored SIGTERM for {STOP_TIMEOUT:.0f} s\n{self.log_tail(12000)}"
            ) from None
        assert code == 0, f"central exited {code} on SIGTERM\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return "--- central log (tail)\n" + self.log_text()[-chars:]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return jsonlib.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def set_toml_settings(path: Path, settings: dict[str, object]) -> None:
    """Replace or add top-level ``key = value`` lines in a TOML file."""
    lines = path.read_text().splitlines() if path.exists() else []
    for key, value in settings.items():
        line = f"{key} = {_toml_value(value)}"
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i, old in enumerate(lines):
            if pattern.match(old):
                lines[i] = line
                break
        else:
            # top-level keys must come before the first [table] header
            first_table = next(
                (i for i, old in enumerate(lines) if old.lstrip().startswith("[")), len(lines)
            )
            lines.insert(first_table, line)
    path.write_text("\n".join(lines) + "\n")


def init_central(data_dir: Path, **config: object) -> CentralProcess:
    """Run ``skiff central init`` into ``data_dir``; return the (unstarted) process.

    Keyword arguments become top-level settings in ``data_dir/central.toml``.
    """
    proc = run_skiff("central", "init", "--data-dir", str(data_dir), "--json", env=skiff_env())
    try:
        token = jsonlib.loads(proc.stdout)["admin_token"]
    except (ValueError, KeyError) as e:
        raise AssertionError(f"central init printed no admin_token:\n{proc.stdout}") from e
    if config:
        set_toml_settings(Path(data_dir) / "central.toml", config)
    return CentralProcess(Path(data_dir), token)


def api(
    central: CentralProcess,
    method: str,
    path: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | _DefaultToken | None = ADMIN,
    timeout: float = 30,
) -> ApiResponse:
    """One synchronous request to ``central``; never raises on an HTTP status.

    ``token`` defaults to the admin token; pass ``None`` to send no
    ``Authorization`` header.
    """
    hdrs = dict(headers or {})
    body = data
    if json is not None:
        body = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if isinstance(token, _DefaultToken):
        token = central.token
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    url = urlsplit(central.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return ApiResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def api_ok(central: CentralProcess, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    """Like ``api`` but assert ``status`` and return the decoded JSON (or None)."""
    resp = api(central, method, path, **kw)
    assert resp.status == status, (
        f"{method} {path}: expected {status}, got {resp.status}: {resp.body[:2000]!r}"
    )
    return resp.json() if resp.body else None


def unique(prefix: str) -> str:
    """A fresh valid name, so tests sharing one central do not collide."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def put_blob(central: CentralProcess, data: bytes) -> str:
    """Upload ``data`` as a blob (201 or 200) and return its digest."""
    digest = sha256_digest(data)
    resp = api(central, "PUT", f"/api/v1/blobs/{digest}", data=data)
    assert resp.status in (200, 201), f"PUT blob: {resp.status} {resp.body[:2000]!r}"
    return digest


def register(
    central: CentralProcess,
    model: str,
    version: str | None = None,
    *,
    files: dict[str, bytes] | None = None,
    token: str | _DefaultToken | None = ADMIN,
    **body: Any,
) -> dict[str, Any]:
    """Upload ``files`` (default: a linear ONNX model) and register a version (201).

    Returns:
        The version record.
    """
    if files is None:
        from tests.onnx_models import linear_model

        files = {"model.onnx": linear_model()}
    entries = [{"path": path, "digest": put_blob(central, data)} for path, data in files.items()]
    payload: dict[str, Any] = {"files": entries, **body}
    if version is not None:
        payload["version"] = version
    record: dict[str, Any] = api_ok(
        central, "POST", f"/api/v1/models/{model}/versions", 201, json=payload, token=token
    )
    return record


def all_changes(central: CentralProcess, since: int = 0) -> list[dict[str, Any]]:
    """Every change after ``since``, following ``next`` (bounded)."""
    items: list[dict[str, Any]] = []
    for _ in range(1000):
        page = api_ok(central, "GET", f"/api/v1/changes?since={since}&limit=1000")
        items.extend(page["items"])
        if not page["items"]:
            return items
        since = page["next"]
    raise AssertionError("change log did not end after 1000 pages")


def all_pages(central: CentralProcess, path: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every item of a paginated list, following ``next_cursor`` (bounded)."""
    sep = "&" if "?" in path else "?"
    items: list[dict[str, Any]] = []
    url = f"{path}{sep}limit={limit}"
    for _ in range(10_000):
        page = api_ok(central, "GET", url)
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        url = f"{path}{sep}limit={limit}&cursor={quote(page['next_cursor'], safe='')}"
    raise AssertionError(f"{path}: pagination did not end")


@contextlib.contextmanager
def running_central(
    data_dir: Path, *, env: dict[str, str] | None = None, **config: object
) -> Iterator[CentralProcess]:
    """Init and start a central in ``data_dir``; stop it on exit, even on failure.

    ``env`` adds to the server's environment; keyword arguments are settings, as in
    ``init_central``.
    """
    central = init_central(data_dir, **config)
    central.env.update(env or {})
    try:
        central.start()
        yield central
    finally:
        try:
            central.stop()
        finally:
            central.kill()


def frame_lengths(data: bytes) -> list[int]:
    """The compressed length of each frame in ``data``."""
    walker, lengths, current = FrameWalker(), [], 0
    for piece in walker.split(data):
        current += len(piece.data)
        if piece.ends_frame:
            lengths.append(current)
            current = 0
    assert current == 0 and walker.done
    return lengths
