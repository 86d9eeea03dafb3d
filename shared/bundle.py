"""Bundles: one fleet's roots, state, manifests, metadata and blobs in one tar file.

A bundle (``.skiff``) is an uncompressed POSIX tar whose members are, in order
(docs/sync.md, "Bundles")::

    skiff-bundle.json   roots/<n>.json   fleet_state.json
    manifests/<hex>.json   metadata/<hex>.json   blobs/<hex>.zst

``write_bundle`` makes one from documents and stored blobs; the same content
gives the same bytes. ``BundleReader`` reads members by name only: it never
extracts to the filesystem and rejects anything but regular files with the
names above. Nothing in a bundle is trusted: the caller verifies every
document through ``shared.fleet.TrustedState`` and every blob through
``shared.fleet.BlobVerifier``, exactly as for a network sync.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from shared.canonical import canonical_json, loads_json
from shared.digest import parse_digest
from shared.errors import FormatError, InvalidInputError, RepositoryError

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_JSON_MEMBER",
    "MAX_MEMBERS",
    "BundleReader",
    "write_bundle",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "skiff-bundle/1"
MAX_JSON_MEMBER = 16 * 1024 * 1024
MAX_MEMBERS = 100_000
INDEX = "skiff-bundle.json"
FLEET_STATE = "fleet_state.json"
# The most bytes tarfile may read at once while it parses headers (pax records,
# GNU long names): a hostile header cannot make it allocate more.
_MAX_HEADER_READ = 1024 * 1024
_MEMBER = re.compile(
    r"(?P<root>roots/(?P<n>[1-9][0-9]{0,9})\.json)"
    r"|(?P<kind>manifests|metadata)/(?P<hex>[0-9a-f]{64})\.json"
    r"|blobs/(?P<blob>[0-9a-f]{64})\.zst"
    rf"|{re.escape(INDEX)}|{re.escape(FLEET_STATE)}"
)


def write_bundle(
    out: BinaryIO,
    *,
    fleet: str,
    created_at: str,
    roots: Sequence[Mapping[str, Any]],
    fleet_state: Mapping[str, Any],
    manifests: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Mapping[str, Any]],
    blobs: Sequence[tuple[str, Path | BinaryIO]],
) -> None:
    """Write a bundle to ``out`` as a stream (``out`` need not be seekable).

    Args:
        out: Where the tar bytes go.
        fleet: The fleet name, recorded in the (untrusted) index.
        created_at: The creation time, recorded in the index.
        roots: Every root envelope, version 1 to current.
        fleet_state: The fleet state envelope.
        manifests: Manifest envelopes by manifest digest (``sha256:<hex>``).
        metadata: Metadata documents by manifest digest.
        blobs: (uncompressed digest, path of the stored ``.zst`` file, or a seekable
            file of those bytes that the caller closes) pairs; a digest given twice is
            written once.

    Raises:
        InvalidInputError: A digest is malformed or a root has no valid version.
        FormatError: A document cannot be encoded as canonical JSON.
    """
    index = {"format": BUNDLE_FORMAT, "fleet": fleet, "created_at": created_at}
    members = [(INDEX, canonical_json(index))]
    numbered = sorted(_root_member(env) for env in roots)
    if len({n for n, _, _ in numbered}) != len(numbered):
        raise InvalidInputError("expected each root version once")
    members += [(name, data) for _, name, data in numbered]
    members.append((FLEET_STATE, canonical_json(fleet_state)))
    for digest, env in sorted(manifests.items()):
        members.append((f"manifests/{parse_digest(digest)}.json", canonical_json(env)))
    for digest, doc in sorted(metadata.items()):
        data = canonical_json(doc, allow_floats=True)
        members.append((f"metadata/{parse_digest(digest)}.json", data))
    stored = {f"blobs/{parse_digest(d)}.zst": src for d, src in blobs}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        for name in sorted(stored):
            _add_blob(tar, name, stored[name])
    logger.info(
        "Wrote bundle of fleet %s: %d documents, %d blobs", fleet, len(members), len(stored)
    )


def _add_blob(tar: tarfile.TarFile, name: str, src: Path | BinaryIO) -> None:
    if isinstance(src, Path):
        with open(src, "rb") as f:
            tar.addfile(_info(name, os.fstat(f.fileno()).st_size), f)
        return
    size = src.seek(0, os.SEEK_END)
    src.seek(0)
    tar.addfile(_info(name, size), src)


def _root_member(envelope: Mapping[str, Any]) -> tuple[int, str, bytes]:
    signed = envelope.get("signed")
    version = signed.get("version") if isinstance(signed, Mapping) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError(f"expected a root envelope with a version >= 1, got {version!r}")
    return version, f"roots/{version}.json", canonical_json(envelope)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HeaderGuard:
    """A file wrapper that refuses large single reads while tarfile scans headers."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.scanning = True

    def read(self, size: int = -1) -> bytes:
        if self.scanning and not 0 <= size <= _MAX_HEADER_READ:
            raise FormatError(f"tar header of {size} bytes exceeds {_MAX_HEADER_READ}")
        return self._f.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


