"""The one error hierarchy of Skiff.

Every error raised on purpose derives from :class:`SkiffError`. Each class
carries a machine-readable ``code`` and the HTTP ``status`` that central's
error middleware renders as ``{"error": {"code", "message"}}``. Callers branch
on the class: a :class:`DownloadError` is retried later, a
:class:`RepositoryError` is never retried as-is.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "BadSignatureError",
    "ConflictError",
    "DecryptionError",
    "DigestMismatchError",
    "DownloadError",
    "DownloadHTTPError",
    "EqualVersionError",
    "ExpiredError",
    "ForbiddenError",
    "FormatError",
    "InvalidInputError",
    "LengthError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PolicyViolationError",
    "RangeNotSatisfiableError",
    "RepositoryError",
    "RollbackError",
    "SkiffError",
    "TooManyRequestsError",
    "UnauthenticatedError",
    "UnsignedError",
    "UnsupportedMediaTypeError",
]


class SkiffError(Exception):
    """Base of every error we raise on purpose."""

    code: str = "error"
    status: int = 500
    # Extra HTTP response headers, set by a handler on an instance (e.g. Content-Range on 416).
    headers: Mapping[str, str] = MappingProxyType({})
    # Extra members of the rendered error object (e.g. the fields a policy found missing).
    details: Mapping[str, object] = MappingProxyType({})


# Verification failures: untrusted input that must not be accepted.


class RepositoryError(SkiffError):
    """Untrusted input failed verification. Never retried as-is."""

    code = "verification_failed"
    status = 400


class FormatError(RepositoryError):
    """A document or byte stream is malformed."""


class UnsignedError(RepositoryError):
    """Fewer valid signatures than the role's threshold."""


class BadSignatureError(RepositoryError):
    """A signature is present but does not verify."""


class RollbackError(RepositoryError):
    """A version or serial is lower than the trusted one."""


class EqualVersionError(RepositoryError):
    """A version or serial equals the trusted one: nothing new."""


class ExpiredError(RepositoryError):
    """A signed document has expired."""


class DigestMismatchError(RepositoryError):
    """Bytes do not hash to the signed digest."""


class LengthError(RepositoryError):
    """More or fewer bytes than the signed size allows."""


class DecryptionError(RepositoryError):
    """Encrypted bytes at rest failed authentication: tampered, truncated, moved or wrong key.

    Raised while reading our own storage, so the API renders it as a server fault.
    """

    code = "integrity_failed"
    status = 500


# Transport failures: safe to retry later.


class DownloadError(SkiffError):
    """Transport failed; safe to retry later."""

    code = "download_failed"
    status = 502


class DownloadHTTPError(DownloadError):
    """The server answered with an unexpected HTTP status.

    Attributes:
        status_code: The HTTP status the server answered with.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


# Domain errors rendered by the API.


class InvalidInputError(SkiffError):
    """A request or argument is invalid."""

    code = "invalid"
    status = 400


class UnauthenticatedError(SkiffError):
    """No valid credentials were presented."""

    code = "unauthenticated"
    status = 401


class ForbiddenError(SkiffError):
    """The caller may not perform this action."""

    code = "forbidden"
    status = 403


class NotFoundError(SkiffError):
    """The named object does not exist."""

    code = "not_found"
    status = 404


class ConflictError(SkiffError):
    """The action conflicts with the current state."""

    code = "conflict"
    status = 409


class PolicyViolationError(ConflictError):
    """A transition breaks the compliance policy; ``details["missing"]`` lists why."""

    code = "policy_violation"

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.details = MappingProxyType({"missing": list(missing)})


class PayloadTooLargeError(SkiffError):
    """A request body exceeds its limit."""

    code = "too_large"
    status = 413


class TooManyRequestsError(SkiffError):
    """The client must wait (``Retry-After``) before trying again."""

    code = "too_many_requests"
    status = 429


class UnsupportedMediaTypeError(SkiffError):
    """A request body is declared with a media type the route does not take."""

    code = "unsupported_media_type"
    status = 415


class RangeNotSatisfiableError(SkiffError):
    """A requested byte range lies outside the resource."""

    code = "range_not_satisfiable"
    status = 416
