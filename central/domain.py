"""Domain records that services return and the API renders.

Plain frozen dataclasses with ``to_dict`` for the wire; no storage or HTTP types here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("development", "training", "validation", "staging", "production", "retired")
ROLES = ("viewer", "developer", "approver", "admin", "device")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the token's id and name, and its role."""

    token_id: str
    name: str
    role: str
    models: tuple[str, ...] | None = None  # model-name patterns this token is scoped to

    def to_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name, "role": self.role}


SYSTEM = Actor(token_id="system", name="system", role="admin")  # noqa: S106


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    zdigest: str
    zsize: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "zdigest": self.zdigest,
            "zsize": self.zsize,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Model:
    id: int
    name: str
    description: str
    owner: str
    tags: dict[str, str]
    created_at: str
    updated_at: str
    latest_version: str | None = None
    version_count: int = 0
    aliases: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "latest_version": self.latest_version,
            "version_count": self.version_count,
            "aliases": self.aliases,
        }


@dataclass(frozen=True, slots=True)
class Version:
    id: int
    model: str
    version: str
    branch: str
    parent: str | None
    format: str
    stage: str
    description: str
    owner: str
    tags: dict[str, str]
    metadata: dict[str, Any]
    signature: dict[str, Any] | None
    files: list[dict[str, Any]]
    manifest: dict[str, Any]
    manifest_digest: str
    metadata_digest: str
    created_at: str
    aliases: tuple[str, ...] = ()
    # The document the manifest signs when it differs from document() (sensitive fields
    # masked for devices); None: document() itself.
    signed_metadata: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The full metadata document: the sections, description, tags, I/O signature."""
        return {
            **self.metadata,
            "description": self.description,
            "tags": self.tags,
            "signature": self.signature,
        }

    def signed_document(self) -> dict[str, Any]:
        """The document whose digest the manifest signs: what devices and bundles carry."""
        return self.signed_metadata if self.signed_metadata is not None else self.document()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "branch": self.branch,
            "parent": self.parent,
            "format": self.format,
            "stage": self.stage,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
            "metadata": self.metadata,
            "signature": self.signature,
            "files": self.files,
            "manifest_digest": self.manifest_digest,
            "metadata_digest": self.metadata_digest,
            "aliases": list(self.aliases),
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Alias:
    model: str
    alias: str
    version: str
    version_id: int
    manifest_digest: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "version": self.version,
            "manifest_digest": self.manifest_digest,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class AliasEvent:
    action: str  # "set", "rollback" or "delete"
    version: str | None
    previous: str | None
    actor: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "previous": self.previous,
            "actor": self.actor,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    at: str
    kind: str
    model: str | None
    version: str | None
    alias: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    name: str
    role: str
    models: tuple[str, ...] | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "models": list(self.models) if self.models is not None else None,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, with the opaque cursor of the next page (or None)."""

    items: list[Any]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "next_cursor": self.next_cursor}
