"""The device's local cache: a SQLite catalogue and verified blob files.

Layout under the data directory::

    cache.db                                  catalogue (WAL)
    blobs/sha256/<2 hex>/<64 hex>             uncompressed, verified blobs (read-only;
                                              encrypted with a device key, see below)
    blobs/tmp/                                staged files on their way into the store
    partial/<64 hex>.raw                      a download's output so far, and where it
    partial/<64 hex>.resume                   can resume (the last frame end on disk)
    partial/<64 hex>.zst.part                 a download's compressed bytes, until then
    models/<manifest hex>/<file path>         a version's files, hard links to the blobs

Only verified things are written here (the sync shell verifies first). Every
SQL statement is bound, every write runs in one ``BEGIN IMMEDIATE``
transaction on one connection, and file work (hashing, moves, links) runs in
worker threads. ``last_used`` is a logical clock, not wall time, so that LRU
order survives a device clock that jumps.

With a device key (``cache_key_file``) every blob file is in the segment format of
:mod:`shared.segments` under its own data key, kept wrapped by the device key in
``blob_keys``; no model directories are laid out and partial downloads are not kept
(docs/encryption.md, "Edge cache").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent._cachecrypt import (
    encrypt_file,
    file_is_encrypted,
    hash_plain,
    plain_size,
    read_plain,
)
from shared._fsutil import fsync_dir
from shared.digest import parse_digest, sha256_file
from shared.errors import (
    DecryptionError,
    DigestMismatchError,
    FormatError,
    InvalidInputError,
    LengthError,
    NotFoundError,
    SkiffError,
)
from shared.manifest import FileEntry, manifest_digest, validate_path
from shared.segments import key_id, new_key, unwrap_key, wrap_key
from shared.timeutil import format_time, utcnow

__all__ = ["Cache", "ReconcileReport"]

logger = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PART_SUFFIX = ".zst.part"
_RAW_SUFFIX = ".raw"
_MARK_SUFFIX = ".resume"
_PARTIAL_SUFFIXES = (_PART_SUFFIX, _RAW_SUFFIX, _MARK_SUFFIX)
_KEY_FLEET_STATE = "fleet_state"
_KEY_CURSOR = "cursor"
_KEY_LAST_CONTACT = "last_contact"
_SETTING_KEY_ID = "device_key_id"

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE roots (version INTEGER PRIMARY KEY, envelope TEXT NOT NULL)",
        "CREATE TABLE trusted (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE manifests (digest TEXT PRIMARY KEY, model TEXT NOT NULL,"
        " version TEXT NOT NULL, envelope TEXT NOT NULL, metadata TEXT NOT NULL,"
        " last_used INTEGER NOT NULL)",
        "CREATE TABLE manifest_files (manifest_digest TEXT NOT NULL"
        " REFERENCES manifests(digest) ON DELETE CASCADE, path TEXT NOT NULL,"
        " blob_digest TEXT NOT NULL, size INTEGER NOT NULL,"
        " PRIMARY KEY (manifest_digest, path))",
        "CREATE INDEX manifest_files_blob ON manifest_files (blob_digest)",
        "CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " last_used INTEGER NOT NULL)",
        "CREATE TABLE slots (model TEXT PRIMARY KEY, serving_digest TEXT,"
        " previous_digest TEXT, updated_at TEXT NOT NULL)",
        "CREATE TABLE bad_versions (model TEXT NOT NULL, version TEXT NOT NULL,"
        " manifest_digest TEXT NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL,"
        " PRIMARY KEY (model, manifest_digest))",
        "CREATE TABLE telemetry_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " batch_id TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, body TEXT NOT NULL)",
    ),
    (
        "CREATE TABLE cache_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE blob_keys (digest TEXT PRIMARY KEY"
        " REFERENCES blobs(digest) ON DELETE CASCADE, wrapped BLOB NOT NULL)",
    ),
)


@dataclass(slots=True)
class ReconcileReport:
    """What :meth:`Cache.reconcile` found and repaired.

    Attributes:
        missing_or_corrupt: Blob digests whose file was missing or did not hash
            to its name; their rows are gone and the daemon fetches them again.
        orphans_removed: Paths (relative to the data directory) removed because
            nothing in the catalogue named them.
        partials_kept: Digests with a partial download kept for resuming.
        model_dirs_removed: Manifest digests whose model directory was removed
            (no manifest, a missing blob, or an incomplete directory).
    """

    missing_or_corrupt: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    partials_kept: list[str] = field(default_factory=list)
    model_dirs_removed: list[str] = field(default_factory=list)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


class Cache:
    """The catalogue and files of one device. Build it with :meth:`open`."""

    def __init__(
        self,
        data_dir: Path,
        db: aiosqlite.Connection,
        budget_bytes: int,
        device_key: bytes | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.budget_bytes = budget_bytes
        self._device_key = device_key
        self._db = db
        self._lock = asyncio.Lock()
        self._clock = 0
        self._blob_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, data_dir: Path, *, budget_bytes: int, device_key: bytes | None = None
    ) -> Cache:
        """Open (creating if needed) the cache in ``data_dir`` and migrate its schema.

        With ``device_key``, blobs stored in the clear are encrypted in place first.

        Raises:
            SkiffError: The cache is encrypted but no key, or another key, is given.
        """
        if budget_bytes < 0:
            raise InvalidInputError(f"expected a cache budget >= 0, got {budget_bytes}")
        data_dir = Path(data_dir)
        await asyncio.to_thread(_make_dirs, data_dir)
        db = await aiosqlite.connect(data_dir / "cache.db", isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA synchronous=FULL",
                "PRAGMA busy_timeout=5000",
            ):
                await db.execute(pragma)
            cache = cls(data_dir, db, budget_bytes, device_key)
            await cache._migrate()
            await cache._apply_device_key()
            row = await cache._one(
                "SELECT max(coalesce((SELECT max(last_used) FROM manifests), 0),"
                " coalesce((SELECT max(last_used) FROM blobs), 0))"
            )
            cache._clock = int(row[0]) if row is not None else 0
        except BaseException:
            await db.close()
            raise
        return cache

    async def close(self) -> None:
        """Close the catalogue."""
        await self._db.close()

    async def _migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        row = await self._one("SELECT coalesce(max(version), 0) FROM schema_migrations")
        current = int(row[0]) if row is not None else 0
        if current > len(_MIGRATIONS):
            raise SkiffError(
                f"cache schema version {current} is newer than this agent knows "
                f"({len(_MIGRATIONS)})"
            )
        for version, statements in enumerate(_MIGRATIONS, start=1):
            if version <= current:
                continue
            async with self._tx() as db:
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, _now()),
                )
            logger.info("Cache schema migrated to version %d", version)

    @property
    def encrypted(self) -> bool:
        """Whether blobs are stored encrypted with a device key."""
        return self._device_key is not None

    async def _apply_device_key(self) -> None:
        row = await self._one("SELECT value FROM cache_settings WHERE key = ?", (_SETTING_KEY_ID,))
        stored = None if row is None else str(row["value"])
        if self._device_key is None:
            if stored is not None:
                raise SkiffError(
                    f"the cache in {self.data_dir} is encrypted with device key {stored}:"
                    " set cache_key_file to the file holding that key"
                )
            return
        current = key_id(self._device_key)
        if stored is not None and stored != current:
            raise SkiffError(
                f"the cache in {self.data_dir} is encrypted with device key {stored}, but"
                f" cache_key_file holds key {current}"
            )
        if stored is None:
            async with self._tx() as db:
                await db.execute(
                    "INSERT INTO cache_settings (key, value) VALUES (?, ?)",
                    (_SETTING_KEY_ID, current),
                )
            logger.info("Cache encryption on (device key %s)", current)
        await asyncio.to_thread(_drop_plaintext_copies, self.data_dir)
        for r in await self._all("SELECT digest FROM blobs ORDER BY digest"):
            await self._encrypt_in_place(r["digest"])

    async def _encrypt_in_place(self, digest: str) -> None:
        """Encrypt a blob stored in the clear; safe to repeat after a crash at any point."""
        assert self._device_key is not None
        path = self.blob_path(digest)
        try:
            if await asyncio.to_thread(file_is_encrypted, path):
                return
        except OSError:
            return  # missing: reconcile drops its row
        data_key = new_key()
        tmp = self.staging_path(digest)
        try:
            await asyncio.to_thread(encrypt_file, path, tmp, key=data_key, digest=digest)
            # the key first: a crash before the rename leaves the file in the clear,
            # and the next start encrypts it again under a new key
            await self._put_key(digest, data_key)
            await asyncio.to_thread(_replace_into, tmp, path)
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        logger.info("Encrypted cached blob %s in place", digest)

    async def _put_key(self, digest: str, data_key: bytes) -> None:
        assert self._device_key is not None
        wrapped = wrap_key(self._device_key, data_key, digest)
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO blob_keys (digest, wrapped) VALUES (?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET wrapped = excluded.wrapped",
                (digest, wrapped),
            )

    async def _data_key(self, digest: str) -> bytes:
        assert self._device_key is not None
        row = await self._one("SELECT wrapped FROM blob_keys WHERE digest = ?", (digest,))
        if row is None:
            raise NotFoundError(f"blob {digest} has no data key in the cache")
        return unwrap_key(self._device_key, bytes(row["wrapped"]), digest)

    # -- SQL helpers ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # -- telemetry outbox ---------------------------------------------------------------------

    async def add_telemetry(self, batch_id: str, body: Mapping[str, Any], max_batches: int) -> int:
        """Queue a telemetry batch; drop the oldest beyond ``max_batches``; the number dropped."""
        async with self._tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO telemetry_outbox (batch_id, created_at, body)"
                " VALUES (?, ?, ?)",
                (batch_id, format_time(utcnow()), json.dumps(dict(body), separators=(",", ":"))),
            )
            async with db.execute(
                "DELETE FROM telemetry_outbox WHERE id NOT IN"
                " (SELECT id FROM telemetry_outbox ORDER BY id DESC LIMIT ?)",
                (max_batches,),
            ) as cur:
                return max(cur.rowcount, 0)

    async def telemetry_batches(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest queued batches, with their row ids."""
        rows = await self._all(
            "SELECT id, body FROM telemetry_outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [(int(r["id"]), dict(json.loads(r["body"]))) for r in rows]

    async def delete_telemetry(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        async with self._tx() as db:
            await db.execute(f"DELETE FROM telemetry_outbox WHERE id IN ({marks})", list(ids))

    # -- trusted metadata -------------------------------------------------------------------

    async def roots(self) -> list[dict[str, Any]]:
        """Return every stored root envelope, oldest version first."""
        rows = await self._all("SELECT envelope FROM roots ORDER BY version")
        return [json.loads(r["envelope"]) for r in rows]

    async def add_root(self, version: int, envelope: Mapping[str, Any]) -> None:
        """Store a verified root envelope as ``version``."""
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO roots (version, envelope) VALUES (?, ?)"
                " ON CONFLICT (version) DO UPDATE SET envelope = excluded.envelope",
                (version, _dumps(envelope)),
            )

    async def fleet_state(self) -> dict[str, Any] | None:
        """Return the trusted fleet state envelope, if any."""
        value = await self._get_trusted(_KEY_FLEET_STATE)
        return None if value is None else dict(json.loads(value))

    async def set_fleet_state(self, envelope: Mapping[str, Any]) -> None:
        """Store a verified fleet state envelope."""
        await self._set_trusted(_KEY_FLEET_STATE, _dumps(envelope))

    async def cursor(self) -> int:
        """Return the sync cursor (0 before the first sync)."""
        value = await self._get_trusted(_KEY_CURSOR)
        return 0 if value is None else int(value)

    async def set_cursor(self, cursor: int) -> None:
        """Store the sync cursor."""
        await self._set_trusted(_KEY_CURSOR, str(int(cursor)))

    async def last_contact(self) -> str | None:
        """Return when central last answered, as an RFC 3339 string."""
        return await self._get_trusted(_KEY_LAST_CONTACT)

    async def set_last_contact(self, at: str) -> None:
        """Store when central last answered."""
        await self._set_trusted(_KEY_LAST_CONTACT, at)

    async def _get_trusted(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM trusted WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    async def _set_trusted(self, key: str, value: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO trusted (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- manifests ----------------------------------------------------------------------------

    async def put_manifest(
        self,
        digest: str,
        model: str,
        version: str,
        envelope: Mapping[str, Any],
        metadata: Mapping[str, Any],
    ) -> None:
        """Store a verified manifest envelope and its metadata document.

        Raises:
            FormatError: The envelope has no valid ``signed.files``.
            DigestMismatchError: ``digest`` does not name ``envelope["signed"]``.
        """
        signed = envelope.get("signed") if isinstance(envelope, Mapping) else None
        if not isinstance(signed, Mapping) or not isinstance(signed.get("files"), list):
            raise FormatError("expected a manifest envelope with signed.files")
        actual = manifest_digest(signed)
        if actual != digest:
            raise DigestMismatchError(f"expected manifest {digest}, got {actual}")
        files = [FileEntry.from_dict(f) for f in signed["files"]]
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO manifests (digest, model, version, envelope, metadata, last_used)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                " envelope = excluded.envelope, metadata = excluded.metadata,"
                " last_used = excluded.last_used",
                (digest, model, version, _dumps(envelope), _dumps(metadata), self._tick()),
            )
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_files (manifest_digest, path, blob_digest, size)"
                " VALUES (?, ?, ?, ?)",
                [(digest, f.path, f.digest, f.size) for f in files],
            )

    async def manifest(self, digest: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Return ``(envelope, metadata)`` of a stored manifest."""
        row = await self._one(
            "SELECT envelope, metadata FROM manifests WHERE digest = ?", (digest,)
        )
        if row is None:
            return None
        return json.loads(row["envelope"]), json.loads(row["metadata"])

    async def touch(self, manifest_digest: str) -> None:
        """Mark a manifest and its blobs as just used (LRU order)."""
        tick = self._tick()
        async with self._tx() as db:
            await db.execute(
                "UPDATE manifests SET last_used = ? WHERE digest = ?", (tick, manifest_digest)
            )
            await db.execute(
                "UPDATE blobs SET last_used = ? WHERE digest IN"
                " (SELECT blob_digest FROM manifest_files WHERE manifest_digest = ?)",
                (tick, manifest_digest),
            )

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the uncompressed blob ``digest`` lives."""
        hexd = parse_digest(digest)
        return self.data_dir / "blobs" / "sha256" / hexd[:2] / hexd

    def partial_path(self, digest: str) -> Path:
        """Where a partial download of the compressed blob ``digest`` lives."""
        return self.data_dir / "partial" / f"{parse_digest(digest)}{_PART_SUFFIX}"

    def resume_paths(self, digest: str) -> tuple[Path, Path]:
        """Where a resumable download of ``digest`` keeps its output, and its resume mark."""
        base = self.data_dir / "partial" / parse_digest(digest)
        return base.with_name(base.name + _RAW_SUFFIX), base.with_name(base.name + _MARK_SUFFIX)

    def staging_path(self, digest: str) -> Path:
        """A fresh path for a staged file, on the blob store's file system."""
        name = f"{parse_digest(digest)}.{secrets.token_hex(8)}.raw"
        return self.data_dir / "blobs" / "tmp" / name

    def blob_lock(self, digest: str) -> asyncio.Lock:
        """The lock that serialises writers of blob ``digest`` (downloads, imports)."""
        lock = self._blob_locks.get(digest)
        if lock is None:
            lock = asyncio.Lock()
            self._blob_locks[digest] = lock
        return lock

    async def has_blob(self, digest: str) -> bool:
        """Tell whether the verified blob ``digest`` is stored."""
        return await self._one("SELECT 1 FROM blobs WHERE digest = ?", (digest,)) is not None

    async def add_blob_from(
        self, staged_raw: Path, digest: str, size: int, *, data_key: bytes | None = None
    ) -> None:
        """Move a verified, fsynced staged file into the store and record it (idempotent).

        With encryption on, a staged file already encrypted under ``data_key`` is moved
        as it is; a staged file in the clear (no ``data_key``) is encrypted into place
        and deleted.

        Raises:
            LengthError: The staged file does not hold ``size`` bytes.
        """
        dst = self.blob_path(digest)
        if self._device_key is None:
            await asyncio.to_thread(_install_blob, staged_raw, dst, size)
        elif data_key is None:
            data_key = new_key()
            encrypted = self.staging_path(digest)
            try:
                await asyncio.to_thread(_check_size, staged_raw, size)
                await asyncio.to_thread(
                    encrypt_file, staged_raw, encrypted, key=data_key, digest=digest
                )
                await asyncio.to_thread(staged_raw.unlink, missing_ok=True)
                await asyncio.to_thread(_install_encrypted, encrypted, dst, data_key, digest, size)
            finally:
                await asyncio.to_thread(encrypted.unlink, missing_ok=True)
        else:
            await asyncio.to_thread(_install_encrypted, staged_raw, dst, data_key, digest, size)
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO blobs (digest, size, last_used) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET last_used = excluded.last_used",
                (digest, size, self._tick()),
            )
            if self._device_key is not None and data_key is not None:
                await db.execute(
                    "INSERT INTO blob_keys (digest, wrapped) VALUES (?, ?)"
                    " ON CONFLICT (digest) DO UPDATE SET wrapped = excluded.wrapped",
                    (digest, wrap_key(self._device_key, data_key, digest)),
                )
        logger.debug("Stored blob %s (%d bytes)", digest, size)

    async def read_blob(self, digest: str) -> bytes:
        """The verified plaintext of an encrypted blob, decrypted into memory.

        Raises:
            NotFoundError: The blob or its data key is not in the cache.
            DecryptionError: The file fails authentication or does not hash to ``digest``
                (the blob is dropped, to be fetched again).
        """
        if self._device_key is None:
            raise RuntimeError("read_blob is for an encrypted cache")
        data_key = await self._data_key(digest)
        path = self.blob_path(digest)
        try:
            return await asyncio.to_thread(read_plain, path, key=data_key, digest=digest)
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is not in the cache") from e
        except (DecryptionError, FormatError):
            # dropped like a corrupt blob: the next sync fetches it again
            async with self._tx() as db:
                await db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            await asyncio.to_thread(path.unlink, missing_ok=True)
            logger.warning("Blob file %s fails decryption; dropped", digest)
            raise

    async def usage(self) -> int:
        """Return the bytes taken by the stored blobs."""
        row = await self._one("SELECT coalesce(sum(size), 0) FROM blobs")
        return int(row[0]) if row is not None else 0

    # -- model directories ----------------------------------------------------------------------

    def model_dir(self, manifest_digest: str) -> Path:
        """Where the files of manifest ``manifest_digest`` are materialised."""
        return self.data_dir / "models" / parse_digest(manifest_digest)

    async def materialise(self, manifest_digest: str, files: Sequence[FileEntry]) -> Path:
        """Lay out a version's files as hard links to its blobs (copies where links fail).

        The directory is built under a temporary name and renamed into place, so
        it either exists complete or not at all.

        Raises:
            InvalidInputError: A file path is unsafe or clashes with another.
            NotFoundError: A blob is not in the cache.
        """
        if self._device_key is not None:
            raise RuntimeError("an encrypted cache lays out no model directories")
        target = self.model_dir(manifest_digest)
        plan = [(validate_path(f.path), self.blob_path(f.digest)) for f in files]
        return await asyncio.to_thread(_materialise, target, plan)

    # -- slots and bad versions -----------------------------------------------------------------

    async def set_slot(self, model: str, serving: str | None, previous: str | None) -> None:
        """Record the manifest digests a slot serves and may roll back to."""
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO slots (model, serving_digest, previous_digest, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
                " serving_digest = excluded.serving_digest,"
                " previous_digest = excluded.previous_digest, updated_at = excluded.updated_at",
                (model, serving, previous, _now()),
            )

    async def slots(self) -> dict[str, tuple[str | None, str | None]]:
        """Return ``{model: (serving digest, previous digest)}``."""
        rows = await self._all(
            "SELECT model, serving_digest, previous_digest FROM slots ORDER BY model"
        )
        return {r["model"]: (r["serving_digest"], r["previous_digest"]) for r in rows}

    async def mark_bad(self, model: str, version: str, manifest_digest: str, reason: str) -> None:
        """Remember that a version failed to load or to pass its health check."""
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO bad_versions (model, version, manifest_digest, reason, at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, manifest_digest) DO UPDATE SET"
                " version = excluded.version, reason = excluded.reason, at = excluded.at",
                (model, version, manifest_digest, reason, _now()),
            )

    async def bad_versions(self) -> list[dict[str, str]]:
        """Return every bad version as ``{model, version, manifest_digest, reason, at}``."""
        rows = await self._all(
            "SELECT model, version, manifest_digest, reason, at FROM bad_versions"
            " ORDER BY model, at, version"
        )
        return [dict(r) for r in rows]

    async def is_bad(self, manifest_digest: str) -> bool:
        """Tell whether a manifest was marked bad."""
        row = await self._one(
            "SELECT 1 FROM bad_versions WHERE manifest_digest = ?", (manifest_digest,)
        )
        return row is not None

    # -- eviction and repair --------------------------------------------------------------------

    async def evict(self, protected_manifest_digests: set[str]) -> list[str]:
        """Evict least recently used blobs until usage is within the budget.

        A blob named by a protected manifest is never evicted. Manifests that
        lose a blob are dropped with it, and the model directories of
        unprotected manifests are removed.

        Returns:
            The evicted blob digests, least recently used first.
        """
        protected = set(protected_manifest_digests)
        async with self._tx() as db:
            refs = await _fetch(db, "SELECT manifest_digest, blob_digest FROM manifest_files")
            keep = {r["blob_digest"] for r in refs if r["manifest_digest"] in protected}
            blobs = await _fetch(db, "SELECT digest, size FROM blobs ORDER BY last_used, digest")
            usage = sum(int(r["size"]) for r in blobs)
            evicted: list[str] = []
            for row in blobs:
                if usage <= self.budget_bytes:
                    break
                if row["digest"] not in keep:
                    evicted.append(row["digest"])
                    usage -= int(row["size"])
            gone = set(evicted)
            dropped = sorted({r["manifest_digest"] for r in refs if r["blob_digest"] in gone})
            await db.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in evicted])
            await db.executemany("DELETE FROM manifests WHERE digest = ?", [(d,) for d in dropped])
            manifests = {r["digest"] for r in await _fetch(db, "SELECT digest FROM manifests")}
        if usage > self.budget_bytes:
            logger.warning(
                "Cache holds %d bytes, over its budget of %d: the rest is protected",
                usage,
                self.budget_bytes,
            )
        keep_dirs = {parse_digest(d) for d in protected & manifests}
        paths = [self.blob_path(d) for d in evicted]
        await asyncio.to_thread(_remove_evicted, self.data_dir, paths, keep_dirs)
        if evicted:
            logger.info("Evicted %d blobs; %d bytes in use", len(evicted), usage)
        return evicted

    async def reconcile(self) -> ReconcileReport:
        """Make files and catalogue agree; run at start, before anything is trusted.

        Removes files nothing names (partial downloads are kept for resuming),
        drops rows whose file is missing, re-hashes every blob file and drops
        those that do not match, and removes model directories that are not
        complete copies of a stored manifest.
        """
        blobs = {
            r["digest"]: int(r["size"]) for r in await self._all("SELECT digest, size FROM blobs")
        }
        refs = await self._all(
            "SELECT manifest_digest, path, blob_digest, size FROM manifest_files"
        )
        manifest_rows = await self._all("SELECT digest FROM manifests")
        manifests: dict[str, list[tuple[str, str, int]]] = {r["digest"]: [] for r in manifest_rows}
        for r in refs:
            manifests[r["manifest_digest"]].append((r["path"], r["blob_digest"], int(r["size"])))
        keys: dict[str, bytes] | None = None
        if self._device_key is not None:
            keys = {}
            for r in await self._all("SELECT digest, wrapped FROM blob_keys"):
                with contextlib.suppress(SkiffError):  # a key that does not unwrap: corrupt
                    keys[r["digest"]] = unwrap_key(
                        self._device_key, bytes(r["wrapped"]), r["digest"]
                    )
        report = await asyncio.to_thread(_reconcile_files, self.data_dir, blobs, manifests, keys)
        if report.missing_or_corrupt:
            async with self._tx() as db:
                await db.executemany(
                    "DELETE FROM blobs WHERE digest = ?", [(d,) for d in report.missing_or_corrupt]
                )
            logger.warning(
                "Cache reconcile dropped %d missing or corrupt blobs",
                len(report.missing_or_corrupt),
            )
        return report


