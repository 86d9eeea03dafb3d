"""``skiff push``: upload a file or a directory as a new model version.

Each file is hashed (off the event loop), uploaded as a streamed blob only if
central does not have it yet, and the version is then registered naming the
files by digest, with metadata built from the flags over ``--meta-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.cli.arguments import key_value, metric
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.errors import CliError
from central.cli.output import Output, Progress, format_bytes
from central.cli.reference import load_reference
from central.cli.render import render_version
from shared.digest import sha256_file

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["LocalFile", "PushRequest", "build_metadata", "collect_files", "push", "register"]

CHUNK_SIZE = 1 << 20
METADATA_SECTIONS = ("training", "provenance", "deployment", "extra")
MAX_META_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to push: its path in the version (relative, POSIX) and on disk."""

    path: str
    source: Path


@dataclass(frozen=True, slots=True)
class PushRequest:
    """Everything ``skiff push`` sends for one version."""

    name: str
    path: Path
    version: str | None = None
    branch: str | None = None
    parent: str | None = None
    description: str | None = None
    stage: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def register_body(self, files: Sequence[dict[str, str]]) -> dict[str, Any]:
        """The body of ``POST /models/{name}/versions``."""
        optional = {
            "version": self.version,
            "branch": self.branch,
            "parent": self.parent,
            "description": self.description,
            "stage": self.stage,
        }
        body: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
        body.update(tags=self.tags, files=list(files), metadata=self.metadata)
        return body


def collect_files(root: Path) -> list[LocalFile]:
    """The regular files to push: ``root`` itself, or every file under it.

    Raises:
        CliError: ``root`` is missing, holds a symlink or a special file, or no file.
    """
    if root.is_symlink():
        raise CliError(f"refusing to push {root}: it is a symbolic link")
    if root.is_file():
        return [LocalFile(root.name, root)]
    if not root.is_dir():
        raise CliError(f"no such file or directory: {root}")
    found: list[LocalFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                raise CliError(f"refusing to push {path}: it is a symbolic link")
            if name in filenames:
                if not path.is_file():
                    raise CliError(f"refusing to push {path}: not a regular file")
                found.append(LocalFile(path.relative_to(root).as_posix(), path))
    if not found:
        raise CliError(f"no files to push under {root}")
    return sorted(found, key=lambda f: f.path)


def load_meta_file(path: Path) -> dict[str, Any]:
    """Read a metadata JSON file with top-level keys among ``METADATA_SECTIONS``.

    Raises:
        CliError: The file cannot be read, is not JSON, or has other keys.
    """
    try:
        if path.stat().st_size > MAX_META_FILE_BYTES:
            raise CliError(f"{path}: larger than {format_bytes(MAX_META_FILE_BYTES)}")
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise CliError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CliError(f"{path} must hold a JSON object")
    unknown = sorted(set(doc) - set(METADATA_SECTIONS))
    if unknown:
        raise CliError(f"{path}: unknown top-level keys {unknown}, expected {METADATA_SECTIONS}")
    for key, value in doc.items():
        if not isinstance(value, dict):
            raise CliError(f"{path}: {key!r} must be a JSON object")
    return doc


def build_metadata(
    base: dict[str, Any],
    params: Sequence[tuple[str, str]] = (),
    metrics: Sequence[tuple[str, float]] = (),
    datasets: Sequence[str] = (),
) -> dict[str, Any]:
    """Merge flag values over ``base`` (a ``--meta-file`` document); flags win."""
    metadata = {key: dict(base.get(key, {})) for key in METADATA_SECTIONS}
    training = metadata["training"]
    training["params"] = {**training.get("params", {}), **dict(params)}
    training["metrics"] = {**training.get("metrics", {}), **dict(metrics)}
    known = list(training.get("datasets", []))
    training["datasets"] = known + [d for d in dict.fromkeys(datasets) if d not in known]
    return metadata


async def push(client: RegistryClient, out: Output, request: PushRequest) -> Any:
    """Upload the missing blobs of ``request.path`` and register the version.

    Returns:
        The version record central answered with.
    """
    files = await asyncio.to_thread(collect_files, request.path)
    entries = [{"path": f.path, "digest": await _upload(client, out, f)} for f in files]
    path = api_path("models", request.name, "versions")
    return await client.send_json("POST", path, request.register_body(entries))


async def _upload(client: RegistryClient, out: Output, file: LocalFile) -> str:
    digest, size = await asyncio.to_thread(sha256_file, file.source)
    if await client.blob_exists(digest):
        out.note(f"{file.path}: already stored ({format_bytes(size)})")
        return digest
    progress = out.progress(f"push {file.path}", size)
    await client.upload_blob(digest, _chunks(file.source, size, progress), size)
    progress.close()
    out.note(f"{file.path}: uploaded ({format_bytes(size)})")
    return digest


async def _chunks(path: Path, size: int, progress: Progress) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``path`` in 1 MiB chunks, each read in a thread."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(f.read, min(CHUNK_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            progress.advance(len(chunk))
            yield chunk
    finally:
        f.close()


def request_from_args(args: argparse.Namespace) -> PushRequest:
    """Build a ``PushRequest`` from ``skiff push`` arguments."""
    base = load_meta_file(args.meta_file) if args.meta_file is not None else {}
    tags = dict(args.tag)
    return PushRequest(
        name=args.name,
        path=args.path,
        version=args.version,
        branch=args.branch,
        parent=args.parent,
        description=args.description,
        stage=args.stage,
        tags=tags,
        metadata=build_metadata(base, args.param, args.metric, args.dataset),
    )


async def _push(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    request = request_from_args(args)
    if args.reference_data is not None:
        reference = await asyncio.to_thread(load_reference, args.reference_data, args.path)
        request.metadata["reference"] = reference
        out.note(f"reference distribution: {len(reference['features'])} feature(s)")
    out.result(await push(client, out, request), render_version)


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``push`` to the parser tree."""
    p = sub.add_parser("push", parents=parents, help="upload a file or directory as a version")
    p.add_argument("name", help="model name")
    p.add_argument("path", type=Path, help="a file, or a directory (every file under it)")
    p.add_argument("--version", help="semver; default: next patch on the branch")
    p.add_argument("--branch", help="default: main")
    p.add_argument("--parent", help="the version this one derives from")
    p.add_argument("--description")
    p.add_argument("--stage", help="initial stage (default: development)")
    many: dict[str, Any] = {"action": "append", "default": []}
    p.add_argument("--tag", type=key_value, metavar="KEY=VALUE", **many)
    p.add_argument("--metric", type=metric, metavar="KEY=NUMBER", **many)
    p.add_argument("--param", type=key_value, metavar="KEY=VALUE", **many)
    p.add_argument("--dataset", metavar="URI", **many)
    p.add_argument("--meta-file", type=Path, metavar="JSON", help="metadata to start from")
    p.add_argument(
        "--reference-data",
        type=Path,
        metavar="FILE",
        help="training inputs (CSV with a header, or 2-D .npy) for drift detection",
    )
    p.set_defaults(handler=with_client(_push))
