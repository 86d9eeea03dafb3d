"""The registry's signing keys and root documents.

Private keys live in ``<data_dir>/keys/`` (mode 0600); the root document is kept in the
metadata store, every version of it, so a device can follow the chain of rotations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.envelope import sign_encoded, sign_envelope
from shared.keys import SigningKey, load_signing_key
from shared.timeutil import utcnow
from shared.trust import Root, new_root

logger = logging.getLogger(__name__)

ROOT_KEY_FILE = "root.key"
TARGETS_KEY_FILE = "targets.key"


class Signer:
    """Signs manifests (and later fleet state) with the targets key."""

    def __init__(self, targets_key: SigningKey) -> None:
        self._targets = targets_key

    @classmethod
    def from_key_dir(cls, key_dir: Path) -> Signer:
        return cls(load_signing_key(key_dir / TARGETS_KEY_FILE))

    @property
    def targets_keyid(self) -> str:
        return self._targets.keyid

    def replace(self, targets_key: SigningKey) -> None:
        """Sign with a new targets key from now on (after a rotation)."""
        self._targets = targets_key

    def sign(self, signed: Mapping[str, Any]) -> dict[str, Any]:
        return sign_envelope(signed, [self._targets])

    def sign_encoded(self, signed: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Sign ``payload``, the canonical JSON of ``signed`` (see ``sign_encoded``)."""
        return sign_encoded(signed, payload, [self._targets])


def first_root(root_key: SigningKey, targets_key: SigningKey, expiry_days: int) -> dict[str, Any]:
    """Version 1 of the root document, signed by the root key."""
    root: Root = new_root(
        version=1,
        expires=utcnow() + timedelta(days=expiry_days),
        root_keys=[root_key.public_key],
        targets_keys=[targets_key.public_key],
    )
    return sign_envelope(root.to_dict(), [root_key])