# -- helpers run on the event loop ------------------------------------------------------------


async def _fetch(
    db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> list[sqlite3.Row]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


def _now() -> str:
    return format_time(utcnow())


# -- file work, run in worker threads ---------------------------------------------------------


def _make_dirs(data_dir: Path) -> None:
    for sub in ("blobs/sha256", "blobs/tmp", "partial", "models"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)


def _check_size(staged: Path, size: int) -> None:
    actual = staged.stat().st_size
    if actual != size:
        raise LengthError(f"expected a staged blob of {size} bytes, got {actual}")


def _install_blob(staged: Path, dst: Path, size: int) -> None:
    _check_size(staged, size)
    _replace_into(staged, dst)


def _install_encrypted(staged: Path, dst: Path, data_key: bytes, digest: str, size: int) -> None:
    actual = plain_size(staged, key=data_key, digest=digest)
    if actual != size:
        raise LengthError(f"expected a staged blob of {size} bytes, got {actual}")
    _replace_into(staged, dst)


def _replace_into(staged: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(staged, 0o444)
    os.replace(staged, dst)
    fsync_dir(dst.parent)


def _drop_plaintext_copies(data_dir: Path) -> None:
    """Remove what may hold model bytes in the clear besides blob files (encryption on)."""
    for sub in ("models", "blobs/tmp", "partial"):
        for entry in _listdir(data_dir / sub):
            _remove(entry)


def _materialise(target: Path, plan: Iterable[tuple[str, Path]]) -> Path:
    if target.is_dir():
        return target
    models = target.parent
    tmp = models / f".tmp-{target.name}-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        root = tmp.resolve()
        for rel, src in plan:
            dst = tmp / rel
            if not dst.resolve().is_relative_to(root):
                raise InvalidInputError(f"file path {rel!r} escapes the model directory")
            if not src.is_file():
                raise NotFoundError(f"blob {src.name} for {rel!r} is not in the cache")
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src, dst)
            except (FileExistsError, NotADirectoryError) as e:
                raise InvalidInputError(f"file path {rel!r} clashes with another file") from e
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # built concurrently: keep the first
            return target
        fsync_dir(models)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o444)


