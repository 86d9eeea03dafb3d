"""Registered models and their versions: registration, listing, stages.

Registering is two phases: checks that need no lock (blobs present, format, ONNX loads)
run first; then one transaction numbers the version, signs its manifest and writes the
version, its change-log row and its audit row together. A batch is one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central.domain import STAGES, Actor, Blob, Model, Page, Version
from central.requests import ModelFields, RegisterVersion
from central.services.blobs import BlobService
from central.services.fleetstate import FleetStates
from central.services.formats import ONNX, detect_format, onnx_main_file, onnx_signature
from central.services.permissions import READ, WRITE, require
from central.services.policy import mask
from central.services.signing import Signer
from central.stores.sqlite import SqliteStore, Transaction
from shared.canonical import canonical_json
from shared.digest import sha256_digest
from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.manifest import FileEntry, Manifest, metadata_digest
from shared.names import validate_name
from shared.semver import SemVer
from shared.timeutil import format_time, utcnow

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PAGE = 1000


def allowed_stages(current: str) -> list[str]:
    """Stages reachable from ``current``: one step forward, back to development, retire."""
    if current == "retired":
        return ["development"]
    i = STAGES.index(current)
    nxt = [STAGES[i + 1]] if i + 1 < len(STAGES) - 1 else []
    back = ["development"] if current != "development" else []
    return nxt + back + ["retired"]


def check_transition(v: Version, stage: str) -> None:
    """Raise :class:`ConflictError` unless ``v`` may move to ``stage``, naming what may."""
    allowed = allowed_stages(v.stage)
    if stage not in allowed:
        raise ConflictError(
            f"{v.model}@{v.version} cannot move from {v.stage} to {stage}; "
            f"allowed: {', '.join(allowed)}"
        )


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError("invalid cursor") from e


def next_version(latest: str | None, branch: str) -> str:
    """The version a registration without one gets: the next patch (or pre-release number)."""
    if latest is None:
        return "1.0.0" if branch == "main" else f"1.0.0-{branch.replace('_', '-')}.1"
    v = SemVer.parse(latest)
    if v.prerelease and v.prerelease[-1].isdigit():
        pre = (*v.prerelease[:-1], str(int(v.prerelease[-1]) + 1))
        return str(SemVer(v.major, v.minor, v.patch, pre))
    return str(SemVer(v.major, v.minor, v.patch + 1))


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A registration whose blobs, format and signature have been checked."""

    request: RegisterVersion
    files: tuple[FileEntry, ...]
    format: str
    signature: dict[str, Any] | None
    signature_digest: str | None  # set when the signature was just computed (to cache it)


