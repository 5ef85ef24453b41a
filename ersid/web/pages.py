"""
The key browser's files, served at C{/_ui/}: a page, its script and its
style, read from the package once, served with a Content-Security-Policy
that lets the page run only its own script and talk only to this API.
Nothing else under C{/_ui/} exists: names are looked up, never joined to
a path.
"""

from __future__ import annotations

from importlib import resources

from twisted.web.iweb import IRequest

from ersid.web.errors import ApiError

__all__ = ["UI_PATH", "ui_file"]

UI_PATH = b"/_ui/"

# The page runs its own module and nothing else: no inline script or
# style, no other origin, no plugins, no framing, no forms posted away.
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; "
    b"connect-src 'self'; img-src 'self'; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "ui.js": b"text/javascript; charset=utf-8",
    "ui.css": b"text/css; charset=utf-8",
}
_FILES = {
    name: resources.files("ersid.web").joinpath("ui", name).read_bytes()
    for name in _TYPES
}


def ui_file(request: IRequest, name: str) -> bytes:
    """
    The file C{name} of the browser (C{""} for the page), its headers set.

    @raise ApiError: 404 for any other name.
    """
    name = name or "index.html"
    body = _FILES.get(name)
    if body is None:
        raise ApiError(404, "not_found", f"the key browser has no file {name!r}")
    request.setHeader(b"Content-Type", _TYPES[name])
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.setHeader(b"Content-Security-Policy", _POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-cache")
    return body
