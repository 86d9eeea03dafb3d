"""Signed envelopes in the TUF shape: ``{"signed": {...}, "signatures": [...]}``.

Every signature covers ``canonical_json(envelope["signed"])``. This module
checks the shape of envelopes and counts valid signatures against a
threshold; which keys are authorised for a role is the caller's business
(see ``shared.trust``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.canonical import canonical_json, loads_json
from shared.errors import FormatError, UnsignedError
from shared.keys import PublicKey, SigningKey

__all__ = [
    "MAX_SIGNATURES",
    "add_signature",
    "parse_envelope",
    "sign_encoded",
    "sign_envelope",
    "signed_bytes",
    "verify_envelope",
]

logger = logging.getLogger(__name__)

MAX_SIGNATURES = 256
_KEYID = re.compile(r"[0-9a-f]{64}")
_SIG = re.compile(r"[0-9a-f]{128}")


def signed_bytes(signed: Mapping[str, Any]) -> bytes:
    """Return the bytes that signatures over ``signed`` cover."""
    return canonical_json(signed)


def sign_envelope(signed: Mapping[str, Any], keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Wrap ``signed`` in an envelope signed by each distinct key in ``keys``.

    Raises:
        FormatError: ``signed`` cannot be encoded as canonical JSON.
    """
    payload = signed_bytes(signed)
    # Re-read the payload so the envelope holds exactly what was signed.
    return sign_encoded(loads_json(payload, max_bytes=len(payload)), payload, keys)


def sign_encoded(
    signed: dict[str, Any], payload: bytes, keys: Sequence[SigningKey]
) -> dict[str, Any]:
    """Like :func:`sign_envelope`, for a caller that already holds ``signed_bytes(signed)``.

    ``signed`` must be plain JSON values (dicts, lists, str, int, None) whose canonical
    encoding is ``payload``, as a document's ``to_dict()`` builds them: the envelope
    holds it as it is.
    """
    signatures: dict[str, str] = {}
    for key in keys:
        signatures.setdefault(key.keyid, key.sign(payload).hex())
    return {
        "signed": signed,
        "signatures": [{"keyid": k, "sig": s} for k, s in signatures.items()],
    }


def parse_envelope(
    data: bytes | Mapping[str, Any], *, max_bytes: int = 10_000_000
) -> dict[str, Any]:
    """Check the shape of an envelope.

    Args:
        data: The envelope as JSON bytes or as an already parsed mapping.
        max_bytes: The most JSON bytes accepted.

    Raises:
        LengthError: ``data`` is longer than ``max_bytes``.
        FormatError: ``data`` is not an envelope.

    Returns:
        A new dict with exactly the keys ``signed`` and ``signatures``.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        obj: Any = loads_json(bytes(data), max_bytes=max_bytes)
    else:
        obj = data
    if not isinstance(obj, Mapping) or set(obj) != {"signed", "signatures"}:
        raise FormatError("expected an object with exactly 'signed' and 'signatures'")
    signed, signatures = obj["signed"], obj["signatures"]
    if not isinstance(signed, Mapping):
        raise FormatError(f"expected 'signed' to be an object, got {type(signed).__name__}")
    if not isinstance(signatures, list | tuple):
        raise FormatError("expected 'signatures' to be a list")
    if len(signatures) > MAX_SIGNATURES:
        raise FormatError(f"expected at most {MAX_SIGNATURES} signatures, got {len(signatures)}")
    return {"signed": dict(signed), "signatures": [_parse_signature(s) for s in signatures]}


def _parse_signature(sig: Any) -> dict[str, str]:
    if not isinstance(sig, Mapping) or set(sig) != {"keyid", "sig"}:
        raise FormatError("expected each signature to be an object with 'keyid' and 'sig'")
    keyid, value = sig["keyid"], sig["sig"]
    if not isinstance(keyid, str) or _KEYID.fullmatch(keyid) is None:
        raise FormatError(f"expected a keyid of 64 lowercase hex, got {keyid!r:.80}")
    if not isinstance(value, str) or _SIG.fullmatch(value) is None:
        raise FormatError("expected a signature of 128 lowercase hex characters")
    return {"keyid": keyid, "sig": value}


def verify_envelope(
    envelope: Mapping[str, Any],
    *,
    keys: Mapping[str, PublicKey],
    keyids: Iterable[str],
    threshold: int,
    role: str = "envelope",
) -> dict[str, Any]:
    """Check that enough distinct authorised keys signed an envelope.

    Signatures by keys outside ``keyids`` or missing from ``keys``, invalid
    signatures and repeated signatures by one key are ignored.

    Args:
        envelope: The envelope, parsed or not yet checked.
        keys: Public keys by key ID.
        keyids: The key IDs authorised for the role.
        threshold: How many distinct authorised keys must have signed.
        role: The role name, for error messages.

    Raises:
        FormatError: ``envelope`` is not a well-formed envelope.
        UnsignedError: Fewer than ``threshold`` authorised keys signed.

    Returns:
        The ``signed`` part.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    parsed = parse_envelope(envelope)
    signed: dict[str, Any] = parsed["signed"]
    payload = signed_bytes(signed)
    authorised = set(keyids)
    valid: set[str] = set()
    for sig in parsed["signatures"]:
        keyid = sig["keyid"]
        key = keys.get(keyid)
        if keyid in valid or keyid not in authorised or key is None or key.keyid != keyid:
            continue
        if key.verify(bytes.fromhex(sig["sig"]), payload):
            valid.add(keyid)
        else:
            logger.debug("Ignoring an invalid signature by key %s for role %s", keyid, role)
    if len(valid) < threshold:
        raise UnsignedError(
            f"signed by {len(valid)} of the required {threshold} keys for role {role}"
        )
    return signed


def add_signature(envelope: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``envelope`` with a signature by ``key`` (replacing any by it).

    Raises:
        FormatError: ``envelope`` is not a well-formed envelope.
    """
    parsed = parse_envelope(envelope)
    sig = key.sign(signed_bytes(parsed["signed"])).hex()
    others = [s for s in parsed["signatures"] if s["keyid"] != key.keyid]
    return {"signed": parsed["signed"], "signatures": [*others, {"keyid": key.keyid, "sig": sig}]}
