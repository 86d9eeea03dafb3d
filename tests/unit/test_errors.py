"""Tests for shared.errors: codes, statuses and the hierarchy callers branch on."""

import pytest

from shared import errors as e


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (e.SkiffError, "error", 500),
        (e.RepositoryError, "verification_failed", 400),
        (e.InvalidInputError, "invalid", 400),
        (e.UnauthenticatedError, "unauthenticated", 401),
        (e.ForbiddenError, "forbidden", 403),
        (e.NotFoundError, "not_found", 404),
        (e.ConflictError, "conflict", 409),
        (e.PayloadTooLargeError, "too_large", 413),
        (e.RangeNotSatisfiableError, "range_not_satisfiable", 416),
    ],
)
def test_code_and_status(cls: type[e.SkiffError], code: str, status: int) -> None:
    assert cls.code == code
    assert cls.status == status
    assert issubclass(cls, e.SkiffError)


@pytest.mark.parametrize(
    "cls",
    [
        e.FormatError,
        e.UnsignedError,
        e.BadSignatureError,
        e.RollbackError,
        e.EqualVersionError,
        e.ExpiredError,
        e.DigestMismatchError,
        e.LengthError,
    ],
)
def test_verification_failures_are_repository_errors(cls: type[e.SkiffError]) -> None:
    assert issubclass(cls, e.RepositoryError)
    assert not issubclass(cls, e.DownloadError)
    assert cls.code == "verification_failed"
    assert cls.status == 400


def test_download_http_error_carries_status_code() -> None:
    err = e.DownloadHTTPError("GET /blob failed: 503", 503)
    assert isinstance(err, e.DownloadError)
    assert not isinstance(err, e.RepositoryError)
    assert err.status_code == 503
    assert str(err) == "GET /blob failed: 503"
