"""Durable file writes: temp file, fsync, rename; the temp file never survives a failure."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(dst: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file whose content replaces ``dst`` only if the block succeeds.

    The temp file is created next to ``dst`` with ``mode`` from the start,
    fsynced before the rename, and removed if anything fails.
    """
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(dst.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in directory ``path`` durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
