"""Edge agent configuration: one frozen dataclass read from ``edge.toml``.

``skiff device enroll`` writes a complete file; ``skiff edge run`` flags override it.
Every setting is documented in ``docs/configuration.md`` (a test checks that).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import InvalidInputError
from shared.names import validate_name
from shared.tls import check_plaintext
from shared.tomlfile import render_toml as shared_render_toml


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Settings of one edge agent."""

    central_url: str
    device_id: str
    token: str = field(repr=False)  # never logged
    fleet: str
    trusted_root: str = field(repr=False)  # JSON of the root envelope provisioned at enrollment
    data_dir: Path = Path("/var/lib/skiff-edge")
    listen: str = "127.0.0.1:8500"
    sideload_dir: Path | None = None  # default: <data_dir>/sideload
    cache_budget_bytes: int = 10 * 1024**3
    sync_wait_seconds: float = 30.0  # long-poll length
    sync_backoff_initial_seconds: float = 1.0
    sync_backoff_max_seconds: float = 60.0
    report_interval_seconds: float = 30.0
    request_timeout_seconds: float = 30.0
    max_metadata_bytes: int = 16 * 1024**2  # largest sync answer or JSON document read
    max_request_bytes: int = 64 * 1024**2  # largest inference request body
    inference_threads: int = 2
    telemetry_interval_seconds: float = 10.0  # how often statistics are batched and uploaded
    telemetry_outbox_max_batches: int = 10_000  # oldest batches dropped (and counted) beyond
    log_level: str = "info"
    ca_file: Path | None = None  # CA bundle to verify central's TLS certificate
    tls_cert_file: Path | None = None  # PEM certificate; with tls_key_file, inference over HTTPS
    tls_key_file: Path | None = None  # PEM private key of tls_cert_file
    allow_plaintext: bool = False  # plain HTTP to or on non-loopback addresses
    cache_key_file: Path | None = None  # 0600 device key: blobs encrypted at rest

    def __post_init__(self) -> None:
        validate_name(self.device_id, "device id")
        validate_name(self.fleet, "fleet name")
        if not self.central_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"central_url must be http(s)://..., got {self.central_url!r}")
        if self.cache_budget_bytes <= 0:
            raise InvalidInputError("cache_budget_bytes must be positive")
        self.root_envelope()
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise InvalidInputError("tls_cert_file and tls_key_file must be set together")
        url = urlsplit(self.central_url)
        check_plaintext(
            "to central at",
            url.hostname or "",
            tls=url.scheme == "https",
            allow_plaintext=self.allow_plaintext,
        )
        check_plaintext(
            "on",
            self.host_port()[0],
            tls=self.tls_cert_file is not None,
            allow_plaintext=self.allow_plaintext,
        )

    def root_envelope(self) -> dict[str, Any]:
        try:
            value = json.loads(self.trusted_root)
        except ValueError as e:
            raise InvalidInputError(f"trusted_root is not JSON: {e}") from e
        if not isinstance(value, dict) or "signed" not in value:
            raise InvalidInputError("trusted_root must be a signed root envelope")
        return value

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise InvalidInputError(f"listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    @property
    def sideload_path(self) -> Path:
        return self.sideload_dir if self.sideload_dir is not None else self.data_dir / "sideload"

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> EdgeConfig:
        """Read ``path`` (TOML), then apply the non-None ``overrides``."""
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInputError(f"cannot read {path}: {e}") from e
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InvalidInputError(f"{path}: unknown settings {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in (
            "data_dir",
            "sideload_dir",
            "ca_file",
            "tls_cert_file",
            "tls_key_file",
            "cache_key_file",
        ):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        missing = {"central_url", "device_id", "token", "fleet", "trusted_root"} - set(values)
        if missing:
            raise InvalidInputError(f"{path}: missing settings {sorted(missing)}")
        return cls(**values)


def render_toml(values: dict[str, Any]) -> str:
    """An ``edge.toml`` for ``values``."""
    return shared_render_toml(values, header="Skiff edge agent; see docs/configuration.md")
