"""Central configuration: one frozen dataclass, read from ``<data_dir>/central.toml``.

Every setting has its default and unit inline; ``docs/configuration.md`` documents each
one (a test checks that). Flags given on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidInputError

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

    def __post_init__(self) -> None:
        if self.durability not in ("normal", "full"):
            raise InvalidInputError(
                f"durability must be 'normal' or 'full', got {self.durability!r}"
            )
        if self.max_upload_bytes <= 0 or self.max_json_bytes <= 0:
            raise InvalidInputError("max_upload_bytes and max_json_bytes must be positive")
        if not 1 <= self.zstd_level <= 22:
            raise InvalidInputError(f"zstd_level must be 1..22, got {self.zstd_level}")
        self.host_port()  # validates listen

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

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
        return cls(data_dir=data_dir, **values)


def default_toml() -> str:
    """The file that ``skiff central init`` writes: every setting at its default."""
    lines = ["# Skiff central settings; see docs/configuration.md"]
    for field in dataclasses.fields(CentralConfig):
        if field.name == "data_dir":
            continue
        value = field.default
        rendered = f'"{value}"' if isinstance(value, str) else repr(value)
        lines.append(f"{field.name} = {rendered}")
    return "\n".join(lines) + "\n"