def _remove_evicted(data_dir: Path, blob_paths: Iterable[Path], keep_dirs: set[str]) -> None:
    models = data_dir / "models"
    for entry in _listdir(models):
        # Directories still being built by materialise() start with ".tmp-".
        if entry.name not in keep_dirs and not entry.name.startswith(".tmp-"):
            _remove(entry)
    for path in blob_paths:
        path.unlink(missing_ok=True)


def _reconcile_files(
    data_dir: Path,
    blobs: Mapping[str, int],
    manifests: Mapping[str, list[tuple[str, str, int]]],
    keys: Mapping[str, bytes] | None = None,
) -> ReconcileReport:
    report = ReconcileReport()

    def orphan(path: Path) -> None:
        _remove(path)
        report.orphans_removed.append(str(path.relative_to(data_dir)))

    for path in _listdir(data_dir / "blobs" / "tmp"):
        orphan(path)
    found: set[str] = set()
    store = data_dir / "blobs" / "sha256"
    for sub in _listdir(store):
        if not sub.is_dir() or sub.is_symlink() or not re.fullmatch(r"[0-9a-f]{2}", sub.name):
            orphan(sub)
            continue
        for path in _listdir(sub):
            digest = f"sha256:{path.name}"
            named = _HEX64.fullmatch(path.name) is not None and path.name[:2] == sub.name
            if not named or digest not in blobs or path.is_symlink() or not path.is_file():
                orphan(path)
                continue
            actual, size = _hash_blob(path, digest, keys)
            if actual != digest or size != blobs[digest]:
                logger.warning("Blob file %s is corrupt (hashes to %s)", digest, actual)
                path.unlink()
                continue
            found.add(digest)
    report.missing_or_corrupt = sorted(set(blobs) - found)
    kept: set[str] = set()
    for path in _listdir(data_dir / "partial"):
        name, _, suffix = path.name.partition(".")
        if (
            keys is None
            and f".{suffix}" in _PARTIAL_SUFFIXES
            and _HEX64.fullmatch(name)
            and f"sha256:{name}" not in found  # a blob stored since needs none
            and path.is_file()
            and not path.is_symlink()
        ):
            kept.add(f"sha256:{name}")
        else:
            orphan(path)
    report.partials_kept = sorted(kept)
    for path in _listdir(data_dir / "models"):
        digest = f"sha256:{path.name}"
        files = manifests.get(digest)
        if files is None or keys is not None or not _HEX64.fullmatch(path.name):
            orphan(path)
            if _HEX64.fullmatch(path.name):
                report.model_dirs_removed.append(digest)
        elif not _model_dir_complete(path, files, found, store):
            _remove(path)
            report.model_dirs_removed.append(digest)
    return report


