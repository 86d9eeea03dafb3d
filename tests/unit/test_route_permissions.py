"""Every route declares the permission it needs, and the README prints the matrix as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from central.api.middleware import PUBLIC_PATHS
from central.api.routes import ROUTES, Route
from central.domain import ROLES
from central.services.permissions import DEVICE, MATRIX, PUBLIC

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\|\s*`(\w+)`[^|]*\|(.*)\|\s*$")


def _permissions_table() -> dict[str, frozenset[str]]:
    """The README's "Permissions" table: permission name -> roles ticked."""
    section = README.read_text(encoding="utf-8").split("## Permissions", 1)[1].split("\n## ")[0]
    rows: dict[str, frozenset[str]] = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        cells = [c.strip() for c in m.group(2).split("|")]
        assert len(cells) == len(ROLES), f"README permission row has {len(cells)} roles: {line}"
        rows[m.group(1)] = frozenset(r for r, c in zip(ROLES, cells, strict=True) if c)
    return rows


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_declares_a_permission(route: Route) -> None:
    assert route.permission in {*MATRIX, PUBLIC, DEVICE}, (
        f"{route.method} {route.path} declares permission {route.permission!r}"
    )


def test_public_routes_are_exactly_the_unauthenticated_paths() -> None:
    public = {r.path for r in ROUTES if r.permission == PUBLIC}
    assert public == set(PUBLIC_PATHS)


def test_readme_lists_every_permission_with_its_roles() -> None:
    table = _permissions_table()
    for permission, roles in MATRIX.items():
        assert permission in table, f"README's Permissions table lacks `{permission}`"
        assert table[permission] == roles, f"README's row for `{permission}` differs from MATRIX"
    assert table.get(DEVICE) == {"device"}


def test_readme_lists_no_unknown_permission() -> None:
    assert set(_permissions_table()) <= {*MATRIX, DEVICE}
