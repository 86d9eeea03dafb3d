"""Blob store that encrypts blob files at rest (AES-256-GCM segments, envelope keys).

Same layout and interface as :class:`LocalBlobStore`, but each file is in the
segment format of :mod:`shared.segments` under the blob's own data key, whose
wrapped form (by the master key) lives in the ``blob_keys`` table. Readers get the
stored zstd bytes back, so services, ETags and ``Range`` offsets do not change.

At :meth:`EncryptedBlobStore.open` every plaintext blob file left from before
encryption was turned on is encrypted in place (temp file, fsync, rename); the
data key is recorded before the rename, so a crash halfway resumes cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from central.domain import SYSTEM, Blob
from central.stores.blobs import LocalBlobStore, read_range
from central.stores.masterkey import MasterKey
from central.stores.sqlite import SqliteStore
from shared._fsutil import fsync_dir
from shared.digest import parse_digest
from shared.errors import DecryptionError, InvalidInputError, NotFoundError
from shared.segments import (
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    encrypt_stream,
    is_encrypted,
    new_key,
    open_plain,
    unwrap_key,
    wrap_key,
)
from shared.timeutil import format_time, utcnow

__all__ = ["EncryptedBlobStore", "rotate_master"]

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 100


class EncryptedBlobStore(LocalBlobStore):
    """Blobs as encrypted files on one local filesystem, keys in the metadata store."""

    def __init__(
        self,
        root: Path,
        keys: SqliteStore,
        master: MasterKey,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        super().__init__(root)
        self._keys = keys
        self._master = master
        self._segment_size = segment_size

    async def open(self) -> None:
        """Prepare the directories, check the master key, encrypt any plaintext blob.

        Raises:
            InvalidInputError: Stored data keys are wrapped by another master key.
        """
        await super().open()
        counts = await self._keys.blob_key_counts()
        others = sorted(k for k in counts if k != self._master.id)
        if others:
            n = sum(counts[k] for k in others)
            raise InvalidInputError(
                f"the data keys of {n} blobs are wrapped by master key {', '.join(others)}, "
                f"but the configured master key is {self._master.id}: configure that key, "
                "or rotate to this one with 'skiff keys rotate-master' (docs/encryption.md)"
            )
        logger.info("Blob encryption at rest is on (master key %s)", self._master.id)
        await self._encrypt_plaintext_blobs()

    async def _encrypt_plaintext_blobs(self) -> None:
        pending = await asyncio.to_thread(self._plaintext_files)
        if not pending:
            return
        logger.info("Encrypting %d plaintext blob files at rest", len(pending))
        for done, (digest, path) in enumerate(pending, 1):
            key = await self._data_key(digest, create=True)
            await asyncio.to_thread(self._encrypt_to, path, path, key, digest)
            if done % _PROGRESS_EVERY == 0 or done == len(pending):
                logger.info("Encrypted %d of %d plaintext blob files", done, len(pending))

    def _plaintext_files(self) -> list[tuple[str, Path]]:
        found = []
        for path in sorted((self.root / "sha256").glob("??/*.zst")):
            digest = f"sha256:{path.stem}"
            try:
                parse_digest(digest)
            except InvalidInputError:
                logger.warning("Ignoring %s: not named by a digest", path)
                continue
            with path.open("rb") as f:
                if not is_encrypted(f.read(len(MAGIC))):
                    found.append((digest, path))
        return found

    async def _data_key(self, digest: str, *, create: bool = False) -> bytes:
        """The blob's data key, made and recorded first if ``create`` and there is none."""
        row = await self._keys.get_blob_key(digest)
        if row is None and create:
            async with self._keys.transaction() as tx:
                row = await tx.get_blob_key(digest)
                if row is None:
                    row = (wrap_key(self._master.key, new_key(), digest), self._master.id)
                    await tx.insert_blob_key(digest, row[0], row[1], format_time(utcnow()))
        if row is None:
            raise DecryptionError(f"no data key is stored for blob {digest}")
        wrapped, master_id = row
        if master_id != self._master.id:
            raise DecryptionError(
                f"the data key of blob {digest} is wrapped by master key {master_id}, "
                f"not the configured {self._master.id}"
            )
        return await asyncio.to_thread(unwrap_key, self._master.key, wrapped, digest)

    def _encrypt_to(self, src: Path, final: Path, key: bytes, digest: str) -> None:
        tmp = self._tmp / f"{uuid.uuid4().hex}.enc"
        try:
            with src.open("rb") as plain, tmp.open("wb") as out:
                encrypt_stream(plain, out, key=key, digest=digest, segment_size=self._segment_size)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    async def commit(self, staged: Path, blob: Blob) -> None:
        key = await self._data_key(blob.digest, create=True)
        await asyncio.to_thread(self._encrypt_to, staged, self.path(blob.digest), key, blob.digest)

    async def delete(self, digest: str) -> None:
        await super().delete(digest)
        async with self._keys.transaction() as tx:
            await tx.delete_blob_key(digest)

    async def open_plain(self, digest: str) -> BinaryIO:
        """The decrypted (compressed) bytes as a seekable file; segments decrypt as read."""
        path = self.path(digest)
        if not await asyncio.to_thread(path.is_file):
            raise NotFoundError(f"blob {digest} is not stored")
        key = await self._data_key(digest)
        f = await asyncio.to_thread(path.open, "rb")
        return await asyncio.to_thread(open_plain, f, key=key, digest=digest)

    async def open_stored(self, digest: str) -> BinaryIO | None:
        """None: the file holds ciphertext, so downloads stream the decrypted bytes."""
        return None

    async def size(self, digest: str) -> int:
        f = await self.open_plain(digest)
        try:
            return await asyncio.to_thread(f.seek, 0, os.SEEK_END)
        finally:
            await asyncio.to_thread(f.close)

    async def read(
        self, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        f = await self.open_plain(digest)
        async for chunk in read_range(f, start, end):
            yield chunk

    async def read_all(self, digest: str) -> bytes:
        f = await self.open_plain(digest)
        try:
            return await asyncio.to_thread(f.read)
        finally:
            await asyncio.to_thread(f.close)


async def rotate_master(store: SqliteStore, old: MasterKey, new: MasterKey) -> int:
    """Rewrap every data key from ``old`` to ``new`` in one transaction; blobs stay as they are.

    Returns:
        How many data keys were rewrapped (0 if they were all under ``new`` already).

    Raises:
        InvalidInputError: The keys are the same, or some data keys are under neither.
        DecryptionError: A data key does not unwrap with ``old`` (nothing is changed).
    """
    if old.id == new.id:
        raise InvalidInputError(f"the new master key is the current one ({old.id})")

    def rewrap(digest: str, wrapped: bytes) -> bytes:
        return wrap_key(new.key, unwrap_key(old.key, wrapped, digest), digest)

    async with store.transaction(offload=True) as tx:  # rewrites many rows
        counts = await tx.blob_key_counts()
        unknown = sorted(set(counts) - {old.id, new.id})
        if unknown:
            raise InvalidInputError(
                f"data keys of {sum(counts[k] for k in unknown)} blobs are wrapped by master key "
                f"{', '.join(unknown)}, not by the old key {old.id}: give that key as the old one"
            )
        count = await tx.rewrap_blob_keys(old.id, new.id, rewrap)
        await tx.append_audit(
            actor=SYSTEM.name,
            role=SYSTEM.role,
            action="keys.rotate_master",
            target=new.id,
            detail={"from": old.id, "rewrapped": count},
        )
    logger.info("Rewrapped %d data keys from master key %s to %s", count, old.id, new.id)
    return count
