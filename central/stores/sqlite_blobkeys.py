"""SQL of the wrapped data keys of encrypted blobs (part of the SQLite metadata store)."""

from __future__ import annotations

from collections.abc import Callable

from central.stores._sqlbase import SqlBase

_BATCH = 500


class BlobKeyReads(SqlBase):
    """Queries on ``blob_keys``."""

    async def get_blob_key(self, digest: str) -> tuple[bytes, str] | None:
        """The wrapped data key of a blob and the id of the master key that wrapped it."""
        row = await self._one(
            "SELECT wrapped, master_key_id FROM blob_keys WHERE digest = ?", (digest,)
        )
        return None if row is None else (bytes(row["wrapped"]), str(row["master_key_id"]))

    async def blob_key_counts(self) -> dict[str, int]:
        """How many data keys each master key id wraps."""
        rows = await self._all(
            "SELECT master_key_id, count(*) AS n FROM blob_keys GROUP BY master_key_id"
        )
        return {str(r["master_key_id"]): int(r["n"]) for r in rows}


class BlobKeyWrites(SqlBase):
    """Writes on ``blob_keys``, inside a transaction."""

    async def insert_blob_key(
        self, digest: str, wrapped: bytes, master_key_id: str, at: str
    ) -> None:
        """Record a blob's wrapped key unless it already has one."""
        await self._run(
            "INSERT OR IGNORE INTO blob_keys (digest, wrapped, master_key_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            (digest, wrapped, master_key_id, at),
        )

    async def delete_blob_key(self, digest: str) -> None:
        await self._run("DELETE FROM blob_keys WHERE digest = ?", (digest,))

    async def rewrap_blob_keys(
        self, old_id: str, new_id: str, rewrap: Callable[[str, bytes], bytes]
    ) -> int:
        """Replace every key wrapped by ``old_id`` with ``rewrap(digest, wrapped)``."""
        count, after = 0, ""
        while True:
            rows = await self._all(
                "SELECT digest, wrapped FROM blob_keys WHERE master_key_id = ? AND digest > ? "
                "ORDER BY digest LIMIT ?",
                (old_id, after, _BATCH),
            )
            if not rows:
                return count
            await self._many(
                "UPDATE blob_keys SET wrapped = ?, master_key_id = ? WHERE digest = ?",
                [(rewrap(r["digest"], bytes(r["wrapped"])), new_id, r["digest"]) for r in rows],
            )
            count += len(rows)
            after = rows[-1]["digest"]
