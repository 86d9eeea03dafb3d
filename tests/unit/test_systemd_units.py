"""The systemd units load cleanly in ``systemd-analyze verify`` and carry their hardening.

``verify`` needs the ``ExecStart`` binary to exist, so the check runs on copies whose
``/usr/local/bin/skiff`` is replaced by an executable that exists here; everything else in
the files is verified as shipped. ``verify`` exits 0 even for an unknown or misspelt
directive (it only warns), so every line it prints about a unit fails the test.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

UNIT_DIR = REPO_ROOT / "systemd"
UNITS = ("skiff-central.service", "skiff-edge.service")
SKIFF_BIN = "/usr/local/bin/skiff"
SIDELOAD_DIR = "/srv/skiff-edge/sideload"

# Directive -> value that both units must carry exactly.
COMMON: dict[str, str] = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "2",
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "30",
    "LimitNOFILE": "65536",
}
SPECIFIC: dict[str, dict[str, str]] = {
    "skiff-central.service": {
        "StateDirectory": "skiff-central",
        "MemoryDenyWriteExecute": "yes",
    },
    "skiff-edge.service": {
        "StateDirectory": "skiff-edge",
        "CacheDirectory": "skiff-edge",
        "ReadWritePaths": SIDELOAD_DIR,
        # onnxruntime execution providers may generate code at run time (see the unit)
        "MemoryDenyWriteExecute": "no",
    },
}
EXEC_START: dict[str, list[str]] = {
    "skiff-central.service": [SKIFF_BIN, "central", "serve", "--data-dir", "${STATE_DIRECTORY}"],
    "skiff-edge.service": [
        SKIFF_BIN,
        "edge",
        "run",
        "--config",
        "${CREDENTIALS_DIRECTORY}/edge.toml",
        "--data-dir",
        "${STATE_DIRECTORY}",
        "--sideload-dir",
        SIDELOAD_DIR,
    ],
}

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (.ci/run installs it)",
)


def service_section(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the ``[Service]`` section, values in file order."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not a Key=value line: {raw!r}"
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on the units of ``unit_dir``."""
    files = [str(unit_dir / name) for name in UNITS]
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def complaints(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines ``verify`` printed about our units."""
    text = proc.stdout + proc.stderr
    return [line for line in text.splitlines() if any(u in line for u in UNITS)]


def checkable_copies(tmp_path: Path, edit: dict[str, str] | None = None) -> Path:
    """Copies of the units with ExecStart pointing at an existing executable."""
    for name in UNITS:
        text = (UNIT_DIR / name).read_text(encoding="utf-8")
        assert SKIFF_BIN in text, f"{name}: ExecStart must run {SKIFF_BIN}"
        text = text.replace(SKIFF_BIN, sys.executable)
        for old, new in (edit or {}).items():
            text = text.replace(old, new)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = verify(checkable_copies(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert complaints(proc) == [], proc.stdout + proc.stderr


@needs_systemd_analyze
def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    # Guards the check above: a typo in a hardening line must not pass unnoticed.
    proc = verify(checkable_copies(tmp_path, {"ProtectSystem=strict": "ProtectSytem=strict"}))
    assert any("ProtectSytem" in line for line in complaints(proc)), proc.stdout + proc.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_carries_every_hardening_directive(name: str) -> None:
    directives = service_section(UNIT_DIR / name)
    expected = {**COMMON, **SPECIFIC[name]}
    for key, value in expected.items():
        assert key in directives, f"{name}: {key}= is missing"
        # the last assignment wins in systemd, except for the empty reset, checked as is
        assert directives[key][-1] == value, f"{name}: {key}={directives[key]}, want {value!r}"


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_runs_the_skiff_daemon(name: str) -> None:
    (exec_start,) = service_section(UNIT_DIR / name)["ExecStart"]
    assert shlex.split(exec_start) == EXEC_START[name]


def test_edge_reads_its_config_as_a_credential() -> None:
    directives = service_section(UNIT_DIR / "skiff-edge.service")
    assert directives["LoadCredential"] == ["edge.toml:/etc/skiff/edge.toml"]
