"""
The errors a L{Client} raises: one type for each thing a caller may want
to handle, all L{ClientError}s.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

__all__ = [
    "UNREACHABLE",
    "ClientError",
    "ConditionFailed",
    "HistoryGone",
    "KeyNotFound",
    "LockLost",
    "LockTimeout",
    "NotAllowed",
    "RequestRejected",
    "ServerUnavailable",
    "ValueTooLarge",
    "refusal",
    "why",
]

# What treq raises when the server cannot be reached, or hangs up midway.
UNREACHABLE = (
    ConnectError,
    DNSLookupError,
    ConnectionClosed,
    ResponseFailed,
    RequestTransmissionFailed,
)


class ClientError(Exception):
    """Ersid did not do what was asked; the message says why."""


class KeyNotFound(ClientError):
    """There is no such key."""


class ConditionFailed(ClientError):
    """The key's current ETag did not match the condition of the request."""


class NotAllowed(ClientError):
    """
    The server needs a token and had none, or a wrong one (401), or one
    without the permission (403).
    """


class ValueTooLarge(ClientError):
    """The value is over the server's size limit."""


class RequestRejected(ClientError):
    """The server refused the request as malformed (a bad key, say)."""


class ServerUnavailable(ClientError):
    """The server could not be reached, or its storage is unavailable."""


class HistoryGone(ClientError):
    """
    The server no longer keeps the changes after the revision a watch
    asked for: list the keys again, then watch from the listing's revision.

    @ivar oldest: the oldest revision a watch may start from now.
    @ivar revision: the store's revision.
    """

    def __init__(self, message: str, oldest: int | None, revision: int | None) -> None:
        super().__init__(message)
        self.oldest = oldest
        self.revision = revision


class LockTimeout(ClientError):
    """The lock was still held by another when the time to wait for it ran out."""


class LockLost(ClientError):
    """
    A lock held was lost: its key expired before it could be refreshed (the
    server unreachable for its whole time to live), or someone removed it.
    """


# The error each status means, when it is not the one a request expects.
_STATUS_ERRORS = {
    401: NotAllowed,
    403: NotAllowed,
    404: KeyNotFound,
    412: ConditionFailed,
    413: ValueTooLarge,
    503: ServerUnavailable,
}


def refusal(status: int, body: bytes) -> ClientError:
    """The error of a response of C{status}, with the message of its JSON C{body}."""
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {status}"
    error = _STATUS_ERRORS.get(status)
    if error is None:
        error = ServerUnavailable if status >= 500 else RequestRejected
    return error(message)


def why(error: Exception) -> str:
    """What an L{UNREACHABLE} error says, in words."""
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        return "; ".join(reason.getErrorMessage() for reason in error.reasons)
    return str(error)