def _hash_blob(path: Path, digest: str, keys: Mapping[str, bytes] | None) -> tuple[str, int]:
    """``(sha256:<hex>, size)`` of a blob's content; ``("", -1)`` if it does not decrypt."""
    if keys is None:
        return sha256_file(path)
    data_key = keys.get(digest)
    if data_key is None:
        return "", -1
    try:
        return hash_plain(path, key=data_key, digest=digest)
    except SkiffError as e:
        logger.warning("Blob file %s fails decryption: %s", digest, e)
        return "", -1


def _model_dir_complete(
    path: Path, files: Iterable[tuple[str, str, int]], found: set[str], store: Path
) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    files = list(files)
    entries = sum(len(dirs) + len(names) for _, dirs, names in os.walk(path))
    expected_dirs = {str(Path(rel).parent) for rel, _, _ in files} - {"."}
    expected_dirs |= {str(p) for d in expected_dirs for p in Path(d).parents} - {"."}
    if entries != len(files) + len(expected_dirs):
        return False  # something was added
    for rel, blob_digest, size in files:
        if blob_digest not in found:
            return False
        f = path / rel
        if f.is_symlink() or not f.is_file() or f.stat().st_size != size:
            return False
        hexd = blob_digest.removeprefix("sha256:")
        if not os.path.samefile(f, store / hexd[:2] / hexd):
            actual, _ = sha256_file(f)
            if actual != blob_digest:
                return False
    return True


def _listdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except FileNotFoundError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