class _MemberRaw(io.RawIOBase):
    """Reads one member's bytes, turning tarfile errors into ``FormatError``."""

    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        super().__init__()
        stream = tar.extractfile(member)
        if stream is None:  # only regular files are ever passed in
            raise FormatError(f"bundle member {member.name} is not a regular file")
        self._stream = stream
        self._name = member.name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except tarfile.TarError as e:
            raise FormatError(f"bundle member {self._name}: {e}") from e
        buffer[: len(data)] = data
        return len(data)


class IncompleteBundleError(FormatError):
    """The file ends before the bundle does: most likely it is still being copied."""


def _ends_with_archive_marker(f: BinaryIO, file_size: int) -> bool:
    """Whether the file ends with the two zero blocks that close a tar archive."""
    if file_size < 1024:
        return False
    position = f.tell()
    f.seek(file_size - 1024)
    tail = f.read(1024)
    f.seek(position)
    return tail == bytes(1024)


class BundleReader:
    """Reads the members of one bundle by name. Nothing read is trusted.

    Open it with ``BundleReader.open(path)``, as a context manager. Opening
    scans every header and rejects, as ``FormatError`` naming the member, any
    member that is not a regular file, has an unexpected name, appears twice,
    is truncated, or is a JSON member over ``max_json_bytes``; and a bundle
    without ``skiff-bundle.json`` or ``fleet_state.json`` or of another format.
    """

    def __init__(
        self, f: BinaryIO, *, name: str = "bundle", max_json_bytes: int = MAX_JSON_MEMBER
    ) -> None:
        self._f = f
        self._name = name
        self._max_json = max_json_bytes
        guard = _HeaderGuard(f)
        try:
            self._tar = tarfile.TarFile(fileobj=guard, mode="r")  # type: ignore[arg-type]
            self._members = self._scan(os.fstat(f.fileno()).st_size)
        except tarfile.TarError as e:
            if not _ends_with_archive_marker(f, os.fstat(f.fileno()).st_size):
                raise IncompleteBundleError(f"{name} ends in the middle of the archive") from e
            raise FormatError(f"{name} is not a readable tar file: {e}") from e
        guard.scanning = False
        self._index = self._read_index()

    @classmethod
    def open(cls, path: Path, *, max_json_bytes: int = MAX_JSON_MEMBER) -> BundleReader:
        """Open and check the bundle at ``path``.

        Raises:
            FormatError: The file is not a well-formed bundle (see the class).
        """
        f = open(path, "rb")  # noqa: SIM115 - closed by close() or below
        try:
            return cls(f, name=str(path), max_json_bytes=max_json_bytes)
        except BaseException:
            f.close()
            raise

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._tar.close()
        self._f.close()

    def _scan(self, file_size: int) -> dict[str, tarfile.TarInfo]:
        members: dict[str, tarfile.TarInfo] = {}
        while (member := self._tar.next()) is not None:
            name = member.name
            if len(members) >= MAX_MEMBERS:
                raise FormatError(f"bundle has more than {MAX_MEMBERS} members")
            if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
                raise FormatError(f"bundle member {name[:200]!r} is not a regular file")
            if _MEMBER.fullmatch(name) is None:
                raise FormatError(f"unexpected bundle member name {name[:200]!r}")
            if name in members:
                raise FormatError(f"bundle member {name} appears twice")
            if member.size < 0:
                raise FormatError(f"bundle member {name} has a negative size")
            if name.endswith(".json") and member.size > self._max_json:
                raise FormatError(
                    f"bundle member {name}: expected at most {self._max_json} bytes, "
                    f"got {member.size}"
                )
            if member.offset_data + member.size > file_size:
                raise IncompleteBundleError(f"bundle member {name} is truncated")
            members[name] = member
        for required in (INDEX, FLEET_STATE):
            if required not in members:
                if not _ends_with_archive_marker(self._f, file_size):
                    raise IncompleteBundleError(f"bundle ends before its member {required}")
                raise FormatError(f"bundle has no member {required}")
        return members

    def _read_index(self) -> dict[str, Any]:
        index = self._json(INDEX)
        if index.get("format") != BUNDLE_FORMAT:
            raise FormatError(
                f"{INDEX}: expected format {BUNDLE_FORMAT!r}, got {index.get('format')!r:.80}"
            )
        if not isinstance(index.get("fleet"), str):
            raise FormatError(f"{INDEX}: expected a 'fleet' string")
        return index

    def _json(self, name: str) -> dict[str, Any]:
        member = self._members[name]
        with io.BufferedReader(_MemberRaw(self._tar, member)) as f:
            data = f.read(member.size)
        try:
            value = loads_json(data, max_bytes=self._max_json)
        except RepositoryError as e:
            raise FormatError(f"bundle member {name}: {e}") from e
        if not isinstance(value, dict):
            raise FormatError(f"bundle member {name}: expected a JSON object")
        return value

    def _names(self, prefix: str) -> list[tuple[str, str]]:
        """(member name, the part between ``prefix`` and the extension), sorted."""
        return sorted(
            (n, n[len(prefix) :].rsplit(".", 1)[0]) for n in self._members if n.startswith(prefix)
        )

    @property
    def index(self) -> dict[str, Any]:
        """The parsed ``skiff-bundle.json`` (informational, not trusted)."""
        return dict(self._index)

    def roots(self) -> list[dict[str, Any]]:
        """Every root envelope, by increasing number."""
        numbered = [(int(n), name) for name, n in self._names("roots/")]
        return [self._json(name) for _, name in sorted(numbered)]

    def fleet_state(self) -> dict[str, Any]:
        """The fleet state envelope."""
        return self._json(FLEET_STATE)

    def manifests(self) -> dict[str, dict[str, Any]]:
        """Manifest envelopes by manifest digest (``sha256:<hex>``)."""
        return {f"sha256:{h}": self._json(name) for name, h in self._names("manifests/")}

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Metadata documents by manifest digest (``sha256:<hex>``)."""
        return {f"sha256:{h}": self._json(name) for name, h in self._names("metadata/")}

    def blob_digests(self) -> set[str]:
        """The (uncompressed) digests of the blobs in the bundle."""
        return {f"sha256:{h}" for _, h in self._names("blobs/")}

    def open_blob(self, digest: str) -> tuple[BinaryIO, int]:
        """Open the compressed blob named by ``digest`` for reading.

        Raises:
            InvalidInputError: ``digest`` is malformed.
            FormatError: The bundle has no such blob.

        Returns:
            A file object reading the member's bytes, and the member size. The
            caller compares the size with the signed ``zsize`` before reading.
        """
        name = f"blobs/{parse_digest(digest)}.zst"
        member = self._members.get(name)
        if member is None:
            raise FormatError(f"{self._name} has no member {name}")
        return io.BufferedReader(_MemberRaw(self._tar, member)), member.size
