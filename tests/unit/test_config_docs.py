"""Every setting of every daemon is documented, with its default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from central.config import CentralConfig, default_toml
from edge_agent.config import EdgeConfig
from shared.errors import InvalidInputError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_central_setting_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for field in dataclasses.fields(CentralConfig):
        if field.name == "data_dir":
            continue
        assert f"| `{field.name}` |" in text, f"{field.name} is not in docs/configuration.md"


def test_every_edge_setting_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for field in dataclasses.fields(EdgeConfig):
        assert f"| `{field.name}` |" in text, f"{field.name} is not in docs/configuration.md"


def test_default_file_round_trips(tmp_path: Path) -> None:
    (tmp_path / "central.toml").write_text(default_toml())
    assert CentralConfig.load(tmp_path) == CentralConfig(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("durability = 'sometimes'", "durability"),
        ("listen = 'nowhere'", "HOST:PORT"),
        ("zstd_level = 99", "zstd_level"),
        ("colour = 'blue'", "unknown settings"),
        ("listen = ", "central.toml"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "central.toml").write_text(line + "\n")
    with pytest.raises(InvalidInputError, match=message):
        CentralConfig.load(tmp_path)
