"""Plaintext HTTP only on loopback unless allowed; TLS settings come in pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from central.config import CentralConfig
from edge_agent.config import EdgeConfig
from shared.errors import InvalidInputError
from shared.tls import is_loopback

ROOT = json.dumps({"signed": {}, "signatures": []})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),  # noqa: S104 - a host name under test, nothing binds
        ("::", False),
        ("10.0.0.5", False),
        ("central.example", False),
        ("localhost.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"listen": "0.0.0.0:8080"}, "refusing plaintext HTTP on 0.0.0.0"),
        ({"listen": "10.1.2.3:8080"}, "allow_plaintext"),
        ({"listen": "0.0.0.0:8080", "allow_plaintext": True}, None),
        ({"listen": "0.0.0.0:8080", "tls_cert_file": Path("c"), "tls_key_file": Path("k")}, None),
        ({"listen": "[::1]:8080"}, None),
        ({"tls_cert_file": Path("c")}, "set together"),
    ],
)
def test_central_plaintext_policy(
    tmp_path: Path, settings: dict[str, Any], error: str | None
) -> None:
    if error is None:
        CentralConfig(data_dir=tmp_path, **settings)
    else:
        with pytest.raises(InvalidInputError, match=error):
            CentralConfig(data_dir=tmp_path, **settings)


def _edge(**settings: Any) -> EdgeConfig:
    base: dict[str, Any] = {
        "central_url": "http://127.0.0.1:8080",
        "device_id": "cam",
        "token": "skf_x",
        "fleet": "plant",
        "trusted_root": ROOT,
    }
    return EdgeConfig(**{**base, **settings})


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"central_url": "http://central.example:8080"}, "to central at central.example"),
        ({"central_url": "http://central.example:8080", "allow_plaintext": True}, None),
        ({"central_url": "https://central.example:8443"}, None),
        ({"central_url": "http://localhost:8080"}, None),
        ({"listen": "0.0.0.0:8500"}, "refusing plaintext HTTP on 0.0.0.0"),
        ({"listen": "0.0.0.0:8500", "tls_cert_file": Path("c"), "tls_key_file": Path("k")}, None),
        ({"tls_key_file": Path("k")}, "set together"),
    ],
)
def test_edge_plaintext_policy(settings: dict[str, Any], error: str | None) -> None:
    if error is None:
        _edge(**settings)
    else:
        with pytest.raises(InvalidInputError, match=error):
            _edge(**settings)


def test_tls_paths_are_read_from_toml(tmp_path: Path) -> None:
    (tmp_path / "central.toml").write_text(
        'listen = "0.0.0.0:8443"\ntls_cert_file = "tls/cert.pem"\ntls_key_file = "tls/key.pem"\n'
    )
    config = CentralConfig.load(tmp_path)
    assert config.tls_cert_file == Path("tls/cert.pem")
    with pytest.raises(InvalidInputError, match="cannot load TLS certificate"):
        config.ssl_context()
