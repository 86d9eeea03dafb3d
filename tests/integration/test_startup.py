"""``skiff central serve`` refuses to start on a broken setup, and says why, and exits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from shared.manifest import verify_manifest
from shared.trust import load_trusted_root
from tests.support import (
    REPO_ROOT,
    SKIFF,
    CentralProcess,
    api_ok,
    free_port,
    init_central,
    register,
    run_skiff,
    skiff_env,
)

EXIT_WITHIN = 10.0


def _serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    cmd = [*SKIFF, "central", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    try:
        return subprocess.run(
            cmd,
            env=skiff_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=EXIT_WITHIN,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        # subprocess.run has killed the process; what it printed tells why it stuck
        raise AssertionError(
            f"central serve neither served nor exited within {EXIT_WITHIN:.0f} s; "
            f"output: {e.stdout!r} {e.stderr!r}"
        ) from None


def test_uninitialised_data_dir_exits_with_advice(tmp_path: Path) -> None:
    proc = _serve(tmp_path / "empty", free_port())
    assert proc.returncode != 0
    assert "central init" in proc.stdout + proc.stderr


def test_port_in_use_exits(tmp_path: Path) -> None:
    central = init_central(tmp_path / "central")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = _serve(central.data_dir, busy.getsockname()[1])
    assert proc.returncode != 0
    assert "in use" in proc.stdout + proc.stderr


def test_unreadable_signing_key_exits(tmp_path: Path) -> None:
    central = init_central(tmp_path / "central")
    key_file = central.data_dir / "keys" / "targets.key"
    assert key_file.exists()
    key_file.write_text("garbage\n")
    proc = _serve(central.data_dir, central.port)
    assert proc.returncode != 0
    assert "key" in (proc.stdout + proc.stderr).lower()


def test_signing_keys_can_live_outside_the_data_dir(tmp_path: Path) -> None:
    data_dir, key_dir = tmp_path / "data", tmp_path / "vault" / "keys"
    out = run_skiff(
        "central",
        "init",
        "--data-dir",
        str(data_dir),
        "--key-dir",
        str(key_dir),
        "--json",
        env=skiff_env(),
    )
    assert not (data_dir / "keys").exists()
    for name in ("root.key", "targets.key"):
        assert (key_dir / name).stat().st_mode & 0o777 == 0o600
    central = CentralProcess(data_dir, json.loads(out.stdout)["admin_token"])
    central.start()
    try:
        register(central, "outside", "1.0.0")
        root = load_trusted_root(api_ok(central, "GET", "/api/v1/root"))
        manifest = api_ok(central, "GET", "/api/v1/models/outside/versions/1.0.0/manifest")
        assert verify_manifest(root, manifest).version == "1.0.0"
    finally:
        central.stop()
    again = run_skiff(
        "central",
        "init",
        "--data-dir",
        str(tmp_path / "other"),
        "--key-dir",
        str(key_dir),
        env=skiff_env(),
        check=False,
    )
    assert again.returncode != 0
    assert "already initialised" in again.stderr


def test_sigusr2_logs_every_thread_and_central_goes_on(tmp_path: Path) -> None:
    central = init_central(tmp_path / "data")
    central.start()
    try:
        logged = len(central.log_text())
        assert central.proc is not None
        central.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        # the dump is written as it goes: wait for the event loop's thread, in app.py
        while "central/app.py" not in central.log_text()[logged:]:
            assert time.monotonic() < deadline, central.log_tail()
            time.sleep(0.1)
        assert "most recent call first" in central.log_text()[logged:]
        register(central, "after-dump", "1.0.0")
    finally:
        central.stop()  # and it still stops cleanly on SIGTERM
