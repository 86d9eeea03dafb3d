"""Tests for shared.manifest: wire round trips, path attacks and signed manifests."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.canonical import canonical_json
from shared.digest import sha256_digest
from shared.envelope import sign_envelope
from shared.errors import FormatError, InvalidInputError, UnsignedError
from shared.keys import SigningKey
from shared.manifest import (
    FileEntry,
    Manifest,
    manifest_digest,
    metadata_digest,
    validate_path,
    verify_manifest,
)
from shared.trust import new_root

D1, D2, D3 = (sha256_digest(bytes([i])) for i in range(3))


def _file(path: str = "model.onnx", **changes: Any) -> FileEntry:
    return replace(FileEntry(path, D1, 10, D2, 8), **changes)


def _manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "model": "resnet50",
        "version": "1.2.0-rc.1",
        "format": "onnx",
        "files": (_file("weights/b.bin"), _file("model.onnx")),
        "metadata_digest": D3,
        "parent": "1.1.0",
        "branch": "main",
        "created_at": "2026-11-26T10:00:00Z",
    }
    fields.update(changes)
    return Manifest(**fields)


def test_round_trip() -> None:
    manifest = _manifest()
    d = manifest.to_dict()
    assert d["_type"] == "manifest"
    assert [f["path"] for f in d["files"]] == ["model.onnx", "weights/b.bin"]
    assert Manifest.from_dict(d) == manifest
    assert Manifest.from_dict(d).to_dict() == d


def test_files_sorted_on_construction() -> None:
    assert [f.path for f in _manifest().files] == ["model.onnx", "weights/b.bin"]


def test_root_manifest_without_parent() -> None:
    manifest = _manifest(parent=None)
    assert Manifest.from_dict(manifest.to_dict()).parent is None


def test_file_entry_round_trip() -> None:
    entry = _file("a/b/c.onnx")
    assert FileEntry.from_dict(entry.to_dict()) == entry


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "/etc/passwd",
        "a//b",
        "a\\b",
        "..",
        ".",
        "a/./b",
        "a/../../b",
        "a/",
        "",
        "a\0b",
        "a\nb",
        "x" * 1025,
    ],
)
def test_path_attacks(path: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_path(path)
    with pytest.raises(InvalidInputError):
        _file(path)
    with pytest.raises(FormatError):
        FileEntry.from_dict({**_file().to_dict(), "path": path})


@pytest.mark.parametrize("path", ["model.onnx", "a/b/c", "x" * 1024, "..a", "a..", ".cfg"])
def test_path_allowed(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "changes",
    [
        {"size": -1},
        {"size": True},
        {"zsize": 1.0},
        {"size": "10"},
        {"size": 2**63},
        {"digest": "sha256:abc"},
        {"zdigest": D1.upper()},
    ],
)
def test_file_entry_rejects(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        _file(**changes)
    with pytest.raises(FormatError):
        FileEntry.from_dict({**_file().to_dict(), **changes})


def test_file_entry_rejects_missing_or_extra_fields() -> None:
    d = _file().to_dict()
    with pytest.raises(FormatError):
        FileEntry.from_dict({k: v for k, v in d.items() if k != "zsize"})
    with pytest.raises(FormatError):
        FileEntry.from_dict({**d, "mode": 0o755})


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "../x"},
        {"model": "ResNet"},
        {"version": "1.2"},
        {"version": "01.2.3"},
        {"parent": "latest"},
        {"branch": "a b"},
        {"format": ""},
        {"format": "ONNX"},
        {"metadata_digest": "sha256:"},
        {"created_at": "yesterday"},
        {"files": (_file("a"), _file("a"))},
        {"files": ("model.onnx",)},
    ],
)
def test_manifest_rejects(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        _manifest(**changes)


def test_manifest_from_dict_rejects() -> None:
    good = _manifest().to_dict()
    bad: list[dict[str, Any]] = [
        {**good, "_type": "root"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "parent"},
        {**good, "files": "model.onnx"},
        {**good, "files": [good["files"][0], good["files"][0]]},
        {**good, "version": "v1"},
    ]
    for d in bad:
        with pytest.raises(FormatError):
            Manifest.from_dict(d)


def test_manifest_digest_is_canonical() -> None:
    d = _manifest().to_dict()
    reordered = dict(reversed(list(d.items())))
    assert manifest_digest(d) == manifest_digest(reordered) == sha256_digest(canonical_json(d))


def test_metadata_digest_allows_floats() -> None:
    meta = {"training": {"loss": 0.125, "epochs": 3}}
    assert metadata_digest(meta) == sha256_digest(b'{"training":{"epochs":3,"loss":0.125}}')


ROOT_KEY, TARGETS_KEY = SigningKey.generate(), SigningKey.generate()
ROOT = new_root(
    1, datetime(2027, 11, 26, tzinfo=UTC), [ROOT_KEY.public_key], [TARGETS_KEY.public_key]
)


def test_verify_manifest() -> None:
    manifest = _manifest()
    env = sign_envelope(manifest.to_dict(), [TARGETS_KEY])
    assert verify_manifest(ROOT, env) == manifest


def test_verify_manifest_signed_by_wrong_role() -> None:
    env = sign_envelope(_manifest().to_dict(), [ROOT_KEY])
    with pytest.raises(UnsignedError, match="role targets"):
        verify_manifest(ROOT, env)


def test_verify_manifest_tampered_file_digest() -> None:
    env = sign_envelope(_manifest().to_dict(), [TARGETS_KEY])
    tampered = copy.deepcopy(env)
    tampered["signed"]["files"][0]["digest"] = D3
    with pytest.raises(UnsignedError):
        verify_manifest(ROOT, tampered)


def test_verify_manifest_signed_but_malformed() -> None:
    d = _manifest().to_dict()
    d["files"][0]["path"] = "../../etc/passwd"
    env = sign_envelope(d, [TARGETS_KEY])
    with pytest.raises(FormatError):
        verify_manifest(ROOT, env)
