"""``skiff pull``: download a version into a directory, verified end to end.

The manifest is checked against the root of trust (a pinned ``--root`` file,
following any rotations central has made since, or else central's current
root on first use), the metadata against the manifest's digest, and each file
against its signed digest and sizes. Files are staged in a temp directory
inside the destination and moved into place only when every one verified.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from central.cli.arguments import model_ref
from central.cli.catalog import get_version
from central.cli.client import ApiError, RegistryClient, api_path
from central.cli.command import with_client
from central.cli.download import fetch_blob
from central.cli.errors import CliError
from central.cli.output import Output, format_bytes, table
from shared.canonical import loads_json
from shared.errors import RepositoryError
from shared.manifest import FileEntry, metadata_digest, verify_manifest
from shared.trust import MAX_ROOT_ROTATIONS, Root, load_trusted_root, verify_root_update

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["PullResult", "pull", "register", "safe_target"]

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # root, manifest and metadata documents

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PullResult:
    """What was pulled, where, and the root it was verified against."""

    model: str
    version: str
    root_version: int
    dest: Path
    files: tuple[FileEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        files = [{"path": f.path, "digest": f.digest, "size": f.size} for f in self.files]
        return {
            "model": self.model,
            "version": self.version,
            "root_version": self.root_version,
            "dest": str(self.dest),
            "files": files,
        }


async def pull(
    client: RegistryClient,
    out: Output,
    name: str,
    ref: str,
    dest: Path,
    root_file: Path | None = None,
) -> PullResult:
    """Download and verify ``name@ref`` into ``dest``.

    Raises:
        CliError: Anything failed to download or verify; no file is left half-written.
    """
    version = str((await get_version(client, name, ref))["version"])
    root = await _trusted_root(client, out, root_file)
    specs = await _verified_files(client, root, name, version)
    targets = [safe_target(dest, spec.path) for spec in specs]
    await _install(client, out, dest, specs, targets)
    return PullResult(name, version, root.version, dest, tuple(specs))


async def _trusted_root(client: RegistryClient, out: Output, root_file: Path | None) -> Root:
    if root_file is None:
        out.note("note: trusting central's current root on first use; pin it with --root FILE")
        envelope = await _get_document(client, api_path("root"))
        root = _verify("central's root", load_trusted_root, envelope)
    else:
        pinned = await asyncio.to_thread(_read_file, root_file)
        root = _verify(f"pinned root {root_file}", load_trusted_root, pinned)
        root = await _follow_rotations(client, root)
    if root.is_expired(datetime.now(UTC)):
        raise CliError(f"the root of trust (version {root.version}) expired at {root.expires}")
    return root


async def _follow_rotations(client: RegistryClient, root: Root) -> Root:
    """Walk central's root chain from ``root``, each step signed by the one before."""
    for _ in range(MAX_ROOT_ROTATIONS):
        nxt = root.version + 1
        try:
            envelope = await _get_document(client, api_path("root", str(nxt)))
        except ApiError as e:
            if e.status == 404:
                return root
            raise
        root = _verify(f"root version {nxt}", partial(verify_root_update, root), envelope)
    raise CliError(f"more than {MAX_ROOT_ROTATIONS} root rotations: refusing to follow")


async def _verified_files(
    client: RegistryClient, root: Root, name: str, version: str
) -> list[FileEntry]:
    what = f"manifest of {name}@{version}"
    envelope = await _get_document(client, _version_path(name, version, "manifest"))
    manifest = _verify(what, lambda env: verify_manifest(root, env), envelope)
    for field, expected in (("model", name), ("version", version)):
        actual = getattr(manifest, field)
        if actual != expected:
            raise CliError(f"{what} failed verification: {field} is {actual!r}, not {expected!r}")
    # the signed view: fields the policy declares sensitive are masked in it
    metadata = await _get_document(
        client, _version_path(name, version, "metadata") + "?view=signed"
    )
    actual_digest = _verify(f"metadata of {name}@{version}", metadata_digest, metadata)
    if actual_digest != manifest.metadata_digest:
        raise CliError(
            f"metadata of {name}@{version} failed verification: digest mismatch: "
            f"expected {manifest.metadata_digest}, got {actual_digest}"
        )
    return list(manifest.files)


def safe_target(dest: Path, path: str) -> Path:
    """The place of manifest path ``path`` under ``dest``.

    Raises:
        CliError: ``path`` is absolute, has empty, ``.`` or ``..`` parts, or
            resolves (through symlinks) outside ``dest``.
    """
    parts = path.split("/")
    if (
        PurePosixPath(path).is_absolute()
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise CliError(f"refusing manifest path {path!r}: it would escape {dest}")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise CliError(f"refusing manifest path {path!r}: it resolves outside {dest}")
    return target


async def _install(
    client: RegistryClient,
    out: Output,
    dest: Path,
    specs: Sequence[FileEntry],
    targets: Sequence[Path],
) -> None:
    created = not await asyncio.to_thread(dest.exists)
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".skiff-pull-", dir=dest))
    done = False
    try:
        parts = [staging / f"{i}.part" for i in range(len(specs))]
        for spec, part in zip(specs, parts, strict=True):
            await fetch_blob(client, out, spec, part)
        await asyncio.to_thread(_move_all, parts, targets)
        done = True
    finally:
        await asyncio.to_thread(_cleanup, staging, dest if created and not done else None)


def _move_all(parts: Sequence[Path], targets: Sequence[Path]) -> None:
    for part, target in zip(parts, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)


def _cleanup(staging: Path, created_dest: Path | None) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if created_dest is not None:
        with contextlib.suppress(OSError):
            created_dest.rmdir()  # only if nothing else was put there meanwhile


async def _get_document(client: RegistryClient, path: str) -> bytes:
    return await client.get_bytes(path, MAX_DOCUMENT_BYTES)


def _version_path(name: str, version: str, leaf: str) -> str:
    return api_path("models", name, "versions", version, leaf)


def _parse(data: bytes) -> Any:
    return loads_json(data, max_bytes=MAX_DOCUMENT_BYTES)


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise CliError(f"{path} is larger than {format_bytes(MAX_DOCUMENT_BYTES)}")
        return path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from e


def _verify(what: str, check: Callable[[Any], T], data: Any) -> T:
    """Run one verification step, reporting its failure as a ``CliError``."""
    try:
        return check(_parse(data) if isinstance(data, bytes) else data)
    except RepositoryError as e:
        raise CliError(f"{what} failed verification: {e}") from e


def _render(result: PullResult) -> str:
    rows = [(f.path, format_bytes(f.size), f.digest) for f in result.files]
    head = (
        f"Pulled {result.model}@{result.version} into {result.dest} "
        f"(verified against root version {result.root_version})"
    )
    return head + "\n" + table(("file", "size", "digest"), rows)


async def _pull(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    name, ref = args.ref
    result = await pull(client, out, name, ref, args.output, args.root)
    out.result(result.to_dict(), lambda _: _render(result))


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``pull`` to the parser tree."""
    p = sub.add_parser("pull", parents=parents, help="download and verify a version")
    p.add_argument("ref", type=model_ref, metavar="NAME@VERSION|NAME@ALIAS")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--root", type=Path, metavar="ROOT.json", help="pinned root of trust")
    p.set_defaults(handler=with_client(_pull))
