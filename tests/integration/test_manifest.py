"""Signed manifests: verify with the served root, match the version, refuse tampering."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.errors import UnsignedError
from shared.trust import load_trusted_root
from tests.onnx_models import linear_model
from tests.support import CentralProcess, api, api_ok, register, unique


@pytest.fixture(scope="module")
def registered(central_module: CentralProcess) -> dict[str, Any]:
    model = unique("signed")
    register(central_module, model, "1.0.0")
    return register(
        central_module,
        model,
        "1.1.0",
        parent="1.0.0",
        files={"model.onnx": linear_model(3.0), "labels.txt": b"cat\ndog\n"},
        metadata={"training": {"metrics": {"auc": 0.9}, "params": {"lr": "0.1"}}},
    )


def _base(version: dict[str, Any]) -> str:
    return f"/api/v1/models/{version['model']}/versions/{version['version']}"


def _root(central: CentralProcess) -> Any:
    return load_trusted_root(api_ok(central, "GET", "/api/v1/root"))


def test_manifest_verifies_with_the_served_root(
    central_module: CentralProcess, registered: dict[str, Any]
) -> None:
    from shared.manifest import verify_manifest

    envelope = api_ok(central_module, "GET", _base(registered) + "/manifest")
    assert set(envelope) == {"signed", "signatures"}
    assert envelope["signatures"]
    verify_manifest(_root(central_module), envelope)


def test_manifest_matches_the_version_record(
    central_module: CentralProcess, registered: dict[str, Any]
) -> None:
    from shared.manifest import metadata_digest

    signed = api_ok(central_module, "GET", _base(registered) + "/manifest")["signed"]
    assert signed["model"] == registered["model"]
    assert signed["version"] == "1.1.0"
    assert signed["format"] == "onnx"
    assert signed["parent"] == "1.0.0"
    files = sorted(signed["files"], key=lambda f: f["path"])
    assert files == sorted(registered["files"], key=lambda f: f["path"])
    assert signed["metadata_digest"] == registered["metadata_digest"]

    metadata = api_ok(central_module, "GET", _base(registered) + "/metadata")
    assert metadata_digest(metadata) == registered["metadata_digest"]


def test_one_flipped_byte_fails_verification(
    central_module: CentralProcess, registered: dict[str, Any]
) -> None:
    from shared.manifest import verify_manifest

    envelope = api_ok(central_module, "GET", _base(registered) + "/manifest")
    root = _root(central_module)
    digest = envelope["signed"]["files"][0]["digest"]
    last = digest[-1]
    tampered = copy.deepcopy(envelope)
    tampered["signed"]["files"][0]["digest"] = digest[:-1] + ("0" if last != "0" else "1")
    with pytest.raises(UnsignedError):
        verify_manifest(root, tampered)

    renamed = copy.deepcopy(envelope)
    renamed["signed"]["version"] = "1.1.1"
    with pytest.raises(UnsignedError):
        verify_manifest(root, renamed)


def test_root_is_served_by_version(central_module: CentralProcess) -> None:
    current = api_ok(central_module, "GET", "/api/v1/root")
    version = current["signed"]["version"]
    assert api_ok(central_module, "GET", f"/api/v1/root/{version}") == current
    assert api(central_module, "GET", f"/api/v1/root/{version + 1}").status == 404


def test_alias_carries_the_manifest_digest(
    central_module: CentralProcess, registered: dict[str, Any]
) -> None:
    model = registered["model"]
    alias = api_ok(
        central_module,
        "PUT",
        f"/api/v1/models/{model}/aliases/production",
        json={"version": "1.1.0"},
    )
    assert alias["manifest_digest"] == registered["manifest_digest"]
