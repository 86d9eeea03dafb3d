"""What the request being served is, for code that has no request object in hand.

The API's outermost middleware binds the request id here; the audit log reads it, so
every row a request writes names that request without threading it through each call.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_REQUEST_ID: ContextVar[str | None] = ContextVar("skiff_request_id", default=None)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make ``request_id`` current in this task (and the tasks it starts)."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return _REQUEST_ID.get()
