"""
The errors a L{Client} raises: one type for each thing a caller may want
to handle, all L{ClientError}s.
"""

from __future__ import annotations

__all__ = [
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
]


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
