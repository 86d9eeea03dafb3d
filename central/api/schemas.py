"""JSON Schemas of the API for the OpenAPI document: parameters, request and response bodies.

They describe what the handlers and ``central.requests`` accept and what the domain
records render, so clients and the schema-driven fuzzer know the shapes. The server
validates with its own code; these schemas are documentation that tests hold to the
truth (a response that does not match its schema fails the fuzz test).
"""

from __future__ import annotations

from typing import Any

from central.domain import ROLES, STAGES
from central.services.tokens import MAX_EXPIRES_IN
from shared.names import NAME_RE

Schema = dict[str, Any]

NAME: Schema = {"type": "string", "pattern": NAME_RE}
DIGEST: Schema = {"type": "string", "pattern": r"^sha256:[0-9a-f]{64}$"}
SEMVER: Schema = {
    "type": "string",
    "pattern": r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$",
    "maxLength": 256,
}
_NULLABLE_STR: Schema = {"type": "string", "nullable": True}
_TAGS: Schema = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1024}}

# path parameters, by name
PATH_PARAMS: dict[str, Schema] = {
    "model": NAME,
    "alias": NAME,
    "fleet": NAME,
    "device": NAME,
    "digest": DIGEST,
    "version": SEMVER,
    "ref": {"type": "string", "maxLength": 256},  # a version or an alias name
    "number": {"type": "string", "pattern": r"^[0-9]{1,9}$"},
    "token_id": {"type": "string", "pattern": r"^tok_[0-9a-f]{16}$"},
}

# query parameters, by name
QUERY_PARAMS: dict[str, Schema] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    "since": {"type": "integer", "minimum": 0},
    "root": {"type": "integer", "minimum": 0},
    "wait": {"type": "number", "minimum": 0, "maximum": 3600},
    "order_by": {
        "type": "string",
        "pattern": r"^(created_at|version|metrics\.[A-Za-z0-9_.:/-]+)( (asc|desc))?$",
    },
}

_FILE_REF: Schema = {
    "type": "object",
    "required": ["path", "digest"],
    "properties": {"path": {"type": "string", "maxLength": 1024}, "digest": DIGEST},
    "additionalProperties": False,
}
_REGISTER: Schema = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "version": SEMVER,
        "branch": NAME,
        "parent": SEMVER,
        "description": {"type": "string", "maxLength": 65536},
        "stage": {"type": "string", "enum": list(STAGES)},
        "tags": _TAGS,
        "files": {"type": "array", "items": _FILE_REF, "minItems": 1, "maxItems": 10000},
        "metadata": {
            "type": "object",
            "properties": {
                "training": {"type": "object"},
                "provenance": {"type": "object"},
                "deployment": {"type": "object"},
                "extra": {"type": "object"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

# request bodies, by handler (module.name)
REQUEST_BODIES: dict[str, Schema] = {
    "models.create_model": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": NAME,
            "description": {"type": "string", "maxLength": 65536},
            "tags": _TAGS,
        },
        "additionalProperties": False,
    },
    "models.update_model": {
        "type": "object",
        "properties": {"description": {"type": "string", "maxLength": 65536}, "tags": _TAGS},
        "additionalProperties": False,
    },
    "versions.register_version": _REGISTER,
    "versions.register_batch": {
        "type": "object",
        "required": ["versions"],
        "properties": {
            "versions": {
                "type": "array",
                "items": {
                    **_REGISTER,
                    "required": ["model", "files"],
                    "properties": {**_REGISTER["properties"], "model": NAME},
                },
            }
        },
        "additionalProperties": False,
    },
    "aliases.set_alias": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": SEMVER},
        "additionalProperties": False,
    },
    "versions.set_stage": {
        "type": "object",
        "required": ["stage"],
        "properties": {"stage": {"type": "string", "enum": list(STAGES)}},
        "additionalProperties": False,
    },
    "misc.create_token": {
        "type": "object",
        "required": ["name", "role"],
        "properties": {
            "name": NAME,
            "role": {"type": "string", "enum": list(ROLES)},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRES_IN},
            "models": {
                "type": "array",
                "items": {"type": "string", "pattern": r"^[a-z0-9._*?-]{1,128}$"},
                "minItems": 1,
                "maxItems": 100,
            },
        },
        "additionalProperties": False,
    },
    "fleets.create_fleet": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": NAME, "description": {"type": "string"}},
        "additionalProperties": False,
    },
    "fleets.assign_model": {
        "type": "object",
        "required": ["alias"],
        "properties": {"alias": NAME},
        "additionalProperties": False,
    },
    "fleets.enroll_device": {
        "type": "object",
        "required": ["device"],
        "properties": {"device": NAME},
        "additionalProperties": False,
    },
    "misc.rotate_keys": {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"type": "string", "enum": ["root", "targets"]}},
        "additionalProperties": False,
    },
    "fleets.report": {"type": "object"},
}

