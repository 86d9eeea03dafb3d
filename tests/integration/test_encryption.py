"""Encryption at rest through the real server: no plaintext on disk, same bytes on the wire.

Also: turning encryption on migrates old blobs (and resumes after a crash), the master
key rotates offline, and central refuses to start without the right master key.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.codec import compress, decompress
from shared.digest import sha256_digest
from tests.onnx_models import broken_model, linear_model
from tests.support import (
    REPO_ROOT,
    SKIFF,
    CentralProcess,
    api,
    api_ok,
    put_blob,
    register,
    run_skiff,
    running_central,
    set_toml_settings,
    skiff_env,
    unique,
)

SEG = 4096  # small segments, so every range below crosses segment boundaries
MAGIC = b"SKFE1"


def _payload() -> tuple[bytes, bytes]:
    """A blob and a marker inside it that stays visible in its zstd form (random bytes)."""
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}".encode()
    data = os.urandom(3 * SEG) + marker + os.urandom(5 * SEG + 123)
    assert marker in compress(data)  # so its absence on disk means encryption, not zstd
    return data, marker


def _gen_key(path: Path) -> str:
    proc = run_skiff("keys", "gen-master", "-o", str(path), "--json", env=skiff_env())
    assert path.stat().st_mode & 0o777 == 0o600
    key_id: str = json.loads(proc.stdout)["master_key_id"]
    return key_id


def _blob_file(central: CentralProcess, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return central.data_dir / "blobs" / "sha256" / hexd[:2] / f"{hexd}.zst"


def _download(central: CentralProcess, digest: str, range_: str | None = None) -> bytes:
    headers = {} if range_ is None else {"Range": range_}
    resp = api(central, "GET", f"/api/v1/blobs/{digest}", headers=headers)
    assert resp.status == (200 if range_ is None else 206), resp.body[:500]
    return resp.body


def _serve_output(central: CentralProcess) -> tuple[int, str]:
    """Run ``central serve`` expecting it to refuse; its exit code and output."""
    cmd = [*SKIFF, "central", "serve", "--data-dir", str(central.data_dir)]
    cmd += ["--listen", f"127.0.0.1:{central.port}"]
    proc = subprocess.run(
        cmd,
        env=skiff_env(central.env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _assert_no_key_material(central: CentralProcess, *key_files: Path) -> None:
    data_files = [central.log_path, *sorted(central.data_dir.glob("registry.db*"))]
    stored = b"".join(p.read_bytes() for p in data_files if p.is_file())
    for key_file in key_files:
        text = key_file.read_text().strip()
        for secret in (text.encode(), base64.b64decode(text)):
            assert secret not in stored, f"master key material of {key_file.name} leaked"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    path.parent.mkdir()
    _gen_key(path)
    return path


@pytest.fixture
def encrypted(tmp_path: Path, key_file: Path) -> Iterator[CentralProcess]:
    settings = {
        "encryption": "on",
        "master_key_file": str(key_file),
        "encryption_segment_bytes": SEG,
    }
    with running_central(tmp_path / "central", **settings) as central:
        yield central


def test_blob_files_hold_no_plaintext_and_reads_decrypt(
    encrypted: CentralProcess, key_file: Path
) -> None:
    data, marker = _payload()
    digest = put_blob(encrypted, data)
    on_disk = _blob_file(encrypted, digest).read_bytes()
    assert on_disk.startswith(MAGIC)
    assert marker not in on_disk

    resp = api(encrypted, "GET", f"/api/v1/blobs/{digest}")
    assert resp.status == 200
    full = resp.body
    assert decompress(full, len(data)) == data
    assert sha256_digest(full) == resp.headers["X-Skiff-Zdigest"]
    n = len(full)
    ranges = {
        "bytes=0-99": full[:100],
        f"bytes={SEG - 10}-{2 * SEG + 10}": full[SEG - 10 : 2 * SEG + 11],
        f"bytes={3 * SEG}-": full[3 * SEG :],
        "bytes=-50": full[-50:],
        f"bytes={n - 1}-{n + 100}": full[-1:],
    }
    for header, expected in ranges.items():
        assert _download(encrypted, digest, header) == expected, header
    etag = resp.headers["ETag"]
    again = api(encrypted, "GET", f"/api/v1/blobs/{digest}", headers={"If-None-Match": etag})
    assert again.status == 304
    _assert_no_key_material(encrypted, key_file)


def test_onnx_validation_pull_and_bundles_see_plaintext(
    encrypted: CentralProcess, tmp_path: Path
) -> None:
    model = unique("enc")
    version = register(encrypted, model, "1.0.0")  # ONNX validation reads the blob
    bad = put_blob(encrypted, broken_model())
    resp = api(
        encrypted,
        "POST",
        f"/api/v1/models/{model}/versions",
        json={"version": "1.0.1", "files": [{"path": "model.onnx", "digest": bad}]},
    )
    assert resp.status == 400 and "onnx" in resp.error()["message"].lower(), resp.body

    out = tmp_path / "pulled"
    run_skiff("pull", f"{model}@1.0.0", "-o", str(out), env=encrypted.env)
    assert (out / "model.onnx").read_bytes() == linear_model()

    fleet = unique("fleet")
    api_ok(encrypted, "PUT", f"/api/v1/models/{model}/aliases/stable", json={"version": "1.0.0"})
    api_ok(encrypted, "POST", "/api/v1/fleets", 201, json={"name": fleet})
    api_ok(encrypted, "PUT", f"/api/v1/fleets/{fleet}/models/{model}", json={"alias": "stable"})
    bundle = api(encrypted, "GET", f"/api/v1/fleets/{fleet}/bundle")
    assert bundle.status == 200, bundle.body[:500]
    digest = version["files"][0]["digest"]
    with tarfile.open(fileobj=io.BytesIO(bundle.body)) as tar:
        member = tar.extractfile(f"blobs/{digest.removeprefix('sha256:')}.zst")
        assert member is not None
        assert member.read() == _download(encrypted, digest)


def test_enabling_encryption_migrates_old_blobs(tmp_path: Path, key_file: Path) -> None:
    payloads = [_payload() for _ in range(3)]
    with running_central(tmp_path / "central") as central:
        digests = [put_blob(central, data) for data, _ in payloads]
        before = {d: _download(central, d) for d in digests}
        model = unique("old")
        register(central, model, "1.0.0")
    plain = {d: _blob_file(central, d).read_bytes() for d in digests}
    assert all(marker in plain[d] for d, (_, marker) in zip(digests, payloads, strict=True))

    set_toml_settings(
        central.data_dir / "central.toml",
        {"encryption": "on", "master_key_file": str(key_file), "encryption_segment_bytes": SEG},
    )
    central.start()
    try:
        for d, (_, marker) in zip(digests, payloads, strict=True):
            on_disk = _blob_file(central, d).read_bytes()
            assert on_disk.startswith(MAGIC) and marker not in on_disk
            assert _download(central, d) == before[d]
        assert "Encrypted" in central.log_text()
        api_ok(central, "GET", f"/api/v1/models/{model}/versions/1.0.0")
    finally:
        central.stop()

    # a crash between recording a data key and the rename leaves a plaintext file: resumed
    _blob_file(central, digests[0]).write_bytes(plain[digests[0]])
    central.start()
    try:
        assert _blob_file(central, digests[0]).read_bytes().startswith(MAGIC)
        assert _download(central, digests[0]) == before[digests[0]]
        assert _download(central, digests[1], "bytes=10-5000") == before[digests[1]][10:5001]
    finally:
        central.stop()

    set_toml_settings(central.data_dir / "central.toml", {"encryption": "off"})
    code, output = _serve_output(central)
    assert code != 0 and "encrypted at rest" in output, output


def test_rotate_master_rewraps_and_old_key_is_refused(
    encrypted: CentralProcess, key_file: Path, tmp_path: Path
) -> None:
    data, _ = _payload()
    digest = put_blob(encrypted, data)
    expected = _download(encrypted, digest)
    encrypted.stop()

    new_key = tmp_path / "keys" / "new.key"
    new_id = _gen_key(new_key)
    wrong = tmp_path / "keys" / "wrong.key"
    _gen_key(wrong)
    toml = encrypted.data_dir / "central.toml"
    args = ["keys", "rotate-master", "--data-dir", str(encrypted.data_dir), "--json"]
    wrong_args = ["--old-key-file", str(wrong), "--new-key-file", str(new_key)]
    proc = run_skiff(*args, *wrong_args, env=skiff_env(), check=False)
    assert proc.returncode != 0 and "not by the old key" in proc.stderr, proc.stderr

    result = json.loads(run_skiff(*args, "--new-key-file", str(new_key), env=skiff_env()).stdout)
    assert result["rewrapped"] == 1
    assert result["new_master_key_id"] == new_id

    code, output = _serve_output(encrypted)  # still configured with the old key
    assert code != 0 and new_id in output and "rotate-master" in output, output

    set_toml_settings(toml, {"master_key_file": str(new_key)})
    encrypted.start()
    assert _download(encrypted, digest) == expected
    _assert_no_key_material(encrypted, key_file, new_key)


def test_missing_or_exposed_master_key_refuses_to_start(tmp_path: Path, key_file: Path) -> None:
    with running_central(tmp_path / "central") as central:
        digest = put_blob(central, b"some model bytes")
    toml = central.data_dir / "central.toml"
    set_toml_settings(toml, {"encryption": "on"})
    code, output = _serve_output(central)
    assert code != 0 and "no master key" in output and "SKIFF_MASTER_KEY" in output, output

    set_toml_settings(toml, {"master_key_file": str(key_file)})
    key_file.chmod(0o644)
    code, output = _serve_output(central)
    assert code != 0 and "chmod 600" in output, output
    key_file.chmod(0o600)

    # the environment variable works too, when no key file is set
    lines = [ln for ln in toml.read_text().splitlines() if not ln.startswith("master_key_file")]
    toml.write_text("\n".join(lines) + "\n")
    central.env["SKIFF_MASTER_KEY"] = "not-a-key"
    code, output = _serve_output(central)
    assert code != 0 and "SKIFF_MASTER_KEY" in output and "not-a-key" not in output, output
    central.env["SKIFF_MASTER_KEY"] = key_file.read_text().strip()
    central.start()
    try:
        assert _blob_file(central, digest).read_bytes().startswith(MAGIC)
        assert decompress(_download(central, digest), 100) == b"some model bytes"
    finally:
        central.stop()
    _assert_no_key_material(central, key_file)