class RegistryService:
    """Models, versions and stages."""

    def __init__(
        self,
        store: SqliteStore,
        blobs: BlobService,
        signer: Signer,
        fleets: FleetStates,
        *,
        max_model_bytes: int,
    ) -> None:
        self._fleets = fleets
        self._signatures: dict[str, dict[str, Any]] = {}  # ONNX signature by model file digest
        self._blobs_seen: dict[str, Blob] = {}  # blob records by digest (immutable)
        self.sensitive_paths: tuple[str, ...] = ()  # policy: masked in what devices receive
        self._store = store
        self._blobs = blobs
        self._signer = signer
        self._max_model_bytes = max_model_bytes

    # models

    async def create_model(self, actor: Actor, name: str, fields: ModelFields) -> Model:
        require(actor, WRITE, validate_name(name))
        async with self._store.transaction() as tx:
            if await tx.model_id(name) is not None:
                raise ConflictError(f"model {name} already exists")
            await self._insert_model(tx, actor, name, fields.description or "", fields.tags or {})
        return await self.get_model(actor, name)

    async def _insert_model(
        self, tx: Transaction, actor: Actor, name: str, description: str, tags: dict[str, str]
    ) -> int:
        model_id = await tx.insert_model(name, description, actor.name, tags, format_time(utcnow()))
        await tx.append_change("model.created", model=name)
        await tx.append_audit(actor=actor.name, role=actor.role, action="model.create", target=name)
        return model_id

    async def update_model(self, actor: Actor, name: str, fields: ModelFields) -> Model:
        require(actor, WRITE, name)
        async with self._store.transaction() as tx:
            model = await tx.get_model(name)
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            description = model.description if fields.description is None else fields.description
            tags = model.tags if fields.tags is None else fields.tags
            await tx.update_model(model.id, description, tags, format_time(utcnow()))
            await tx.append_change("model.updated", model=name)
            await tx.append_audit(
                actor=actor.name, role=actor.role, action="model.update", target=name
            )
        return await self.get_model(actor, name)

    async def get_model(self, actor: Actor, name: str) -> Model:
        require(actor, READ, name)
        model = await self._store.get_model(validate_name(name))
        if model is None:
            raise NotFoundError(f"model {name} does not exist")
        return model

    async def list_models(self, actor: Actor, prefix: str, limit: int, cursor: str | None) -> Page:
        require(actor, READ)
        after = None if cursor is None else decode_cursor(cursor)
        models = await self._store.list_models(prefix, after, limit + 1, actor.models)
        more = len(models) > limit
        models = models[:limit]
        return Page(models, encode_cursor(models[-1].name) if more and models else None)

    # versions

    async def list_versions(
        self, actor: Actor, model: str, branch: str | None, limit: int, cursor: str | None
    ) -> Page:
        found = await self.get_model(actor, model)
        before = None if cursor is None else decode_cursor(cursor)
        versions = await self._store.list_versions(found.id, branch, before, limit + 1)
        more = len(versions) > limit
        versions = versions[:limit]
        last = versions[-1] if versions else None
        return Page(
            versions,
            encode_cursor(SemVer.parse(last.version).sort_key()) if more and last else None,
        )

    async def get_version(self, actor: Actor, model: str, version: str) -> Version:
        require(actor, READ, model)
        SemVer.parse(version)
        found = await self._store.get_version(validate_name(model), version)
        if found is None:
            await self.get_model(actor, model)
            raise NotFoundError(f"version {model}@{version} does not exist")
        return found

    async def register(self, actor: Actor, request: RegisterVersion) -> Version:
        return (await self.register_batch(actor, [request]))[0]

    async def register_batch(
        self, actor: Actor, requests: Sequence[RegisterVersion]
    ) -> list[Version]:
        """Register versions all or nothing, in one transaction."""
        if not requests or len(requests) > MAX_BATCH:
            raise InvalidInputError(f"a batch holds 1 to {MAX_BATCH} versions")
        for r in requests:
            require(actor, WRITE, r.model)
        blobs = await self._blob_records({f.digest for r in requests for f in r.files})
        prepared = [await self._prepare(r, blobs) for r in requests]
        async with self._store.transaction() as tx:
            out = [await self._insert(tx, actor, p) for p in prepared]
        # A line per version at debug level only: a registry taking a thousand a second
        # would exceed journald's default rate limit and lose other lines. The audit log
        # names every registration; a batch gets one line.
        for v in out:
            logger.debug("Registered %s@%s (%s)", v.model, v.version, v.format)
        if len(out) > 1:
            logger.info("Registered a batch of %d versions", len(out))
        return out

    async def _blob_records(self, digests: set[str]) -> dict[str, Blob]:
        """The stored blobs among ``digests``; a blob, once recorded, is never removed."""
        found = {d: self._blobs_seen[d] for d in digests if d in self._blobs_seen}
        if len(found) < len(digests):
            fetched = await self._store.get_blobs(digests - set(found))
            if len(self._blobs_seen) + len(fetched) > 10_000:
                self._blobs_seen.clear()
            self._blobs_seen.update(fetched)
            found.update(fetched)
        return found

    async def _prepare(self, r: RegisterVersion, blobs: Mapping[str, Blob]) -> _Prepared:
        missing = sorted({f.digest for f in r.files} - set(blobs))
        if missing:
            raise ConflictError(f"blob(s) not uploaded yet: {', '.join(missing)}")
        files = tuple(
            sorted(
                (
                    FileEntry(
                        f.path,
                        f.digest,
                        blobs[f.digest].size,
                        blobs[f.digest].zdigest,
                        blobs[f.digest].zsize,
                    )
                    for f in r.files
                ),
                key=lambda e: e.path,
            )
        )
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise InvalidInputError("file paths must be unique within a version")
        fmt = detect_format(paths)
        signature, sig_digest = None, None
        if fmt == ONNX:
            main = next(f for f in files if f.path == onnx_main_file(paths))
            signature = self._signatures.get(main.digest)
            if signature is None:
                signature = await self._store.onnx_signature(main.digest)
            if signature is None:
                signature = await self._validate_onnx(files, main)
                sig_digest = main.digest
            elif len(self._signatures) < 10_000:  # validated before: immutable, keep it
                self._signatures[main.digest] = signature
        return _Prepared(r, files, fmt, signature, sig_digest)

    async def _validate_onnx(self, files: tuple[FileEntry, ...], main: FileEntry) -> dict[str, Any]:
        """Materialise the version's files and load the model in onnxruntime (off the loop)."""
        with tempfile.TemporaryDirectory(prefix="skiff-validate-") as tmp:
            root = Path(tmp)
            for f in files:
                dst = root / f.path
                await asyncio.to_thread(dst.parent.mkdir, parents=True, exist_ok=True)
                await self._blobs.read_raw_to(f.digest, dst, f.size)
            return await asyncio.to_thread(onnx_signature, root / main.path)

    async def _insert(self, tx: Transaction, actor: Actor, p: _Prepared) -> Version:
        """Write one prepared version; returns it as stored (a new version has no alias)."""
        r = p.request
        model_id, latest = await tx.model_and_latest(r.model, r.branch)
        if model_id is None:
            model_id = await self._insert_model(tx, actor, r.model, "", {})
        version = r.version or next_version(latest, r.branch)
        parent = r.parent if r.parent is not None else latest
        if r.parent is not None and await tx.get_version(r.model, r.parent) is None:
            raise InvalidInputError(f"parent version {r.model}@{r.parent} does not exist")
        metadata = {
            **r.metadata,
            "description": r.description,
            "tags": r.tags,
            "signature": p.signature,
        }
        # Devices receive (and the manifest signs) the document with sensitive fields masked.
        device_view = mask(metadata, self.sensitive_paths) if self.sensitive_paths else metadata
        meta_digest = metadata_digest(device_view)
        created = format_time(utcnow())
        manifest = Manifest(
            r.model, version, p.format, p.files, meta_digest, parent, r.branch, created
        )
        signed = manifest.to_dict()
        payload = canonical_json(signed)  # encoded once: digested and signed
        record = Version(
            id=0,
            model=r.model,
            version=version,
            branch=r.branch,
            parent=parent,
            format=p.format,
            stage=r.stage,
            description=r.description,
            owner=actor.name,
            tags=r.tags,
            metadata=r.metadata,
            signature=p.signature,
            files=[f.to_dict() for f in p.files],
            manifest=self._signer.sign_encoded(signed, payload),
            manifest_digest=sha256_digest(payload),
            metadata_digest=meta_digest,
            created_at=created,
            signed_metadata=None if device_view == metadata else device_view,
        )
        version_id = await tx.insert_version(model_id, record, SemVer.parse(version).sort_key())
        if p.signature is not None and p.signature_digest is not None:
            await tx.put_onnx_signature(p.signature_digest, p.signature)
        await tx.append_change(
            "version.registered",
            model=r.model,
            version=version,
            data={"manifest_digest": record.manifest_digest},
        )
        await tx.append_audit(
            actor=actor.name,
            role=actor.role,
            action="version.register",
            target=f"{r.model}@{version}",
        )
        return dataclasses.replace(record, id=version_id)

    async def metadata_document(
        self, actor: Actor, model: str, version: str, *, signed: bool = False
    ) -> dict[str, Any]:
        """The full metadata document, or (``signed``) the one the manifest signs."""
        v = await self.get_version(actor, model, version)
        return v.signed_document() if signed else v.document()

    async def set_stage(self, actor: Actor, model: str, version: str, stage: str) -> Version:
        require(actor, WRITE, model)
        if stage not in STAGES:
            raise InvalidInputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        async with self._store.transaction() as tx:
            v = await tx.get_version(model, version)
            if v is None:
                raise NotFoundError(f"version {model}@{version} does not exist")
            check_transition(v, stage)
            await self.apply_stage(tx, actor, v, stage)
        return await self.get_version(actor, model, version)

    async def apply_stage(
        self,
        tx: Transaction,
        actor: Actor,
        v: Version,
        stage: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Move ``v`` to ``stage`` inside ``tx``, with its change-log and audit rows.

        The caller has checked the transition (:func:`check_transition`) and the policy.
        """
        await tx.set_stage(v.id, stage)
        if "retired" in (stage, v.stage):
            model_id = await tx.model_id(v.model)
            assert model_id is not None
            await self._fleets.refresh_model(tx, model_id)
        await tx.append_change(
            "stage.changed",
            model=v.model,
            version=v.version,
            data={"from": v.stage, "to": stage},
        )
        await tx.append_audit(
            actor=actor.name,
            role=actor.role,
            action="stage.set",
            target=f"{v.model}@{v.version}",
            detail={"from": v.stage, "to": stage, **(detail or {})},
        )
        logger.info("%s@%s moved from %s to %s", v.model, v.version, v.stage, stage)
