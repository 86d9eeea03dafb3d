"""Central configuration: one frozen dataclass, read from ``<data_dir>/central.toml``.

Every setting has its default and unit inline; ``docs/configuration.md`` documents each
one (a test checks that). Flags given on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidInputError
from shared.tls import check_plaintext, server_context

CONFIG_FILE = "central.toml"


@dataclass(frozen=True, slots=True)
class CentralConfig:
    """Settings of one central process."""

    data_dir: Path
    listen: str = "127.0.0.1:8080"
    max_upload_bytes: int = 10 * 1024**3  # one blob upload, uncompressed bytes
    max_json_bytes: int = 16 * 1024**2  # one JSON request body
    zstd_level: int = 3  # level used to compress blobs at rest and on the wire
    durability: str = "normal"  # SQLite synchronous mode in WAL: "normal" or "full"
    log_level: str = "info"
    root_expiry_days: int = 365  # validity of a newly signed root document
    alias_cache_refresh_seconds: float = 1.0  # how often other replicas' changes are read
    shutdown_timeout_seconds: float = 10.0  # grace period for in-flight requests on SIGTERM
    fleet_state_expiry_seconds: int = 7 * 24 * 3600  # validity of a signed fleet state
    fleet_state_check_seconds: float = 300.0  # how often states near expiry are re-signed
    rollout_check_seconds: float = 5.0  # how often running rollouts are judged
    policy_file: str = "policy.toml"  # compliance policy; relative to data_dir; absent: default
    audit_checkpoint_seconds: float = 300.0  # how often the audit log's head is signed
    auth_failure_limit: int = 5  # failed authentications per address in the window; 0: off
    auth_failure_window_seconds: float = 60.0  # window of auth_failure_limit (429 until decayed)
    webhook_max_attempts: int = 10  # tries of one webhook delivery before it is marked failed
    webhook_timeout_seconds: float = 10.0  # one webhook POST, connect to last byte
    webhook_concurrency: int = 8  # webhook deliveries in flight at once
    tls_cert_file: Path | None = None  # PEM certificate chain; with tls_key_file, serve HTTPS
    tls_key_file: Path | None = None  # PEM private key of tls_cert_file
    allow_plaintext: bool = False  # serve plain HTTP on a non-loopback address
    encryption: str = "off"  # blob files at rest: "off" or "on" (docs/encryption.md)
    master_key_file: Path | None = None  # base64 master key, mode 0600; unset: SKIFF_MASTER_KEY
    signing_key_dir: Path | None = None  # private signing keys; unset: <data_dir>/keys
    encryption_segment_bytes: int = 1024**2  # plaintext bytes per encrypted segment (new blobs)
    drift_psi_warn: float = 0.1  # PSI of a feature from which drift is reported as "warn"
    drift_psi_alert: float = 0.25  # PSI from which a feature is "alert"
    drift_ks_alert: float = 0.2  # KS statistic from which a feature is "alert"
    drift_min_samples: int = 200  # live values a feature needs before it is judged
    drift_check_seconds: float = 60.0  # how often versions with new telemetry are checked
    drift_window_seconds: float = 3600.0  # telemetry the background check looks back over

    def __post_init__(self) -> None:
        if self.durability not in ("normal", "full"):
            raise InvalidInputError(
                f"durability must be 'normal' or 'full', got {self.durability!r}"
            )
        if self.max_upload_bytes <= 0 or self.max_json_bytes <= 0:
            raise InvalidInputError("max_upload_bytes and max_json_bytes must be positive")
        if not 1 <= self.zstd_level <= 22:
            raise InvalidInputError(f"zstd_level must be 1..22, got {self.zstd_level}")
        if self.auth_failure_limit < 0 or self.auth_failure_window_seconds <= 0:
            raise InvalidInputError(
                "auth_failure_limit must be >= 0 and auth_failure_window_seconds positive"
            )
        if self.audit_checkpoint_seconds <= 0:
            raise InvalidInputError(
                f"audit_checkpoint_seconds must be positive, got {self.audit_checkpoint_seconds}"
            )
        if not 1 <= self.webhook_max_attempts <= 100 or not 1 <= self.webhook_concurrency <= 256:
            raise InvalidInputError(
                "webhook_max_attempts must be 1..100 and webhook_concurrency 1..256"
            )
        if not 0 < self.webhook_timeout_seconds <= 300:
            raise InvalidInputError(
                f"webhook_timeout_seconds must be in (0, 300], got {self.webhook_timeout_seconds}"
            )
        if self.encryption not in ("off", "on"):
            raise InvalidInputError(f"encryption must be 'off' or 'on', got {self.encryption!r}")
        if not 1024 <= self.encryption_segment_bytes <= 64 * 1024**2:
            raise InvalidInputError(
                "encryption_segment_bytes must be 1024..67108864, "
                f"got {self.encryption_segment_bytes}"
            )
        if not 0 < self.drift_psi_warn <= self.drift_psi_alert or not 0 < self.drift_ks_alert <= 1:
            raise InvalidInputError(
                "drift thresholds need 0 < drift_psi_warn <= drift_psi_alert and "
                "0 < drift_ks_alert <= 1"
            )
        drift_periods = (self.drift_check_seconds, self.drift_window_seconds)
        if self.drift_min_samples < 1 or min(drift_periods) <= 0:
            raise InvalidInputError(
                "drift_min_samples must be >= 1, drift_check_seconds and drift_window_seconds > 0"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise InvalidInputError("tls_cert_file and tls_key_file must be set together")
        check_plaintext(
            "on",
            self.host_port()[0],  # also validates listen
            tls=self.tls_cert_file is not None,
            allow_plaintext=self.allow_plaintext,
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def key_dir(self) -> Path:
        """Where the private signing keys are (relative paths are in data_dir)."""
        if self.signing_key_dir is None:
            return self.data_dir / "keys"
        return self.data_dir / self.signing_key_dir

    @property
    def master_key_path(self) -> Path | None:
        """The master key file (relative paths are in data_dir), or None: use the environment."""
        return None if self.master_key_file is None else self.data_dir / self.master_key_file

    @property
    def policy_path(self) -> Path:
        return self.data_dir / self.policy_file

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or None for plain HTTP; relative paths are in data_dir."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return server_context(self.data_dir / self.tls_cert_file, self.data_dir / self.tls_key_file)

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise InvalidInputError(f"listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    @classmethod
    def load(cls, data_dir: Path, **overrides: Any) -> CentralConfig:
        """Read ``central.toml`` from ``data_dir``, then apply non-None ``overrides``."""
        path = data_dir / CONFIG_FILE
        values: dict[str, Any] = {}
        if path.exists():
            try:
                values = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise InvalidInputError(f"{path}: {e}") from e
        known = {f.name for f in dataclasses.fields(cls)} - {"data_dir"}
        unknown = set(values) - known
        if unknown:
            raise InvalidInputError(f"{path}: unknown settings {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("tls_cert_file", "tls_key_file", "master_key_file", "signing_key_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(data_dir=data_dir, **values)


def default_toml() -> str:
    """The file that ``skiff central init`` writes: every setting at its default."""
    lines = ["# Skiff central settings; see docs/configuration.md"]
    for field in dataclasses.fields(CentralConfig):
        if field.name == "data_dir":
            continue
        value = field.default
        if value is None:  # TOML has no null: leave the setting out, commented
            lines.append(f"# {field.name} = (not set)")
            continue
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = f'"{value}"' if isinstance(value, str) else repr(value)
        lines.append(f"{field.name} = {rendered}")
    return "\n".join(lines) + "\n"
