"""The ``skiff`` command line, run as a subprocess against a real central.

Each test starts its own central (fixture ``central``) and drives it only
through ``skiff``: push, browse, govern, pull with verification, and the
failures a user meets (refused transitions, tampered blobs, missing token).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.onnx_models import linear_model
from tests.support import CentralProcess, api_ok, free_port, run_skiff


def skiff_json(central: CentralProcess, *args: str) -> Any:
    """Run ``skiff <args> --json`` and parse what it prints."""
    proc = run_skiff(*args, "--json", env=central.env)
    return json.loads(proc.stdout)


def assert_one_line_error(proc: Any, *fragments: str) -> str:
    """Exit 1 with exactly one ``skiff: error:`` line on stderr that mentions ``fragments``."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("skiff: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return str(lines[0])


def write_model_dir(root: Path) -> dict[str, bytes]:
    """A model directory with nested files; returns relative path -> bytes."""
    files = {
        "model.onnx": linear_model(2.0),
        "config.json": b'{"threshold": 0.5}\n',
        "assets/labels.txt": b"cat\ndog\n",
        "assets/deep/blob.bin": os.urandom(300_000),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def push_linear(central: CentralProcess, tmp_path: Path, version: str, scale: float = 1.0) -> Any:
    path = tmp_path / f"linear-{version}.onnx"
    path.write_bytes(linear_model(scale))
    return skiff_json(
        central,
        *("push", "fraud", str(path), "--version", version),
        *("--metric", f"auc={0.8 + scale / 100}", "--param", "lr=0.001"),
        *("--tag", "team=risk", "--dataset", "s3://data/fraud-2026"),
    )


def test_push_file_then_list_and_show(central: CentralProcess, tmp_path: Path) -> None:
    record = push_linear(central, tmp_path, "1.0.0")
    assert record["model"] == "fraud"
    assert record["version"] == "1.0.0"
    assert record["format"] == "onnx"
    assert [f["path"] for f in record["files"]] == ["linear-1.0.0.onnx"]
    assert record["tags"] == {"team": "risk"}
    training = record["metadata"]["training"]
    assert training["metrics"] == {"auc": pytest.approx(0.81)}
    assert training["params"] == {"lr": "0.001"}
    assert training["datasets"] == ["s3://data/fraud-2026"]
    assert record["signature"]["inputs"][0]["name"] == "X"

    push_linear(central, tmp_path, "1.1.0", scale=3.0)
    versions = skiff_json(central, "versions", "list", "fraud")
    assert [v["version"] for v in versions] == ["1.1.0", "1.0.0"]
    models = skiff_json(central, "models", "list")
    assert [m["name"] for m in models] == ["fraud"]
    shown = skiff_json(central, "models", "show", "fraud")
    assert shown["latest_version"] == "1.1.0"

    table = run_skiff("versions", "list", "fraud", env=central.env).stdout
    assert "VERSION" in table and "1.1.0" in table and "X:FP32" in table
    text = run_skiff("versions", "show", "fraud@1.0.0", env=central.env).stdout
    assert "linear-1.0.0.onnx" in text and "auc=0.81" in text


def test_push_directory_and_pull_byte_for_byte(central: CentralProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    pushed = write_model_dir(src)
    record = skiff_json(central, "push", "detector", str(src), "--version", "0.1.0")
    assert sorted(f["path"] for f in record["files"]) == sorted(pushed)

    again = run_skiff("push", "detector", str(src), "--version", "0.2.0", env=central.env)
    assert "already stored" in again.stderr  # content addressing: nothing re-uploaded

    out = tmp_path / "out"
    result = skiff_json(central, "pull", "detector@0.1.0", "-o", str(out))
    assert result["version"] == "0.1.0"
    assert files_under(out) == pushed


def test_push_refuses_symlinks(central: CentralProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_model_dir(src)
    (src / "link.onnx").symlink_to(src / "model.onnx")
    proc = run_skiff("push", "detector", str(src), env=central.env, check=False)
    assert_one_line_error(proc, "symbolic link", "link.onnx")
    assert skiff_json(central, "models", "list") == []


def test_push_meta_file_merged_under_flags(central: CentralProcess, tmp_path: Path) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text(
        json.dumps(
            {
                "training": {"params": {"lr": "0.1", "epochs": "3"}, "metrics": {"auc": 0.5}},
                "provenance": {"code_version": "abc123"},
            }
        )
    )
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_model())
    record = skiff_json(
        central,
        *("push", "fraud", str(model), "--meta-file", str(meta)),
        *("--param", "lr=0.01", "--metric", "f1=0.7"),
    )
    assert record["version"]  # chosen by central when not given
    assert record["metadata"]["training"]["params"] == {"lr": "0.01", "epochs": "3"}
    assert record["metadata"]["training"]["metrics"] == {"auc": 0.5, "f1": 0.7}
    assert record["metadata"]["provenance"] == {"code_version": "abc123"}


def test_alias_set_show_history_and_rollback(central: CentralProcess, tmp_path: Path) -> None:
    push_linear(central, tmp_path, "1.0.0")
    push_linear(central, tmp_path, "1.1.0", scale=2.0)

    assert skiff_json(central, "alias", "set", "fraud", "production", "1.0.0")["version"] == "1.0.0"
    moved = run_skiff("alias", "set", "fraud", "production", "1.1.0", env=central.env)
    assert "fraud@production -> 1.1.0" in moved.stdout
    assert skiff_json(central, "versions", "show", "fraud@production")["version"] == "1.1.0"
    aliases = skiff_json(central, "alias", "list", "fraud")
    assert [(a["alias"], a["version"]) for a in aliases] == [("production", "1.1.0")]

    history = skiff_json(central, "alias", "history", "fraud", "production")
    assert [h["version"] for h in history] == ["1.1.0", "1.0.0"]

    back = skiff_json(central, "rollback", "fraud", "production")
    assert back["version"] == "1.0.0"
    assert skiff_json(central, "versions", "show", "fraud@production")["version"] == "1.0.0"

    out = tmp_path / "prod"
    run_skiff("pull", "fraud@production", "-o", str(out), env=central.env)
    assert files_under(out) == {"linear-1.0.0.onnx": linear_model(1.0)}


def test_stage_set_and_refused_transition(central: CentralProcess, tmp_path: Path) -> None:
    push_linear(central, tmp_path, "1.0.0")
    moved = skiff_json(central, "stage", "set", "fraud@1.0.0", "training")
    assert moved["stage"] == "training"

    proc = run_skiff("stage", "set", "fraud@1.0.0", "production", env=central.env, check=False)
    assert_one_line_error(proc, "production")
    assert skiff_json(central, "versions", "show", "fraud@1.0.0")["stage"] == "training"


def test_pull_with_pinned_root(central: CentralProcess, tmp_path: Path) -> None:
    push_linear(central, tmp_path, "1.0.0")
    root_file = tmp_path / "root.json"
    root_file.write_text(json.dumps(api_ok(central, "GET", "/api/v1/root")))
    out = tmp_path / "out"
    proc = run_skiff(
        "pull", "fraud@1.0.0", "-o", str(out), "--root", str(root_file), env=central.env
    )
    assert "first use" not in proc.stderr
    assert files_under(out) == {"linear-1.0.0.onnx": linear_model(1.0)}


def test_pull_refuses_a_root_not_signed_by_itself(central: CentralProcess, tmp_path: Path) -> None:
    push_linear(central, tmp_path, "1.0.0")
    root = api_ok(central, "GET", "/api/v1/root")
    root["signed"]["version"] += 1  # the signature no longer covers the document
    root_file = tmp_path / "root.json"
    root_file.write_text(json.dumps(root))
    out = tmp_path / "out"
    proc = run_skiff(
        "pull",
        "fraud@1.0.0",
        "-o",
        str(out),
        "--root",
        str(root_file),
        env=central.env,
        check=False,
    )
    assert_one_line_error(proc, "pinned root")
    assert not out.exists()


def test_pull_detects_tampered_blob(central: CentralProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_model_dir(src)
    record = skiff_json(central, "push", "detector", str(src), "--version", "1.0.0")
    target = next(f for f in record["files"] if f["path"] == "assets/deep/blob.bin")
    hexd = target["digest"].removeprefix("sha256:")
    stored = [p for p in (central.data_dir / "blobs").rglob(f"*{hexd}*") if p.is_file()]
    assert len(stored) == 1, stored
    data = bytearray(stored[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(data))

    out = tmp_path / "out"
    proc = run_skiff("pull", "detector@1.0.0", "-o", str(out), env=central.env, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert "skiff: error:" in proc.stderr
    assert not out.exists() or files_under(out) == {}, files_under(out)


def test_pull_into_existing_dir_leaves_it_clean_on_failure(
    central: CentralProcess, tmp_path: Path
) -> None:
    record = push_linear(central, tmp_path, "1.0.0")
    hexd = record["files"][0]["digest"].removeprefix("sha256:")
    stored = next(p for p in (central.data_dir / "blobs").rglob(f"*{hexd}*") if p.is_file())
    stored.write_bytes(stored.read_bytes()[:-4] + b"\0\0\0\0")

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_skiff("pull", "fraud@1.0.0", "-o", str(out), env=central.env, check=False)
    assert proc.returncode != 0
    assert "linear-1.0.0.onnx" in proc.stderr
    assert files_under(out) == {"keep.txt": b"mine"}


def test_errors_without_token_are_one_line(central: CentralProcess) -> None:
    env = {k: v for k, v in central.env.items() if k != "SKIFF_TOKEN"}
    proc = run_skiff("models", "list", env=env, check=False)
    assert_one_line_error(proc, "SKIFF_TOKEN")
    proc = run_skiff("models", "list", "--token", "not-a-token", env=env, check=False)
    assert_one_line_error(proc)


def test_unknown_version_and_unreachable_central(central: CentralProcess) -> None:
    proc = run_skiff("versions", "show", "nope@1.0.0", env=central.env, check=False)
    assert_one_line_error(proc)

    env = dict(central.env, SKIFF_URL=f"http://127.0.0.1:{free_port()}")
    proc = run_skiff("models", "list", env=env, check=False)
    assert_one_line_error(proc, "cannot reach central at")


def test_usage_errors_exit_2(central: CentralProcess) -> None:
    proc = run_skiff("versions", "show", "no-at-sign", env=central.env, check=False)
    assert proc.returncode == 2
    proc = run_skiff("push", "m", "x", "--metric", "auc=high", env=central.env, check=False)
    assert proc.returncode == 2
    assert "finite number" in proc.stderr


def test_search_follows_cursors_up_to_limit(central: CentralProcess, tmp_path: Path) -> None:
    for i in range(3):
        push_linear(central, tmp_path, f"1.{i}.0", scale=float(i + 1))
    found = skiff_json(central, "search", "name = 'fraud'", "--limit", "2")
    assert len(found) == 2
    found = skiff_json(central, "search", "metrics.auc > 0.815", "--order-by", "metrics.auc")
    assert sorted(v["version"] for v in found) == ["1.1.0", "1.2.0"]
    proc = run_skiff("search", "bogus ~ 1", env=central.env, check=False)
    assert_one_line_error(proc)


def test_tokens_and_changes(central: CentralProcess, tmp_path: Path) -> None:
    created = skiff_json(central, "token", "create", "--name", "ci", "--role", "viewer")
    assert created["token"] and created["role"] == "viewer"
    listed = skiff_json(central, "token", "list")
    assert created["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)

    viewer_env = dict(central.env, SKIFF_TOKEN=created["token"])
    assert run_skiff("models", "list", "--json", env=viewer_env).stdout.strip() == "[]"
    model = tmp_path / "m.onnx"
    model.write_bytes(linear_model())
    proc = run_skiff("push", "fraud", str(model), env=viewer_env, check=False)
    assert_one_line_error(proc)

    run_skiff("token", "revoke", created["id"], env=central.env)
    proc = run_skiff("models", "list", env=viewer_env, check=False)
    assert_one_line_error(proc)

    expiring = skiff_json(
        central, "token", "create", "--name", "tmp", "--role", "viewer", "--expires", "2h"
    )
    assert expiring["expires_at"]

    changes = skiff_json(central, "changes")
    kinds = [c["kind"] for c in changes["items"]]
    assert "token.created" in kinds and "token.revoked" in kinds


@pytest.mark.timeout(300)
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SKIFF_URL", "SKIFF_TOKEN")}
    env["TMPDIR"] = str(tmp_path)
    proc = run_skiff("quickstart", env=env, check=False, timeout=240)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    out = proc.stdout
    assert "demo-mul" in out and "1.1.0" in out
    assert "export SKIFF_TOKEN=" in out
    assert "verified against root version" in out
    assert list(tmp_path.glob("skiff-quickstart-*")) == []  # its temp files are removed


def test_quickstart_names_the_failing_step(central: CentralProcess) -> None:
    proc = run_skiff(
        "quickstart", "--data-dir", str(central.data_dir), env=central.env, check=False
    )
    assert proc.returncode == 1
    assert "quickstart step 'initialise a data dir' failed" in proc.stderr
    assert "already initialised" in proc.stderr
