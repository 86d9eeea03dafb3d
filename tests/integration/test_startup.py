"""``skiff central serve`` refuses to start on a broken setup, and says why, and exits."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.support import REPO_ROOT, SKIFF, free_port, init_central, skiff_env

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