_MODEL: Schema = {
    "type": "object",
    "required": ["name", "description", "owner", "tags", "created_at", "updated_at"],
    "properties": {
        "name": NAME,
        "description": {"type": "string"},
        "owner": {"type": "string"},
        "tags": _TAGS,
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "latest_version": _NULLABLE_STR,
        "version_count": {"type": "integer", "minimum": 0},
        "aliases": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_VERSION: Schema = {
    "type": "object",
    "required": ["model", "version", "branch", "format", "stage", "files", "manifest_digest"],
    "properties": {
        "model": NAME,
        "version": SEMVER,
        "branch": NAME,
        "parent": _NULLABLE_STR,
        "format": {"type": "string"},
        "stage": {"type": "string", "enum": list(STAGES)},
        "tags": _TAGS,
        "metadata": {"type": "object"},
        "files": {"type": "array", "items": {"type": "object"}},
        "manifest_digest": DIGEST,
        "metadata_digest": DIGEST,
        "aliases": {"type": "array", "items": {"type": "string"}},
    },
}
_ALIAS: Schema = {
    "type": "object",
    "required": ["model", "alias", "version", "manifest_digest"],
    "properties": {"model": NAME, "alias": NAME, "version": SEMVER, "manifest_digest": DIGEST},
}
_TOKEN: Schema = {
    "type": "object",
    "required": ["id", "name", "role"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "role": {"type": "string", "enum": list(ROLES)},
        "models": {"type": "array", "items": {"type": "string"}, "nullable": True},
    },
}
_BLOB: Schema = {
    "type": "object",
    "required": ["digest", "size", "zdigest", "zsize"],
    "properties": {
        "digest": DIGEST,
        "size": {"type": "integer", "minimum": 0},
        "zdigest": DIGEST,
        "zsize": {"type": "integer", "minimum": 0},
    },
}


def _page(item: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": item}, "next_cursor": _NULLABLE_STR},
    }


def _items(item: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": item}},
    }


# success response bodies, by handler (module.name)
RESPONSE_BODIES: dict[str, Schema] = {
    "models.list_models": _page(_MODEL),
    "models.create_model": _MODEL,
    "models.get_model": _MODEL,
    "models.update_model": _MODEL,
    "versions.list_versions": _page(_VERSION),
    "versions.register_version": _VERSION,
    "versions.register_batch": _items(_VERSION),
    "versions.get_version": _VERSION,
    "versions.set_stage": _VERSION,
    "misc.search": _page(_VERSION),
    "aliases.list_aliases": _items(_ALIAS),
    "aliases.get_alias": _ALIAS,
    "aliases.set_alias": _ALIAS,
    "aliases.rollback_alias": _ALIAS,
    "misc.create_token": {**_TOKEN, "required": ["id", "name", "role", "token"]},
    "misc.list_tokens": _items(_TOKEN),
    "blobs.blob_info": _BLOB,
    "blobs.put_blob": _BLOB,
    "misc.changes": {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "required": ["seq", "kind"]}},
            "next": {"type": "integer", "minimum": 0},
        },
    },
    "fleets.list_fleets": _items({"type": "object", "required": ["name"]}),
    "misc.healthz": {"type": "object", "required": ["status", "version"]},
}
