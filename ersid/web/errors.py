"""
Errors as the API answers them: every one a JSON object
C{{"error": code, "message": text}} with its 4xx or 5xx status.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from ersid.auth.grants import NotAuthenticated, NotPermitted

__all__ = [
    "NO_BODY_CODES",
    "ApiError",
    "access_refused",
    "empty",
    "json_body",
    "json_bytes",
]

NO_BODY_CODES = (204, 304)


class ApiError(Exception):
    """An error the client caused or must be told about, rendered as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[bytes, bytes] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}

    @classmethod
    def value_too_large(cls, limit: int) -> ApiError:
        return cls(413, "value_too_large", f"values are at most {limit} bytes")

    @property
    def document(self) -> dict[str, Any]:
        """The JSON object that tells the client."""
        return {"error": self.code, "message": self.message, **self.details}

    def body(self) -> bytes:
        """The response body that tells the client."""
        return json_bytes(self.document)

    def render(self, request: IRequest) -> bytes:
        """Set C{request}'s status and headers for this error; the body."""
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return json_body(request, self.status, self.document)


def access_refused(
    error: NotAuthenticated | NotPermitted, code: str = "unauthorized"
) -> ApiError:
    """
    The 401 of a request without a token the server knows (C{code}, with
    the challenge RFC 6750 asks for); the 403 of one whose token may not.
    """
    if isinstance(error, NotPermitted):
        return ApiError(403, "forbidden", str(error))
    challenge = b'Bearer realm="ersid"'
    if error.error is not None:
        challenge += b', error="%s"' % (error.error.encode("ascii"),)
    return ApiError(401, code, str(error), {b"WWW-Authenticate": challenge})


def json_bytes(document: dict[str, Any]) -> bytes:
    """A JSON response body: one line of UTF-8."""
    return json.dumps(document).encode("utf-8") + b"\n"


def json_body(request: IRequest, status: int, document: dict[str, Any]) -> bytes:
    """
    Set C{request}'s status and headers for a JSON C{document}; the body.
    Such documents (errors, listings, health) tell of a store that changes:
    no cache may keep them.
    """
    body = json_bytes(document)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def empty(request: IRequest, status: int) -> bytes:
    """Set C{request}'s status for a response without a body; the body."""
    request.setResponseCode(status)
    if status not in NO_BODY_CODES:
        request.setHeader(b"Content-Length", b"0")
    return b""
